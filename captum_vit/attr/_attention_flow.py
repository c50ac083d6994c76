"""Attention flow (Abnar & Zuidema, ACL 2020)."""

from __future__ import annotations

from typing import List, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
from captum.attr import Attribution
from captum.log import log_usage
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_flow
from torch import Tensor

from ..vit import RECORDED_ATTENTION, ViTAdapter, record_attention, tokens_to_pixels
from ._rollout import _FUSIONS, fuse_heads, fused_pool_rows
from ._utils import (
    TargetType,
    check_choice,
    evaluates_model,
    format_target,
    head_readout,
    pack_output,
    unpack_inputs,
)

#: Integer scale of the capacities: capacity c is sent to the max-flow solver as
#: ``round(c * FLOW_SCALE)``. Every edge's capacity is at most 1 and the flow value
#: at most the sink's in-capacity, 1 plus rounding, so every edge's flow and the
#: flow value fit in int32. (A token's summed out-capacity can exceed int32; the
#: tests check such hub tokens against networkx.)
FLOW_SCALE = 2**30


def flow_capacities(attentions: List[Tensor], head_fusion: str) -> Tensor:
    """The per-layer capacities (B, L, T, T) of the attention graph: heads fused,
    ``0.5 * A + 0.5 * I`` (the residual connection), rows renormalised to sum to 1.

    Args:
        attentions: Per-layer (B, heads, T, T) post-softmax attention.
        head_fusion: ``"mean"``, ``"max"`` or ``"min"`` over heads.

    Returns:
        (B, L, T, T) float64 capacities; entry ``[b, l, i, j]`` is the capacity of the
        edge from token j below block l to token i above it.
    """
    out = []
    for att in attentions:
        a = fuse_heads(att.detach().double(), head_fusion)
        eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        a = 0.5 * a + 0.5 * eye
        out.append(a / a.sum(dim=-1, keepdim=True))
    return torch.stack(out, dim=1)


def flow_rounding_bound(num_layers: int, num_tokens: int, num_read: int) -> float:
    """An upper bound on ``|computed flow - exact flow|`` of one token.

    Each capacity is rounded to the nearest multiple of ``1 / FLOW_SCALE``, so it
    moves by at most ``1 / (2 * FLOW_SCALE)``. A maximum flow equals the capacity of a
    minimum cut, and each cut's capacity moves by at most its number of edges times
    that, so the flow moves by at most (number of edges) / (2 * FLOW_SCALE).

    Args:
        num_layers: Blocks L.
        num_tokens: Sequence length T (prefix tokens included).
        num_read: Number of output tokens the head reads (sink edges).

    Returns:
        ``(L * T**2 + num_read) / (2 * FLOW_SCALE)``: about ``2e-4`` for ViT-B/16 at
        224 px (12 blocks, 197 tokens), ``3e-7`` for 2 blocks of 17 tokens. The
        actual error is far smaller (a minimum cut has few of the edges; networkx
        agrees to ``1e-8`` on the embedded default).
    """
    edges = num_layers * num_tokens**2 + num_read
    return edges / (2.0 * FLOW_SCALE)


def max_flows(
    capacities: np.ndarray, readout: np.ndarray, sources: np.ndarray
) -> np.ndarray:
    """Maximum flow from each source token to the head, in one attention graph.

    The graph has one node per token above each block, a super-source and a sink.
    Block 0's inputs are not nodes: they receive no flow, so the flow from input token
    j is the flow from the super-source whose edges are block 0's column j. Edges into
    last-layer tokens the head does not read are left out (dead ends). The graph is
    built once; each problem only rewrites the super-source's T capacities. The
    solver is scipy's C-backed Dinic on integer capacities (see
    :data:`FLOW_SCALE` and :func:`flow_rounding_bound`).

    Args:
        capacities: (L, T, T) float capacities, ``[l, i, j]`` = edge j → i of block l.
        readout: (T,) non-negative weights with which the head reads the last layer's
            tokens: the capacities of the edges into the sink.
        sources: Indices of the input tokens whose flow is wanted.

    Returns:
        (len(sources),) float64 flow values, in units of capacity.
    """
    n_layers, t, _ = capacities.shape
    scaled = np.rint(capacities * FLOW_SCALE).astype(np.int32)
    read = np.flatnonzero(np.rint(readout * FLOW_SCALE) > 0)
    sink = 1 + n_layers * t
    # nodes: 0 = super-source; 1 + (l - 1) * t + i = token i above block l - 1
    # (l = 1..L); sink last. Rows in node order, so the CSR is assembled directly.
    layer_cols = np.arange(t, dtype=np.int32)
    indices = [1 + layer_cols]  # super-source -> tokens above block 0
    data = [np.zeros(t, dtype=np.int32)]
    counts = [t]
    for layer in range(1, n_layers):
        # token j above block layer-1 -> token i above block layer: capacities[l, i, j]
        # (into the last layer only the tokens the head reads: the others are dead
        # ends, no flow reaches the sink through them)
        to = read if layer == n_layers - 1 else layer_cols
        indices.append(np.tile(1 + layer * t + to, t))
        data.append(np.ascontiguousarray(scaled[layer][to].T).reshape(-1))
        counts.extend([len(to)] * t)
    last = np.zeros(t, dtype=np.int64)
    last[read] = 1
    indices.append(np.full(len(read), sink, dtype=np.int32))
    data.append(np.rint(readout[read] * FLOW_SCALE).astype(np.int32))
    counts.extend(last.tolist())
    counts.append(0)  # the sink
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    graph = csr_matrix(
        (np.concatenate(data), np.concatenate(indices), indptr),
        shape=(sink + 1, sink + 1),
    )
    graph.sort_indices()
    first = scaled[0]
    flows = np.empty(len(sources), dtype=np.float64)
    for k, j in enumerate(sources):
        graph.data[:t] = first[:, j]
        if not graph.data[:t].any() or len(read) == 0:
            flows[k] = 0.0
            continue
        flows[k] = maximum_flow(graph, 0, sink).flow_value / FLOW_SCALE
    return flows


