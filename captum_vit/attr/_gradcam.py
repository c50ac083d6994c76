"""Grad-CAM on the patch tokens (or feature map) of a ViT block (Selvaraju et al.,
ICCV 2017), or on a block's attention map (the "GradCAM" baseline of Chefer, Gur &
Wolf, CVPR 2021)."""

from __future__ import annotations

from typing import Optional, Tuple, Union

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
from ..vit.adapter import resolve_layer_indices
from ._rollout import fused_pool_rows
from ._utils import (
    TargetType,
    capture_layers,
    check_choice,
    evaluates_model,
    format_target,
    head_readout,
    pack_output,
    require_autograd,
    unpack_inputs,
)

#: What Grad-CAM weights: the patch tokens or the attention map of a block.
ACTIVATIONS = ["tokens", "attention"]


class ViTGradCAM(GradientAttribution):
    r"""Grad-CAM with the patch tokens of a block (or its attention) as the activation
    map.

    **On tokens** (``on="tokens"``, the default):
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

    **On attention** (``on="attention"``): Chefer et al.'s "GradCAM" baseline
    (``generate_cam_attn`` in hila-chefer/Transformer-Explainability). The
    activations are block ``block``'s post-softmax attention probabilities
    ``A`` (B, heads, T, T), read at the row(s) the head reads: ``a_h = Σ_i w_i
    A_{h,i,:}`` with the readout weights ``w`` (the CLS row; the mean of the CLS and
    distillation rows for distilled DeiT; the mean of the pooled rows for
    average-pooled models; the pool's head-averaged attention for attention-pooled
    heads), and likewise the gradient ``g_h`` of the target **logit**. Each head is
    weighted by the mean of its gradient over the patch columns and the heads are
    averaged:

    ``α_h = mean_j g_hj``,  ``CAM_j = ReLU(mean_h α_h a_hj)``  (j over patches).

    The backward pass stops at that block's attention. Chefer et al. also min-max
    normalise each map, which does not change rankings or correlations; this map is
    not normalised. Needs recorded attention (not Swin); ``layer`` does not apply.

    Args:
        model: A supported ViT or Swin with a classifier head (see
            :class:`captum_vit.vit.ViTAdapter`).
        block: Block whose attention input (``on="tokens"``) or attention map
            (``on="attention"``) is used (negative counts from the end); default
            the last block.
        layer: Alternatively, any module of the model that outputs (B, P + N, D)
            tokens (an NHWC map on Swin) once per forward pass (overrides ``block``;
            ``on="tokens"`` only).
        on: ``"tokens"`` (default) or ``"attention"``.

    Raises:
        TypeError: an unsupported model or a model without classifier head; with
            ``on="attention"``, a family without recorded attention (Swin).
        ValueError: an unknown ``on``, or a ``layer`` given with
            ``on="attention"``.

    Examples::

        >>> attr = ViTGradCAM(model).attribute(images, target=labels)
        >>> attr = ViTGradCAM(model, layer=model.blocks[-2]).attribute(images, 3)
        >>> attr = ViTGradCAM(model, on="attention").attribute(images, target=labels)
    """

    def __init__(
        self,
        model: nn.Module,
        block: int = -1,
        layer: Optional[nn.Module] = None,
        on: str = "tokens",
    ) -> None:
        self.adapter = ViTAdapter(model)
        self.on = check_choice("on", on, ACTIVATIONS)
        if self.on == "attention":
            self.adapter.require(RECORDED_ATTENTION, type(self).__name__)
        self.adapter.require(CLASS_HEAD, type(self).__name__)
        super().__init__(self.adapter.model)
        if self.on == "attention":
            if layer is not None:
                raise ValueError(
                    'layer: not used with on="attention" (choose the block with '
                    "block=...)"
                )
            self.block = resolve_layer_indices(self.adapter, [block], "block")[0]
            self.layer = None
            return
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
        grid = self.adapter.check_images(images)
        require_autograd(type(self).__name__)
        b = images.shape[0]
        if target is not None:
            t = format_target(target, b, self.adapter.num_classes)
        if self.on == "attention":
            cam = self._attention_cam(images, t if target is not None else None)
            if relu:
                cam = cam.clamp(min=0)
            return pack_output(
                tokens_to_pixels(cam, grid, images, interpolate_mode), was_tuple
            )
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

    def _attention_cam(self, images: Tensor, t: Optional[Tensor]) -> Tensor:
        """The signed (B, N) attention Grad-CAM of the patches (before the ReLU)."""
        blk = self.block
        x = images.detach().requires_grad_(True)
        with torch.enable_grad(), record_attention(self.adapter, layers=[blk]) as rec:
            logits = self.adapter.logits(x)
            if t is None:
                t = logits.argmax(dim=1)
            t = t.to(logits.device)
            attention = rec.attentions[blk]
            (grad,) = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), attention)
        a = attention.detach()
        w = head_readout(
            self.adapter, rec, a[:, 0], lambda p: fused_pool_rows(p, "mean")
        )
        w = w.to(a)
        p = self.adapter.num_prefix_tokens
        rows = torch.einsum("bi,bhij->bhj", w, a)[..., p:]  # (B, heads, N)
        g = torch.einsum("bi,bhij->bhj", w, grad.to(a.dtype))[..., p:]
        alpha = g.mean(dim=2, keepdim=True)  # (B, heads, 1)
        return (rows * alpha).mean(dim=1).detach()
