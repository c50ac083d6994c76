"""Beyond Intuition: token attributions from attention perception and reasoning
feedback (Chen, Li, Yu, Dou & Xiong, TMLR 2023)."""

from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn as nn
from captum.attr import GradientAttribution
from captum.log import log_usage
from torch import Tensor

from ..vit import (
    CLASS_HEAD,
    RECORDED_ATTENTION,
    VALUE_PROJECTION,
    ViTAdapter,
    tokens_to_pixels,
)
from ._tam import readout_row, resolve_start_layer, scaled_passes
from ._utils import (
    TargetType,
    check_choice,
    check_int,
    evaluates_model,
    format_target,
    pack_output,
    require_autograd,
    unpack_inputs,
)

_MODES = ["head", "token"]

#: First block (counted from 0) of the authors' ``generate_ours`` (head-wise,
#: start_layer=4) and ``generate_ours_c`` (token-wise, start_layer=6): their loops
#: skip the blocks ``nb < start_layer - 1``, so they count blocks from 1.
BI_START_LAYER = {"head": 3, "token": 5}


def head_weights(attention: Tensor, gradient: Tensor) -> Tensor:
    """Head-wise approximation: (B, heads) weights ``I_h / Σ_h I_h`` with
    ``I_h = mean_ij |(A_hᵀ ∇A_h)_ij|``.

    A sample whose every ``I_h`` is zero (its attention gradients vanish) gets equal
    weights ``1 / heads``, the head mean, instead of 0 / 0.
    """
    importance = (attention.transpose(-1, -2) @ gradient).abs().mean(dim=(-1, -2))
    total = importance.sum(dim=1, keepdim=True)
    uniform = torch.full_like(importance, 1.0 / importance.shape[1])
    return torch.where(total > 0, importance / total.clamp_min(1e-38), uniform)


def token_weights(inputs: Tensor, projected: Tensor) -> Tensor:
    """Token-wise approximation: (B, T) ratios ``‖W_O v_j‖ / ‖z_j‖`` of each token's
    projected value to its block input; a zero input norm is guarded by the
    smallest positive float (the ratio is then large, never NaN)."""
    den = inputs.norm(dim=-1).clamp_min(torch.finfo(inputs.dtype).tiny)
    return projected.norm(dim=-1) / den


