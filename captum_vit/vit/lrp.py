"""Layer-wise relevance propagation through timm ViT blocks (Chefer, Gur & Wolf, CVPR
2021, "Transformer interpretability beyond attention visualization").

The model is never copied or modified: :func:`lrp_trace` records, with forward hooks
that are removed on exit, the tensors each propagation rule needs (block inputs, the
operands of both residual sums, the inputs of every linear layer, queries, keys and
values); :func:`propagate` then walks the blocks from the output down with the rules
of the paper:

- linear layers (``qkv``, ``proj``, ``fc1``, ``fc2``, the classifier head): the
  LRP-αβ rule with α = 1, β = 0, i.e. only positive contributions
  ``z⁺_ij = (x_j w_ij)⁺`` count, ``R_j = Σ_i z⁺_ij / Σ_j z⁺_ij · R_i`` (biases take
  no relevance);
- non-parametric element-wise layers (LayerNorm, GELU, softmax, dropout, drop-path,
  layer scale, the query scaling): relevance passes unchanged;
- products of two tensors (``A·V`` and ``Q·Kᵀ``): the input × gradient rule
  ``R_x = x ⊙ ∂Z/∂x · (R / Z)`` for both operands, each halved;
- residual sums ``Z = u + v``: the same rule, ``R_u = u ⊙ R / Z``, followed by the
  paper's normalisation ``R̄_u = R_u · |ΣR_u| / (|ΣR_u| + |ΣR_v|) · ΣR / ΣR_u``
  (sums per sample) so that the relevance entering a block is conserved;
- a token that a residual stream feeds twice (clone): the relevances add up.

Every division is guarded: where a denominator is exactly 0 the quotient is 0 (no
relevance flows through a zero activation), so no NaN is produced.

Relevance starts as the one-hot vector of the target class at the logits, goes
through the head and the pooling (CLS token, the mean of pooled tokens, or for
distilled DeiT the average of the two heads as a residual-style sum) and then through
the blocks. The relevance of every block's attention probabilities (the ``A`` operand
of ``A·V``) is returned.

Supported: timm ``VisionTransformer`` / ``VisionTransformerDistilled`` with standard
pre-norm ``Block`` s (``Attention`` without a gate, ``Mlp`` with linear ``fc1``/``fc2``)
and ``token`` or ``avg`` pooling; the model's adapter declares this as the
:data:`~captum_vit.vit.adapter.LRP_RULES` capability. Other families (Eva, BEiT,
torchvision, Hugging Face, Swin), other blocks (parallel or post-norm blocks, gated
attention, GLU MLPs) and ``max``/``avgmax``/``map`` pooling raise the standard
capability error (a ``TypeError`` naming the method, the family and the capability).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch import Tensor

from .adapter import CLASS_HEAD, LRP_RULES, ViTAdapter

#: Modules of one block whose input (``in``) or output (``out``) is recorded.
_BLOCK_TAPS: Tuple[Tuple[str, str], ...] = (
    ("", "in"),
    ("norm2", "in"),
    ("drop_path1", "out"),
    ("drop_path2", "out"),
    ("mlp.fc1", "in"),
    ("mlp.fc2", "in"),
    ("attn.qkv", "in"),
    ("attn.qkv", "out"),
    ("attn.q_norm", "out"),
    ("attn.k_norm", "out"),
    ("attn.proj", "in"),
)


@dataclass
class LRPTrace:
    """Tensors recorded by :func:`lrp_trace` during one forward pass (detached).

    Attributes:
        blocks: per block, ``{"<module path>:<in|out>": tensor}``.
        top: ``"norm:out"`` (tokens entering the pooling), ``"head:in"``,
            ``"head:out"`` and, for distilled models, ``"head_dist:in"`` and
            ``"head_dist:out"``.
    """

    blocks: List[Dict[str, Tensor]]
    top: Dict[str, Tensor] = field(default_factory=dict)


def _get(module: nn.Module, path: str) -> nn.Module:
    """``module.get_submodule(path)`` without its checks (the paths are fixed)."""
    for name in path.split(".") if path else ():
        module = module._modules[name]
    return module


@contextmanager
def lrp_trace(
    model: Union[nn.Module, ViTAdapter],
    method: str = "LRP",
    layers: Optional[Sequence[int]] = None,
) -> Iterator[LRPTrace]:
    """Record what :func:`propagate` needs during the forward passes inside.

    Hooks are removed on exit, also when the body raises; the model is not changed.
    The last forward pass inside the ``with`` block is the one recorded.

    Args:
        model: A supported ViT or its adapter.
        method: Method name for the capability error.
        layers: Blocks to record (default: all); the others' entries stay empty,
            so :func:`propagate` can then only stop at or above the lowest one.

    Yields:
        An :class:`LRPTrace`, filled by the forward pass.

    Raises:
        TypeError: the capability error when the model's family has no LRP rules
            here (:data:`~captum_vit.vit.adapter.LRP_RULES`) or the model has no
            classifier head.

    Examples::

        >>> with record_attention(model) as rec, lrp_trace(model) as trace:
        ...     logits = model(images)
        >>> rel = propagate(model, trace, rec.attentions, target)
    """
    adapter = ViTAdapter.of(model)
    adapter.require(LRP_RULES, method)
    adapter.require(CLASS_HEAD, method)
    trace = LRPTrace(blocks=[{} for _ in range(adapter.num_layers)])
    handles = []

    def tap(store: Dict[str, Tensor], key: str, side: str):
        if side == "in":

            def pre(module, args):
                store[key] = args[0].detach()

            return pre
        else:

            def post(module, args, out):
                store[key] = out.detach()

            return post

    chosen = set(range(adapter.num_layers) if layers is None else layers)
    try:
        for i, blk in enumerate(adapter.blocks):
            if i not in chosen:
                continue
            for path, side in _BLOCK_TAPS:
                key = f"{path}:{side}"
                mod = _get(blk, path)
                fn = tap(trace.blocks[i], key, side)
                if side == "in":
                    handles.append(mod.register_forward_pre_hook(fn))
                else:
                    handles.append(mod.register_forward_hook(fn))
        m = adapter.model
        handles.append(m.norm.register_forward_hook(tap(trace.top, "norm:out", "out")))
        heads = ["head"]
        if getattr(m, "dist_token", None) is not None:
            heads.append("head_dist")
        for name in heads:
            mod = getattr(m, name)
            handles.append(
                mod.register_forward_pre_hook(tap(trace.top, name + ":in", "in"))
            )
            handles.append(
                mod.register_forward_hook(tap(trace.top, name + ":out", "out"))
            )
        yield trace
    finally:
        for h in handles:
            h.remove()


# --------------------------------------------------------------------- rules
def safe_div(a: Tensor, b: Tensor) -> Tensor:
    """``a / b`` where ``b != 0``, else 0."""
    nz = b != 0
    return torch.where(nz, a / torch.where(nz, b, torch.ones_like(b)), 0.0)


def linear_rule(x: Tensor, weight: Tensor, relevance: Tensor) -> Tensor:
    """LRP-αβ (α = 1, β = 0) through ``y = x Wᵀ + b``: relevance of ``x``.

    Args:
        x: (..., in) layer input.
        weight: (out, in) weight.
        relevance: (..., out) relevance of the output.

    Returns:
        (..., in) relevance of the input.
    """
    w = weight.to(x.dtype)
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    xp, xn = x.clamp(min=0), x.clamp(max=0)
    z = xp @ wp.T + xn @ wn.T  # Σ_j (x_j w_ij)⁺ >= 0
    s = safe_div(relevance, z)
    return xp * (s @ wp) + xn * (s @ wn)


def _per_sample_sum(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1).sum(dim=1).reshape((-1,) + (1,) * (t.dim() - 1))


def add_rule(u: Tensor, v: Tensor, relevance: Tensor) -> Tuple[Tensor, Tensor]:
    """Relevance of both operands of ``z = u + v``, normalised per sample.

    ``R_u = u ⊙ R / z`` (likewise ``R_v``), then rescaled so that the two shares
    keep the ratio ``|ΣR_u| : |ΣR_v|`` and add up to ``ΣR`` (Chefer et al., eq. 10).
    """
    s = safe_div(relevance, u + v)
    ru, rv = u * s, v * s
    su, sv, total = _per_sample_sum(ru), _per_sample_sum(rv), _per_sample_sum(relevance)
    mag = su.abs() + sv.abs()
    ru = ru * safe_div(safe_div(su.abs(), mag) * total, su)
    rv = rv * safe_div(safe_div(sv.abs(), mag) * total, sv)
    return ru, rv


def matmul_rule(a: Tensor, b: Tensor, relevance: Tensor) -> Tuple[Tensor, Tensor]:
    """Input × gradient rule for ``Z = a @ b`` (batched), each share halved.

    Args:
        a: (..., n, k) left operand.
        b: (..., k, m) right operand.
        relevance: (..., n, m) relevance of ``Z``.

    Returns:
        ``(R_a, R_b)`` of the operands' shapes.
    """
    s = safe_div(relevance, a @ b)
    ra = a * (s @ b.transpose(-2, -1))
    rb = b * (a.transpose(-2, -1) @ s)
    return ra / 2, rb / 2


# --------------------------------------------------------------- propagation
def _readout(adapter: ViTAdapter, trace: LRPTrace, target: Tensor) -> Tensor:
    """Relevance of the tokens after the last block (B, T, D), from the logits."""
    top = trace.top
    m = adapter.model
    tokens = top["norm:out"]
    b, t, _ = tokens.shape
    logits = top["head:out"]
    onehot = torch.zeros_like(logits)
    onehot.scatter_(1, target.to(logits.device)[:, None], 1.0)
    out = torch.zeros_like(tokens)
    if getattr(m, "dist_token", None) is not None:
        # eval output (head(x_cls) + head_dist(x_dist)) / 2: a sum of two terms
        r_cls, r_dist = add_rule(logits / 2, top["head_dist:out"] / 2, onehot)
        out[:, 0] = linear_rule(top["head:in"], m.head.weight, r_cls)
        out[:, 1] = linear_rule(top["head_dist:in"], m.head_dist.weight, r_dist)
        return out
    pooled_r = linear_rule(top["head:in"], m.head.weight, onehot)  # fc_norm: identity
    w = adapter.readout_weights(t - adapter.num_prefix_tokens).to(tokens)
    # pooled_j = Σ_t w_t x_tj: input × gradient rule for the pooling
    contrib = w[None, :, None] * tokens
    return contrib * safe_div(pooled_r, contrib.sum(dim=1))[:, None, :]


def _block(
    blk: nn.Module, rec: Dict[str, Tensor], attention: Tensor, relevance: Tensor
) -> Tuple[Tensor, Tensor]:
    """Relevance of the block input and of its attention probabilities."""
    attn = blk.attn
    x_mid, mlp_out = rec["norm2:in"], rec["drop_path2:out"]
    r_mid, r_mlp = add_rule(x_mid, mlp_out, relevance)
    r_hidden = linear_rule(rec["mlp.fc2:in"], blk.mlp.fc2.weight, r_mlp)
    r_mid = r_mid + linear_rule(rec["mlp.fc1:in"], blk.mlp.fc1.weight, r_hidden)

    x_in, attn_out = rec[":in"], rec["drop_path1:out"]
    r_in, r_attn = add_rule(x_in, attn_out, r_mid)
    r_o = linear_rule(rec["attn.proj:in"], attn.proj.weight, r_attn)  # (B, T, h·d)
    b, t, _ = r_o.shape
    heads = attention.shape[1]
    r_o = r_o.reshape(b, t, heads, -1).transpose(1, 2)  # (B, h, T, d)
    qkv = rec["attn.qkv:out"].reshape(b, t, 3, heads, -1).permute(2, 0, 3, 1, 4)
    v = qkv[2]
    r_a, r_v = matmul_rule(attention, v, r_o)
    q, k = rec["attn.q_norm:out"], rec["attn.k_norm:out"]
    r_q, r_kt = matmul_rule(q, k.transpose(-2, -1), r_a)  # softmax: identity
    r_k = r_kt.transpose(-2, -1)
    r_qkv = torch.stack([r_q, r_k, r_v], dim=0).permute(1, 3, 0, 2, 4)
    r_qkv = r_qkv.reshape(b, t, -1)
    r_in = r_in + linear_rule(rec["attn.qkv:in"], attn.qkv.weight, r_qkv)
    return r_in, r_a


def propagate(
    model: Union[nn.Module, ViTAdapter],
    trace: LRPTrace,
    attentions: List[Tensor],
    target: Tensor,
    stop: Optional[int] = None,
) -> List[Optional[Tensor]]:
    """Relevance of every block's attention probabilities, from the target logit.

    Args:
        model: The traced model or its adapter.
        trace: What :func:`lrp_trace` recorded in the forward pass.
        attentions: Per block, the (B, heads, T, T) attention probabilities of the
            same pass (e.g. ``record_attention``'s ``attentions``).
        target: (B,) class index per sample.
        stop: Lowest block whose attention relevance is needed (default 0); the
            walk ends there.

    Returns:
        Per block, the (B, heads, T, T) relevance of its attention probabilities
        (None below ``stop``).
    """
    adapter = ViTAdapter.of(model)
    stop = 0 if stop is None else stop
    with torch.no_grad():
        relevance = _readout(adapter, trace, target)  # final norm: identity
        out: List[Optional[Tensor]] = [None] * adapter.num_layers
        for i in reversed(range(stop, adapter.num_layers)):
            a = attentions[i].detach().to(relevance.dtype)
            relevance, out[i] = _block(adapter.blocks[i], trace.blocks[i], a, relevance)
    return out
