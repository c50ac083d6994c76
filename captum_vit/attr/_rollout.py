"""Attention rollout (Abnar & Zuidema, ACL 2020)."""

from __future__ import annotations

from typing import List, Optional, Tuple, Union

import torch
import torch.nn as nn
from captum.attr import Attribution
from captum.log import log_usage
from torch import Tensor

from ..vit import RECORDED_ATTENTION, ViTAdapter, record_attention, tokens_to_pixels
from ._utils import (
    TargetType,
    check_choice,
    check_int,
    check_number,
    evaluates_model,
    format_target,
    head_readout,
    pack_output,
    unpack_inputs,
)

_FUSIONS = ["mean", "max", "min"]


def fuse_heads(attention: Tensor, head_fusion: str) -> Tensor:
    """(B, heads, T, T) -> (B, T, T) by mean, max or min over heads."""
    if head_fusion == "mean":
        return attention.mean(dim=1)
    if head_fusion == "max":
        return attention.amax(dim=1)
    return attention.amin(dim=1)


def fused_pool_rows(pool_attention: Tensor, head_fusion: str) -> Tensor:
    """(B, heads, Q, T') attention-pool probabilities → (B, Q, T') rows: heads fused
    by ``head_fusion``, each row renormalised to sum to 1 (guarded: an all-zero row
    stays zero)."""
    a = fuse_heads(pool_attention, head_fusion)
    return a / a.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)


def discard_lowest(fused: Tensor, ratio: float, num_prefix: int) -> Tensor:
    """Zero the smallest ``ratio`` fraction of patch-to-patch entries, per sample.

    Rows and columns of prefix tokens (CLS, registers) are never discarded.
    """
    if ratio <= 0:
        return fused
    b, t, _ = fused.shape
    n = t - num_prefix
    k = int(ratio * n * n)
    if k == 0:
        return fused
    fused = fused.clone()
    block = fused[:, num_prefix:, num_prefix:].reshape(b, n * n)
    idx = block.topk(k, dim=1, largest=False).indices
    block = block.scatter(1, idx, 0.0)
    fused[:, num_prefix:, num_prefix:] = block.reshape(b, n, n)
    return fused


class AttentionRollout(Attribution):
    r"""Attention rollout: propagate attention through the residual stream.

    For each block from ``start_layer`` on: fuse the heads, optionally discard the
    weakest patch-to-patch links, add the identity for the residual connection and
    renormalise each row, ``Â_l = norm_rows(fuse(A_l) + I)``; then
    ``R = Â_{L-1} ⋯ Â_{start}`` (later layers on the left). The relevance of patch j is
    the row of ``R`` read by the head: the CLS row for CLS models, the mean of the CLS
    and distillation rows for distilled DeiT, the mean of the patch rows for pooled
    (CLS-free) models. Attention-pooled heads (timm ``global_pool="map"``, SigLIP) read
    out through the pool's own attention: its heads are fused by the same rule, each
    latent query's row renormalised to sum to 1 and the rows averaged; no identity is
    added (the latent query is not a token of the sequence, so it has no residual path),
    and the readout is that row times ``R``.

    One forward pass for the whole batch, with the attention modules temporarily on the
    explicit (unfused) path and the model in eval mode (both restored afterwards);
    class-agnostic, so ``target`` is validated and then ignored.

    Args:
        model: A supported ViT whose family records attention (see
            :class:`captum_vit.vit.ViTAdapter`); headless models work too.
        head_fusion: ``"mean"`` (default), ``"max"`` or ``"min"`` over heads.
        discard_ratio: Fraction in [0, 1) of the smallest patch-to-patch attention
            entries set to zero in each layer, per sample (prefix rows and columns are
            kept).
        start_layer: First block included in the product (Chefer et al. use 1).

    Examples::

        >>> rollout = AttentionRollout(model, discard_ratio=0.9)
        >>> attr = rollout.attribute(images)      # (B, C, H, W), patch-constant
    """

    def __init__(
        self,
        model: nn.Module,
        head_fusion: str = "mean",
        discard_ratio: float = 0.0,
        start_layer: int = 0,
    ) -> None:
        self.adapter = ViTAdapter(model)
        self.adapter.require(RECORDED_ATTENTION, "AttentionRollout")
        super().__init__(self.adapter.model)
        self.head_fusion = check_choice("head_fusion", head_fusion, _FUSIONS)
        self.discard_ratio = check_number(
            "discard_ratio", discard_ratio, 0.0, 1.0, high_open=True
        )
        self.start_layer = check_int(
            "start_layer", start_layer, 0, self.adapter.num_layers - 1
        )

    def rollout(self, attentions: List[Tensor]) -> Tensor:
        """The rollout matrix ``R`` (B, T, T) from per-layer (B, heads, T, T) maps."""
        p = self.adapter.num_prefix_tokens
        r: Optional[Tensor] = None
        for att in attentions[self.start_layer :]:
            a = fuse_heads(att, self.head_fusion)
            a = discard_lowest(a, self.discard_ratio, p)
            a = a + torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
            a = a / a.sum(dim=-1, keepdim=True)
            r = a if r is None else a @ r
        assert r is not None
        return r

    def pool_rows(self, pool_attention: Tensor) -> Tensor:
        """(B, heads, Q, T') pool attention → (B, Q, T') rows: heads fused, each row
        renormalised to sum to 1 (guarded: an all-zero row stays zero)."""
        return fused_pool_rows(pool_attention, self.head_fusion)

    @log_usage()
    @evaluates_model
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor]],
        target: TargetType = None,
        interpolate_mode: str = "nearest",
    ) -> Union[Tensor, Tuple[Tensor]]:
        r"""Rollout relevance of every patch, spread over its pixels.

        Args:
            inputs: (B, C, H, W) images (or a 1-tuple of them).
            target: Ignored (rollout does not depend on the class); accepted so the
                call fits any Captum loop, and validated like every other method's
                (an out-of-range class is an error).
            interpolate_mode: ``"nearest"`` keeps maps patch-constant (exact for
                :func:`captum_vit.patch_scores`); ``"bilinear"`` for display.

        Returns:
            Attributions of the inputs' shape (and tuple-ness), non-negative.
        """
        images, was_tuple = unpack_inputs(inputs)
        grid = self.adapter.check_images(images)
        if target is not None:
            format_target(target, images.shape[0], self.adapter.num_classes)
        with torch.no_grad(), record_attention(self.adapter) as rec:
            self.adapter.logits(images)
        r = self.rollout(rec.attentions)
        p = self.adapter.num_prefix_tokens
        w = head_readout(self.adapter, rec, r, self.pool_rows)
        scores = torch.einsum("bt,bts->bs", w.to(r), r)[:, p:]
        return pack_output(
            tokens_to_pixels(scores, grid, images, interpolate_mode), was_tuple
        )