class BeyondIntuition(GradientAttribution):
    r"""Beyond Intuition (Chen et al., TMLR 2023): attention perception times
    reasoning feedback.

    *Attention perception* approximates how the tokens interact on the way to the
    pooled token, block by block from ``start_layer``: ``R ← R + C_l R`` from
    ``R = I``, with

    - ``mode="head"`` (the paper's head-wise approximation, "Ours-H"):
      ``C_l = Σ_h ŵ_h A_h``, ``ŵ_h = I_h / Σ_h I_h``,
      ``I_h = mean_ij |(A_hᵀ ∇A_h)_ij|`` from block l's attention ``A_h`` and its
      gradient with respect to the target **logit** (unscaled images);
    - ``mode="token"`` (token-wise, "Ours-T"): ``C_l = Ā_l diag(m)``, ``Ā_l`` the head
      mean and ``m_j = ‖W_O v_j‖ / ‖z_j‖`` (token j's values through the output
      projection, without bias, over its block input). Needs
      :data:`~captum_vit.vit.VALUE_PROJECTION` (timm ``VisionTransformer``).

    *Reasoning feedback* is the integrated gradient of the last attention map,
    ``W = mean_heads(clamp(Ḡ, min=0))``, ``Ḡ`` averaged over the ``steps`` images
    ``alpha · x``, ``alpha`` in ``linspace(0, 1, steps)`` (as TAM). The map is
    ``W ⊙ R`` (head mode) or ``W ⊙ |R|`` (token mode), read at the head's row: the
    CLS row, the mean of the CLS and distillation rows for distilled DeiT, the mean
    of the patch rows for average-pooled models, the pool's head-averaged attention
    for attention-pooled heads (SigLIP).

    This follows the authors' ``generate_ours`` / ``generate_ours_c`` in
    ``ViT/baselines/ViT/ViT_explanation_generator.py`` (jiaminchen-1031/
    transformerinterp at a76854a) and their defaults: 20 steps, first block 4 (head)
    and 6 (token) counted from 1, i.e. ``start_layer`` 3 and 5 here. Their head-wise
    code normalises the head weights over the whole batch and runs with one image
    only; here each sample is normalised on its own (equal for one image).

    Cost: as :class:`TransitionAttentionMaps`, ``steps`` forward passes (batched)
    and backward passes through the last block, except that head mode
    differentiates the unscaled images down to ``start_layer``.

    Args:
        model: A supported ViT whose family records attention, with a classifier
            head.
        mode: ``"token"`` or ``"head"`` approximation (default ``"head"``).
        start_layer: First block (counted from 0) of the perception product; None:
            the authors' default (3 for head, 5 for token), or the last block on
            shallower models.
        steps: Number of integration points (the authors' 20).

    Raises:
        TypeError: an unsupported model, a family without recorded attention (Swin)
            or a model without classifier head; ``mode="token"`` on a family
            without projected values.
        ValueError: a ``mode`` other than ``"head"``/``"token"``, ``start_layer``
            outside ``[0, L - 1]`` or ``steps < 1``.

    Examples::

        >>> bi = BeyondIntuition(model, mode="token")
        >>> attr = bi.attribute(images, target=labels)
        >>> grid = captum_vit.patch_scores(attr, model)
    """

    def __init__(
        self,
        model: nn.Module,
        mode: str = "head",
        start_layer: Optional[int] = None,
        steps: int = 20,
    ) -> None:
        self.adapter = ViTAdapter(model)
        self.mode = check_choice("mode", mode, _MODES)
        self.adapter.require(RECORDED_ATTENTION, "BeyondIntuition")
        self.adapter.require(CLASS_HEAD, "BeyondIntuition")
        if self.mode == "token":
            self.adapter.require(VALUE_PROJECTION, 'BeyondIntuition(mode="token")')
        super().__init__(self.adapter.model)
        self.start_layer = resolve_start_layer(
            start_layer, BI_START_LAYER[self.mode], self.adapter.num_layers
        )
        self.steps = check_int("steps", steps, 1)

    def perception(
        self,
        attentions: Dict[int, Tensor],
        gradients: Dict[int, Tensor],
        values: Dict[int, Tuple[Tensor, Tensor]],
    ) -> Tensor:
        """The (B, T, T) perception matrix ``R = (I + C_{L-1}) ⋯ (I + C_start)``."""
        first = attentions[self.start_layer]
        b, _, t, _ = first.shape
        r = torch.eye(t, dtype=first.dtype, device=first.device).expand(b, t, t)
        for i in range(self.start_layer, self.adapter.num_layers):
            a = attentions[i]
            if self.mode == "head":
                c = torch.einsum("bh,bhts->bts", head_weights(a, gradients[i]), a)
            else:
                c = a.mean(dim=1) * token_weights(*values[i])[:, None, :]
            r = r + c @ r
        return r

    @log_usage()
    @evaluates_model
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor]],
        target: TargetType = None,
        internal_batch_size: int = 64,
        interpolate_mode: str = "nearest",
    ) -> Union[Tensor, Tuple[Tensor]]:
        r"""Beyond Intuition score of every patch, spread over its pixels.

        Args:
            inputs: (B, C, H, W) images (or a 1-tuple of them).
            target: Class index: an int, a per-sample list or 1-D tensor; None
                explains the predicted class of each sample.
            internal_batch_size: Scaled images per forward pass of the integration.
            interpolate_mode: ``"nearest"`` keeps maps patch-constant;
                ``"bilinear"`` for display.

        Returns:
            Attributions of the inputs' shape (and tuple-ness), non-negative (every
            ``C_l`` is, so ``R`` is; token mode takes ``|R|`` as the authors do).
        """
        images, was_tuple = unpack_inputs(inputs)
        grid = self.adapter.check_images(images)
        chunk = check_int("internal_batch_size", internal_batch_size, 1)
        require_autograd("BeyondIntuition")
        if target is not None:
            target = format_target(target, images.shape[0], self.adapter.num_classes)
        layers = range(self.start_layer, self.adapter.num_layers)
        last = self.adapter.num_layers - 1
        run = scaled_passes(
            self.adapter,
            images,
            target,
            self.steps,
            layers=layers,
            grad_layers=layers if self.mode == "head" else [last],
            chunk=chunk,
            value_layers=layers if self.mode == "token" else (),
        )
        r = self.perception(run.attentions, run.gradients, run.values)
        if self.mode == "token":
            r = r.abs()
        feedback = run.integrated.clamp(min=0).mean(dim=1)
        p = self.adapter.num_prefix_tokens
        scores = readout_row(run.readout, feedback * r)[:, p:]
        return pack_output(
            tokens_to_pixels(scores.detach(), grid, images, interpolate_mode),
            was_tuple,
        )
