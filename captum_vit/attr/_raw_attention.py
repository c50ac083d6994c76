"""Raw attention: one block's attention from the token(s) the head reads."""

from __future__ import annotations

from typing import Tuple, Union

import torch
import torch.nn as nn
from captum.attr import Attribution
from captum.log import log_usage
from torch import Tensor

from ..vit import RECORDED_ATTENTION, ViTAdapter, record_attention, tokens_to_pixels
from ..vit.adapter import resolve_layer_indices
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


class RawAttention(Attribution):
    r"""The attention of the last (or a chosen) block from the readout token(s).

    The baseline "attention last" of the ViT Shapley paper (Covert et al. 2023,
    appendix F) and the raw attention of Abnar & Zuidema (2020): block ``layer``'s
    post-softmax attention, heads fused (``"mean"``; the ViT Shapley paper sums the
    heads, which ranks patches identically), read along the row(s) the head reads:
    the CLS row, the mean of the CLS and distillation rows for distilled DeiT, the
    mean of the pooled rows for average-pooled models (see
    :meth:`captum_vit.vit.ViTAdapter.readout_weights`). Attention-pooled heads (timm
    ``global_pool="map"``, SigLIP) read the final tokens through the pool's own
    attention, so the readout row is the pool's attention (heads fused by the same
    rule, each latent query's row renormalised, the rows averaged), as in
    :class:`~captum_vit.AttentionRollout`. Class-agnostic: ``target`` is
    validated and then ignored. One forward pass without gradients (so it also runs
    inside ``torch.inference_mode()``), the attention module temporarily on the
    explicit (unfused) path and the model in eval mode (and eager, if compiled), all
    restored afterwards.

    Args:
        model: A supported ViT whose family records attention (see
            :class:`captum_vit.vit.ViTAdapter`); headless models work too.
        layer: Block index (negative counts from the end); default the last block.
        head_fusion: ``"mean"`` (default), ``"max"`` or ``"min"`` over heads.

    Raises:
        TypeError: an unsupported model or a family without recorded attention
            (Swin).

    Examples::

        >>> attr = RawAttention(model).attribute(images)   # (B, C, H, W)
    """

    def __init__(
        self, model: nn.Module, layer: int = -1, head_fusion: str = "mean"
    ) -> None:
        self.adapter = ViTAdapter(model)
        self.adapter.require(RECORDED_ATTENTION, type(self).__name__)
        super().__init__(self.adapter.model)
        self.layer = resolve_layer_indices(self.adapter, [layer], "layer")[0]
        self.head_fusion = check_choice("head_fusion", head_fusion, _FUSIONS)

    @log_usage()
    @evaluates_model
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor]],
        target: TargetType = None,
        interpolate_mode: str = "nearest",
    ) -> Union[Tensor, Tuple[Tensor]]:
        r"""Attention of every patch from the readout token(s), over its pixels.

        Args:
            inputs: (B, C, H, W) images (or a 1-tuple of them).
            target: Ignored (attention does not depend on the class); accepted so
                the call fits any Captum loop, and validated like every other
                method's (an out-of-range class is an error).
            interpolate_mode: ``"nearest"`` keeps maps patch-constant (exact for
                :func:`captum_vit.patch_scores`); ``"bilinear"`` for display.

        Returns:
            Attributions of the inputs' shape (and tuple-ness), non-negative.

        Examples::

            >>> attr = RawAttention(model, layer=-1).attribute(images)
        """
        images, was_tuple = unpack_inputs(inputs)
        grid = self.adapter.check_images(images)
        if target is not None:
            format_target(target, images.shape[0], self.adapter.num_classes)
        with torch.no_grad(), record_attention(
            self.adapter, layers=[self.layer]
        ) as rec:
            self.adapter.logits(images)
        a = fuse_heads(rec.attentions[self.layer], self.head_fusion)  # (B, T, T)
        p = self.adapter.num_prefix_tokens
        w = head_readout(
            self.adapter, rec, a, lambda pool: fused_pool_rows(pool, self.head_fusion)
        )
        scores = torch.einsum("bt,bts->bs", w.to(a), a)[:, p:]
        return pack_output(
            tokens_to_pixels(scores, grid, images, interpolate_mode), was_tuple
        )
