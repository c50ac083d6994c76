"""Grad-CAM on the patch tokens of a ViT block (Selvaraju et al., ICCV 2017)."""

from __future__ import annotations

from typing import List, Optional, Tuple, Union

import torch
import torch.nn as nn
from captum.attr import GradientAttribution
from captum.log import log_usage
from torch import Tensor

from ..vit import ViTAdapter, tokens_to_pixels
from ..vit.parts import attention_input
from ._utils import (
    TargetType,
    evaluates_model,
    format_target,
    pack_output,
    require_autograd,
    unpack_inputs,
)


class ViTGradCAM(GradientAttribution):
    r"""Grad-CAM with the patch tokens of a block as the activation map.

    The activations are the (B, P + N, D) token output of ``layer``, by default the
    normalised input of block ``block``'s attention (``norm1``; the "GradCAM (LN)"
    baseline of the ViT Shapley paper, as in pytorch-grad-cam's ViT example). Prefix
    tokens are dropped and the N patch tokens are the "pixels" of a (D, gh, gw) map:

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
        model: A supported timm ViT (see :class:`captum_vit.vit.ViTAdapter`).
        block: Block whose attention input is used (negative counts from the end);
            default the last block.
        layer: Alternatively, any module of the model that outputs (B, P + N, D)
            tokens once per forward pass (overrides ``block``).

    Examples::

        >>> attr = ViTGradCAM(model).attribute(images, target=labels)
        >>> attr = ViTGradCAM(model, layer=model.blocks[-2]).attribute(images, 3)
    """

    def __init__(
        self, model: nn.Module, block: int = -1, layer: Optional[nn.Module] = None
    ) -> None:
        self.adapter = ViTAdapter(model)
        super().__init__(self.adapter.model)
        if layer is None:
            layer = attention_input(self.adapter, block)
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
        t_count = self.adapter.num_prefix_tokens + grid[0] * grid[1]
        if target is not None:
            t = format_target(target, b, self.adapter.num_classes)
        seen: List[Tensor] = []

        def hook(module: nn.Module, args: object, out: object) -> None:
            seen.append(out)  # type: ignore[arg-type]

        x = images.detach().requires_grad_(True)
        handle = self.layer.register_forward_hook(hook)
        try:
            with torch.enable_grad():
                logits = self.forward_func(x)
                if len(seen) != 1:
                    raise ValueError(
                        "layer: expected the module to run once per forward pass, "
                        f"it ran {len(seen)} times"
                    )
                act = seen[0]
                if (
                    not isinstance(act, Tensor)
                    or act.dim() != 3
                    or tuple(act.shape[:2]) != (b, t_count)
                ):
                    shape = (
                        tuple(act.shape)
                        if isinstance(act, Tensor)
                        else type(act).__name__
                    )
                    raise ValueError(
                        "layer: expected a token-shaped output (B, P + N, D) = "
                        f"({b}, {t_count}, D), got {shape}"
                    )
                if target is None:
                    t = logits.argmax(dim=1)
                t = t.to(logits.device)
                objective = logits.gather(1, t[:, None]).sum()
                (grad,) = torch.autograd.grad(objective, act)
        finally:
            handle.remove()
        p = self.adapter.num_prefix_tokens
        a, g = act.detach()[:, p:], grad[:, p:]  # (B, N, D)
        alpha = g.mean(dim=1, keepdim=True)  # (B, 1, D): spatial mean of gradients
        cam = (a * alpha).sum(dim=-1)  # (B, N)
        if relu:
            cam = cam.clamp(min=0)
        return pack_output(
            tokens_to_pixels(cam, grid, images, interpolate_mode), was_tuple
        )
