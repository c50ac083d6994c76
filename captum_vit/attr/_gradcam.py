"""Grad-CAM on the patch tokens (or feature map) of a ViT block (Selvaraju et al.,
ICCV 2017)."""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
from captum.attr import GradientAttribution
from captum.log import log_usage
from torch import Tensor

from ..vit import CLASS_HEAD, ViTAdapter, tokens_to_pixels
from ._utils import (
    TargetType,
    capture_layers,
    evaluates_model,
    format_target,
    pack_output,
    require_autograd,
    unpack_inputs,
)


class ViTGradCAM(GradientAttribution):
    r"""Grad-CAM with the patch tokens of a block as the activation map.

    The activations are the output of ``layer``, by default the normalised input of
    block ``block``'s attention (:meth:`~captum_vit.vit.ViTAdapter.attention_input`:
    timm ``norm1``, torchvision ``ln_1``, Hugging Face ``layernorm_before``; the
    "GradCAM (LN)" baseline of the ViT Shapley paper, as in pytorch-grad-cam's ViT
    example). The model's adapter turns that output into a (D, h, w) map
    (:meth:`~captum_vit.vit.ViTAdapter.feature_maps`): on token families prefix
    tokens are dropped and the N patch tokens are its "pixels"; on Swin the block's
    NHWC map is used as is (the last block's norm1 by default, as pytorch-grad-cam's
    Swin example), so the map has that stage's grid. Then

    ``α_d = mean_j ∂y_t/∂A_jd``,  ``CAM_j = ReLU(Σ_d α_d A_jd)``,

    with ``y_t`` the target **logit**. The gradient is taken with
    ``torch.autograd.grad`` w.r.t. the activations only (no parameter ``.grad`` is
    written). The default layer is the last block's ``norm1``: the output of the
    last block would give zero gradients on patch tokens of CLS-pooled models (the
    head reads only the CLS token). The model runs in eval mode (and eagerly, if
    compiled) for the call, its modes restored afterwards. Grad-CAM needs autograd:
    it cannot run inside ``torch.inference_mode()`` (``torch.no_grad()`` around the
    call is fine).

    Args:
        model: A supported ViT or Swin with a classifier head (see
            :class:`captum_vit.vit.ViTAdapter`).
        block: Block whose attention input is used (negative counts from the end);
            default the last block.
        layer: Alternatively, any module of the model that outputs (B, P + N, D)
            tokens (an NHWC map on Swin) once per forward pass (overrides ``block``).

    Raises:
        TypeError: an unsupported model or a model without classifier head.

    Examples::

        >>> attr = ViTGradCAM(model).attribute(images, target=labels)
        >>> attr = ViTGradCAM(model, layer=model.blocks[-2]).attribute(images, 3)
    """

    def __init__(
        self, model: nn.Module, block: int = -1, layer: Optional[nn.Module] = None
    ) -> None:
        self.adapter = ViTAdapter(model)
        self.adapter.require(CLASS_HEAD, type(self).__name__)
        super().__init__(self.adapter.model)
        if layer is None:
            layer = self.adapter.attention_input(block)
        if not isinstance(layer, nn.Module):
            raise TypeError(f"layer: expected an nn.Module, got {type(layer).__name__}")
        if not any(m is layer for m in self.adapter.model.modules()):
            raise ValueError("layer: the module is not part of the model")
        self.layer = layer

    @log_usage()
    @evaluates_model
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor]],
        target: TargetType = None,
        relu: bool = True,
        interpolate_mode: str = "nearest",
    ) -> Union[Tensor, Tuple[Tensor]]:
        r"""Grad-CAM of every patch token, spread over its pixels.

        Args:
            inputs: (B, C, H, W) images (or a 1-tuple of them).
            target: Class index: an int, a per-sample list or 1-D tensor; None
                explains the predicted class of each sample.
            relu: Keep only positive evidence (Grad-CAM's ReLU); False returns the
                signed weighted sum.
            interpolate_mode: ``"nearest"`` keeps maps patch-constant (exact for
                :func:`captum_vit.patch_scores`); ``"bilinear"`` for display.

        Returns:
            Attributions of the inputs' shape (and tuple-ness).

        Raises:
            ValueError: bad image size or target, or a ``layer`` whose output is not
                token-shaped.
            RuntimeError: inside ``torch.inference_mode()`` (Grad-CAM needs
                autograd).

        Examples::

            >>> attr = ViTGradCAM(model).attribute(images, target=3)
        """
        images, was_tuple = unpack_inputs(inputs)
        self.adapter.check_images(images)
        require_autograd(type(self).__name__)
        b = images.shape[0]
        if target is not None:
            t = format_target(target, b, self.adapter.num_classes)
        x = images.detach().requires_grad_(True)
        with torch.enable_grad():
            logits, (act,) = capture_layers(
                [self.layer], lambda: self.adapter.logits(x)
            )
            # (B, D, h, w); raises for outputs that are not token/map-shaped
            maps = self.adapter.feature_maps(act, images)
            if target is None:
                t = logits.argmax(dim=1)
            t = t.to(logits.device)
            objective = logits.gather(1, t[:, None]).sum()
            (grad,) = torch.autograd.grad(objective, act)
        a = maps.detach()
        g = self.adapter.feature_maps(grad, images)
        alpha = g.mean(dim=(2, 3), keepdim=True)  # (B, D, 1, 1): spatial mean
        cam = (a * alpha).sum(dim=1)  # (B, h, w)
        if relu:
            cam = cam.clamp(min=0)
        grid = tuple(cam.shape[1:])
        return pack_output(
            tokens_to_pixels(cam.flatten(1), grid, images, interpolate_mode),
            was_tuple,
        )
