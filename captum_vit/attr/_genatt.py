"""Generic attention-model explainability (Chefer, Gur & Wolf, ICCV 2021)."""

from __future__ import annotations

from typing import List, Tuple, Union

import torch
import torch.nn as nn
from captum.attr import GradientAttribution
from captum.log import log_usage
from torch import Tensor

from ..vit import (
    CLASS_HEAD,
    RECORDED_ATTENTION,
    ViTAdapter,
    record_attention,
    tokens_to_pixels,
)
from ._utils import (
    TargetType,
    evaluates_model,
    format_target,
    head_readout,
    pack_output,
    require_autograd,
    unpack_inputs,
)


def genatt_relevance(attentions: List[Tensor], gradients: List[Tensor]) -> Tensor:
    """Relevance matrix ``R = ∏_l (I + Ā_l)`` (B, T, T), applied in layer order.

    ``Ā_l = mean_heads(clamp(∇A_l ⊙ A_l, min=0))`` and ``R ← R + Ā_l R``.
    """
    b, _, t, _ = attentions[0].shape
    eye = torch.eye(t, dtype=attentions[0].dtype, device=attentions[0].device)
    r = eye.expand(b, t, t)
    for a, g in zip(attentions, gradients):
        a_bar = (g * a).clamp(min=0).mean(dim=1)
        r = r + a_bar @ r
    return r


class GenAtt(GradientAttribution):
    r"""Chefer et al.'s gradient-weighted attention relevance for ViTs.

    One forward and one backward pass for the whole batch. The backward differentiates
    the target **logit** (summed over the batch, which yields per-sample gradients
    because samples do not interact) with ``torch.autograd.grad`` with respect to the
    attention maps only: no parameter ``.grad`` is written and nothing is propagated
    below the first block. Per layer, ``Ā = mean_heads(clamp(∇A ⊙ A, min=0))`` and
    ``R ← R + Ā R`` starting from ``R = I``; the relevance of patch j is the row of
    ``R`` that the head reads (CLS row; for distilled DeiT the mean of the CLS and
    distillation rows, matching the mean of its two heads; the mean of patch rows for
    pooled models), without further normalisation. The model runs in eval mode for the
    call (its modes are restored afterwards). GenAtt needs autograd: it cannot run
    inside ``torch.inference_mode()`` (``torch.no_grad()`` around the call is fine).

    Attention-pooled heads (timm ``global_pool="map"``, SigLIP) read out through the
    pool: its latent query attends to the final tokens like one more attention layer
    whose query is not part of the sequence, so its relevance row is
    ``mean_queries(mean_heads(clamp(∇A_pool ⊙ A_pool, min=0))) · R`` (no identity term:
    the latent has no residual path from the tokens).

    Args:
        model: A supported ViT whose family records attention (see
            :class:`captum_vit.vit.ViTAdapter`), with a classifier head.

    Raises:
        TypeError: an unsupported model, a family without recorded attention (Swin)
            or a model without classifier head.

    Examples::

        >>> attr = GenAtt(model).attribute(images, target=labels)
        >>> grid = captum_vit.patch_scores(attr, model)
    """

    def __init__(self, model: nn.Module) -> None:
        self.adapter = ViTAdapter(model)
        self.adapter.require(RECORDED_ATTENTION, "GenAtt")
        self.adapter.require(CLASS_HEAD, "GenAtt")
        super().__init__(self.adapter.model)

    @log_usage()
    @evaluates_model
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor]],
        target: TargetType = None,
        interpolate_mode: str = "nearest",
    ) -> Union[Tensor, Tuple[Tensor]]:
        r"""GenAtt relevance of every patch, spread over its pixels.

        Args:
            inputs: (B, C, H, W) images (or a 1-tuple of them).
            target: Class index: an int, a per-sample list or 1-D tensor; None
                explains the predicted class of each sample.
            interpolate_mode: ``"nearest"`` keeps maps patch-constant;
                ``"bilinear"`` for display.

        Returns:
            Attributions of the inputs' shape (and tuple-ness), non-negative.
        """
        images, was_tuple = unpack_inputs(inputs)
        grid = self.adapter.check_images(images)
        require_autograd("GenAtt")
        if target is not None:
            t = format_target(target, images.shape[0], self.adapter.num_classes)
        # An input that requires grad makes the attention maps differentiable even
        # when every parameter is frozen; the model itself is not touched.
        x = images.detach().requires_grad_(True)
        with torch.enable_grad(), record_attention(self.adapter) as rec:
            logits = self.adapter.logits(x)
            if target is None:
                t = logits.argmax(dim=1)
            t = t.to(logits.device)
            objective = logits.gather(1, t[:, None]).sum()
            grads = rec.grad(objective)
        r = genatt_relevance([a.detach() for a in rec.attentions], grads)
        p = self.adapter.num_prefix_tokens
        w = head_readout(
            self.adapter,
            rec,
            r,
            lambda pool: (rec.pool_gradient * pool.detach()).clamp(min=0).mean(dim=1),
        )
        scores = torch.einsum("bt,bts->bs", w.to(r), r)[:, p:]
        return pack_output(
            tokens_to_pixels(scores.detach(), grid, images, interpolate_mode), was_tuple
        )
