"""Partial LRP (Voita et al., ACL 2019; the baseline of Chefer, Gur & Wolf, CVPR
2021): the LRP relevance of the last block's attention map."""

from __future__ import annotations

from typing import Tuple, Union

import torch
import torch.nn as nn
from captum.attr import Attribution
from captum.log import log_usage
from torch import Tensor

from ..vit import (
    CLASS_HEAD,
    LRP_RULES,
    ViTAdapter,
    record_attention,
    tokens_to_pixels,
)
from ..vit.lrp import lrp_trace, propagate
from ._utils import (
    TargetType,
    check_choice,
    evaluates_model,
    format_target,
    pack_output,
    unpack_inputs,
)


class PartialLRP(Attribution):
    r"""Partial LRP: LRP relevance of the last block's attention, heads averaged,
    read at the head's row.

    Voita et al. (2019) score attention heads by the LRP relevance that reaches
    them, instead of propagating relevance to the input; Chefer et al. (2021) turn
    this into a map (their "partial LRP" baseline): relevance starts as the one-hot
    vector of the target class at the logits and is propagated down through the head
    and the **last block only**, with the rules of :mod:`captum_vit.vit.lrp` (the
    ones of Transformer Attribution: LRP-αβ with α = 1, β = 0 for linear layers,
    identity for element-wise layers, input × gradient halved for ``A·V``, the
    normalised rule for residual sums), giving the relevance ``R`` (B, heads, T, T)
    of the last block's attention probabilities ``A``. Then

    ``M = E_h[R⁺]``  (``positive=True``, the default, as Chefer et al.'s code
    clamps each head before the mean),

    and the relevance of patch j is the row of ``M`` the head reads (the CLS row;
    for distilled DeiT the mean of the CLS and distillation rows; the mean of the
    pooled rows for average-pooled models), at column j.

    One forward pass without gradients (so it also runs inside
    ``torch.inference_mode()``) records what the rules need with hooks; no backward
    pass. The model is neither copied nor modified; it runs in eval mode (and
    eagerly, if compiled) for the call, its modes restored afterwards.

    Chefer et al.'s repository has two LRP models: ``ViT_LRP.py`` (the rules of
    their paper, which this follows) and ``ViT_orig_LRP.py``, which their
    evaluation script runs for this baseline: its residual sums are not
    renormalised and its linear rule normalises the ``x⁺w⁺`` and ``x⁻w⁻`` parts
    separately (each gets the full relevance), so its maps can differ. Measured
    (``benchmarks/chefer_baselines_compare.py``): r = 1.0 with ``ViT_LRP.py``'s
    ``generate_LRP(method="last_layer")`` on every image; with ``ViT_orig_LRP.py``'s,
    r ≥ 0.97 on the embedded default and ViT-B, down to −0.59 on small
    random-weight ViTs.

    Families: timm ``VisionTransformer`` (CLS, registers, average pooling) and
    ``VisionTransformerDistilled``, the models whose adapter declares
    :data:`~captum_vit.vit.LRP_RULES`; others raise the capability error.

    Args:
        model: A supported timm ViT with LRP rules and a classifier head (see
            :class:`captum_vit.vit.ViTAdapter`).
        positive: Clamp each head's relevance at 0 before the head mean (Chefer et
            al.'s code); False averages the signed relevance.

    Raises:
        TypeError: "PartialLRP needs LRP rules for its blocks, which <family> ..."
            for other families, or a model without classifier head.
        ValueError: a ``positive`` that is not a bool.

    Examples::

        >>> attr = PartialLRP(model).attribute(images, target=labels)
        >>> grid = captum_vit.patch_scores(attr, model)
    """

    def __init__(self, model: nn.Module, positive: bool = True) -> None:
        self.adapter = ViTAdapter(model)
        self.adapter.require(LRP_RULES, type(self).__name__)
        self.adapter.require(CLASS_HEAD, type(self).__name__)
        super().__init__(self.adapter.model)
        self.positive = bool(check_choice("positive", positive, (True, False)))

    @log_usage()
    @evaluates_model
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor]],
        target: TargetType = None,
        interpolate_mode: str = "nearest",
    ) -> Union[Tensor, Tuple[Tensor]]:
        r"""Partial LRP relevance of every patch, spread over its pixels.

        Args:
            inputs: (B, C, H, W) images (or a 1-tuple of them).
            target: Class index: an int, a per-sample list or 1-D tensor; None
                explains the predicted class of each sample.
            interpolate_mode: ``"nearest"`` keeps maps patch-constant (exact for
                :func:`captum_vit.patch_scores`); ``"bilinear"`` for display.

        Returns:
            Attributions of the inputs' shape (and tuple-ness); non-negative with
            ``positive=True``.

        Raises:
            ValueError: bad image size or target.

        Examples::

            >>> attr = PartialLRP(model).attribute(images, target=3)
        """
        images, was_tuple = unpack_inputs(inputs)
        grid = self.adapter.check_images(images)
        if target is not None:
            t = format_target(target, images.shape[0], self.adapter.num_classes)
        last = self.adapter.num_layers - 1
        with torch.no_grad(), record_attention(
            self.adapter, layers=[last]
        ) as rec, lrp_trace(self.adapter, type(self).__name__, [last]) as trace:
            logits = self.adapter.logits(images)
        if target is None:
            t = logits.argmax(dim=1)
        t = t.to(logits.device)
        relevance = propagate(self.adapter, trace, rec.attentions, t, stop=last)[last]
        assert relevance is not None
        if self.positive:
            relevance = relevance.clamp(min=0)
        m = relevance.mean(dim=1)  # (B, T, T)
        p = self.adapter.num_prefix_tokens
        w = self.adapter.readout_weights(grid[0] * grid[1]).to(m)
        scores = torch.einsum("t,bts->bs", w, m)[:, p:]
        return pack_output(
            tokens_to_pixels(scores, grid, images, interpolate_mode), was_tuple
        )
