"""Transformer Attribution (Chefer, Gur & Wolf, CVPR 2021): LRP relevance of the
attention maps weighted by their gradients, rolled out through the blocks."""

from __future__ import annotations

from typing import List, Tuple, Union

import torch
import torch.nn as nn
from captum.attr import GradientAttribution
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
    check_int,
    evaluates_model,
    format_target,
    pack_output,
    require_autograd,
    unpack_inputs,
)


def relevance_rollout(
    relevances: List[Tensor], gradients: List[Tensor], start_layer: int = 0
) -> Tensor:
    """``C = Ā_{L-1} ⋯ Ā_{start}`` with ``Ā_b = I + E_h[(∇A_b ⊙ R_b)⁺]`` (B, T, T).

    Args:
        relevances: Per block, the (B, heads, T, T) LRP relevance of the attention.
        gradients: Per block, the gradient of the target logit w.r.t. the attention.
        start_layer: First block of the product.

    Returns:
        The (B, T, T) rollout matrix (later blocks on the left, no row
        normalisation, as the paper).
    """
    c = None
    for r, g in zip(relevances[start_layer:], gradients[start_layer:]):
        a = (g.to(r.dtype) * r).clamp(min=0).mean(dim=1)
        a = a + torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        c = a if c is None else a @ c
    assert c is not None
    return c


class TransformerAttribution(GradientAttribution):
    r"""Chefer et al.'s Transformer Attribution (CVPR 2021) on a stock timm ViT.

    One forward pass records the attention probabilities ``A_b`` of every block and,
    with hooks, what the LRP rules need; one backward pass of the target **logit**
    (``torch.autograd.grad`` w.r.t. the attention maps only: no parameter ``.grad``
    is written) gives ``∇A_b``. Relevance starts as the one-hot vector of the target
    at the logits and is propagated down through the head and the blocks with the
    paper's rules (:mod:`captum_vit.vit.lrp`: LRP-αβ with α = 1, β = 0 for linear
    layers, identity for element-wise layers, input × gradient for the two matrix
    products, halved, and the normalised rule for residual sums), giving the
    relevance ``R_b`` of every attention map. Then

    ``Ā_b = I + E_h[(∇A_b ⊙ R_b)⁺]``,  ``C = Ā_{L-1} ⋯ Ā_{start_layer}``,

    and the relevance of patch j is the row of ``C`` that the head reads (the CLS
    row; for distilled DeiT the mean of the CLS and distillation rows; the mean of
    the pooled rows for average-pooled models), at column j. The model is neither
    copied nor modified; it runs in eval mode (and eagerly, if compiled) for the
    call, its modes restored afterwards. The method needs autograd: it cannot run
    inside ``torch.inference_mode()`` (``torch.no_grad()`` around the call is fine).

    Families: timm ``VisionTransformer`` (CLS, registers, average pooling) and
    ``VisionTransformerDistilled``, the models whose adapter declares
    :data:`~captum_vit.vit.LRP_RULES`. Other families (Eva, BEiT, SigLIP's attention
    pool, torchvision, Hugging Face, Swin) and other blocks (parallel blocks, gated
    attention) have no LRP rules here and raise the capability error.

    Args:
        model: A supported timm ViT with LRP rules and a classifier head (see
            :class:`captum_vit.vit.ViTAdapter`).
        start_layer: First block of the rollout (0 in the paper).

    Raises:
        TypeError: "TransformerAttribution needs LRP rules for its blocks, which
            <family> ..." for other families, or a model without classifier head.

    Examples::

        >>> attr = TransformerAttribution(model).attribute(images, target=labels)
        >>> grid = captum_vit.patch_scores(attr, model)
    """

    def __init__(self, model: nn.Module, start_layer: int = 0) -> None:
        self.adapter = ViTAdapter(model)
        self.adapter.require(LRP_RULES, type(self).__name__)
        self.adapter.require(CLASS_HEAD, type(self).__name__)
        super().__init__(self.adapter.model)
        self.start_layer = check_int(
            "start_layer", start_layer, 0, self.adapter.num_layers - 1
        )

    @log_usage()
    @evaluates_model
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor]],
        target: TargetType = None,
        interpolate_mode: str = "nearest",
    ) -> Union[Tensor, Tuple[Tensor]]:
        r"""Transformer Attribution relevance of every patch, spread over its pixels.

        Args:
            inputs: (B, C, H, W) images (or a 1-tuple of them).
            target: Class index: an int, a per-sample list or 1-D tensor; None
                explains the predicted class of each sample.
            interpolate_mode: ``"nearest"`` keeps maps patch-constant (exact for
                :func:`captum_vit.patch_scores`); ``"bilinear"`` for display.

        Returns:
            Attributions of the inputs' shape (and tuple-ness), non-negative. The
            identity in ``Ā_b`` adds nothing to the patch columns of a CLS row and
            the same constant (1/N) to every patch of an average-pooled readout,
            so rankings are those of the relevance term.

        Raises:
            ValueError: bad image size or target.
            RuntimeError: inside ``torch.inference_mode()`` (the method needs
                autograd; ``torch.no_grad()`` around the call is fine).

        Examples::

            >>> attr = TransformerAttribution(model).attribute(images, target=3)
        """
        images, was_tuple = unpack_inputs(inputs)
        grid = self.adapter.check_images(images)
        require_autograd(type(self).__name__)
        b = images.shape[0]
        if target is not None:
            t = format_target(target, b, self.adapter.num_classes)
        # An input that requires grad makes the attention maps differentiable even
        # when every parameter is frozen; the model itself is not touched.
        x = images.detach().requires_grad_(True)
        name = type(self).__name__
        with torch.enable_grad(), record_attention(self.adapter) as rec, lrp_trace(
            self.adapter, name
        ) as trace:
            logits = self.adapter.logits(x)
            if target is None:
                t = logits.argmax(dim=1)
            t = t.to(logits.device)
            grads = rec.grad(logits.gather(1, t[:, None]).sum())
        attentions = [a.detach() for a in rec.attentions]
        relevances = propagate(
            self.adapter, trace, attentions, t, stop=self.start_layer
        )
        c = relevance_rollout(relevances, grads, self.start_layer)
        p = self.adapter.num_prefix_tokens
        w = self.adapter.readout_weights(grid[0] * grid[1]).to(c)
        scores = torch.einsum("t,bts->bs", w, c)[:, p:]
        return pack_output(
            tokens_to_pixels(scores.detach(), grid, images, interpolate_mode),
            was_tuple,
        )