class AttentionFlow(Attribution):
    r"""Attention flow: the maximum flow from each patch to the head through the
    layered attention graph.

    The graph has one node per token per layer. Block l joins token j below it to
    token i above it with capacity ``Â_l[i, j]``, where ``Â_l = norm_rows(0.5 ·
    fuse(A_l) + 0.5 · I)``: heads fused (mean by default), the identity for the
    residual connection, rows renormalised (as in the authors' code,
    samiraabnar/attention_flow). The head reads the last layer's tokens exactly as
    :class:`AttentionRollout` does (the CLS row; the mean of the CLS and distillation
    rows for distilled DeiT; the mean of the patch rows for pooled models; the pool's
    own fused attention for attention-pooled heads): those weights are the capacities
    of the edges into one sink node. The relevance of patch j is the maximum flow from
    its input node to the sink, a value in [0, 1] up to rounding (the authors further
    divide each map by its sum over all input tokens, a per-image constant).

    Each sample is one graph, built once; its N patch problems share it and differ only
    in the source's edges. The problems run through
    :func:`scipy.sparse.csgraph.maximum_flow` (Dinic, in C) on the capacities scaled
    by :data:`FLOW_SCALE` ``= 2**30`` and rounded; each token's flow is then within
    :func:`flow_rounding_bound` ``= (L·T² + R) / 2**31`` of the exact real-valued
    maximum flow (L blocks, T tokens, R tokens read by the head; about ``2e-4`` for
    ViT-B/16 at 224 px). A problem costs about as much as the graph has edges: on
    one core, ViT-B/16 takes about 3, 25 and 220 ms per problem at 64, 196 and 576
    patches (so about 0.2, 5 and 130 s per image). The problems run one after another:
    scipy holds the GIL, so threads do not speed them up (see
    ``benchmarks/attention_flow_speed.py``).

    One forward pass for the whole batch, with the attention modules temporarily on the
    explicit path and the model in eval mode (both restored afterwards);
    class-agnostic, so ``target`` is validated and then ignored.

    Args:
        model: A supported ViT whose family records attention (see
            :class:`captum_vit.vit.ViTAdapter`); headless models work too.
        head_fusion: ``"mean"`` (default), ``"max"`` or ``"min"`` over heads.

    Examples::

        >>> flow = AttentionFlow(model)
        >>> attr = flow.attribute(images)      # (B, C, H, W), patch-constant
    """

    def __init__(self, model: nn.Module, head_fusion: str = "mean") -> None:
        self.adapter = ViTAdapter(model)
        self.adapter.require(RECORDED_ATTENTION, "AttentionFlow")
        super().__init__(self.adapter.model)
        self.head_fusion = check_choice("head_fusion", head_fusion, _FUSIONS)

    def pool_rows(self, pool_attention: Tensor) -> Tensor:
        """(B, heads, Q, T') pool attention → (B, Q, T') rows, fused and renormalised
        exactly as :meth:`AttentionRollout.pool_rows` does."""
        return fused_pool_rows(pool_attention, self.head_fusion)

    @log_usage()
    @evaluates_model
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor]],
        target: TargetType = None,
        interpolate_mode: str = "nearest",
    ) -> Union[Tensor, Tuple[Tensor]]:
        r"""Maximum attention flow from every patch to the head, spread over its
        pixels.

        Args:
            inputs: (B, C, H, W) images (or a 1-tuple of them).
            target: Ignored (attention flow does not depend on the class); accepted
                so the call fits any Captum loop, and validated like every other
                method's (an out-of-range class is an error).
            interpolate_mode: ``"nearest"`` keeps maps patch-constant (exact for
                :func:`captum_vit.patch_scores`); ``"bilinear"`` for display.

        Returns:
            Attributions of the inputs' shape (and tuple-ness), in [0, 1].
        """
        images, was_tuple = unpack_inputs(inputs)
        grid = self.adapter.check_images(images)
        if target is not None:
            format_target(target, images.shape[0], self.adapter.num_classes)
        with torch.no_grad(), record_attention(self.adapter) as rec:
            self.adapter.logits(images)
        atts = rec.attentions
        b, t = images.shape[0], atts[0].shape[-1]
        p = self.adapter.num_prefix_tokens
        w = head_readout(self.adapter, rec, atts[0][:, 0], self.pool_rows)
        w_np = w.detach().double().cpu().numpy()
        sources = np.arange(p, t)
        scores = np.full((b, t - p), np.nan)
        for i in range(b):  # one graph per sample, float64 capacities per sample only
            caps = flow_capacities([a[i : i + 1] for a in atts], self.head_fusion)
            caps_np = caps[0].cpu().numpy()
            if np.isfinite(caps_np).all() and np.isfinite(w_np[i]).all():
                scores[i] = max_flows(caps_np, w_np[i], sources)
        dtype = rec.attentions[0].dtype
        out = torch.as_tensor(scores, device=images.device).to(dtype)
        return pack_output(
            tokens_to_pixels(out, grid, images, interpolate_mode), was_tuple
        )
