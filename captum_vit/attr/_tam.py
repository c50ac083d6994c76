"""Transition Attention Maps (Yuan et al., IJCAI 2021), and the integrated gradients
on the last attention map that TAM and Beyond Intuition share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple, Union

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
from ._rollout import fused_pool_rows
from ._utils import (
    TargetType,
    check_int,
    chunks,
    evaluates_model,
    format_target,
    head_readout,
    pack_output,
    require_autograd,
    unpack_inputs,
)

#: TAM's first block in the authors' code (``interpret_methods.py``: start_layer=4).
TAM_START_LAYER = 4


def resolve_start_layer(start_layer: Optional[int], default: int, depth: int) -> int:
    """``start_layer`` validated against a model of ``depth`` blocks; None gives
    ``default``, or the last block on models with fewer blocks than that."""
    if start_layer is None:
        return min(default, depth - 1)
    return check_int("start_layer", start_layer, 0, depth - 1)


@dataclass
class ScaledPasses:
    """What the forward and backward passes on the scaled images give.

    Attributes:
        target: (B,) the explained classes.
        attentions: Block index -> (B, heads, T, T) attention of the unscaled images.
        gradients: Block index -> (B, heads, T, T) gradient of the target logit with
            respect to that attention, unscaled images (the blocks asked for).
        integrated: (B, heads, T, T) the last block's attention gradient averaged
            over the ``steps`` images ``alpha · x``, ``alpha`` in
            ``linspace(0, 1, steps)`` (the authors' Riemann sum, both ends in).
        readout: (B, T) the weights with which the head reads the token rows.
        values: Block index -> ``(inputs, projected values)`` of the unscaled
            images (:meth:`ViTAdapter.value_probes`), when asked for.
    """

    target: Tensor
    attentions: Dict[int, Tensor]
    gradients: Dict[int, Tensor]
    integrated: Tensor
    readout: Tensor
    values: Dict[int, Tuple[Tensor, Tensor]] = field(default_factory=dict)


def _differentiable_forward(
    adapter: ViTAdapter, images: Tensor, grad_from: int, grid: Sequence[int]
) -> Tensor:
    """Logits with autograd recording from block ``grad_from`` on only: the blocks
    before it run without grad (nothing below ``grad_from`` is differentiated), and
    the hidden states entering it require grad, so the attention maps from there on
    are differentiable even when every parameter is frozen."""
    with torch.no_grad():
        tokens = adapter.run_blocks(adapter.embed(images), 0, grad_from, grid=grid)
    tokens = tokens.detach().requires_grad_(True)
    return adapter.head(adapter.run_blocks(tokens, grad_from, grid=grid))


def scaled_passes(
    adapter: ViTAdapter,
    images: Tensor,
    target: TargetType,
    steps: int,
    layers: Sequence[int],
    grad_layers: Sequence[int],
    chunk: int,
    value_layers: Sequence[int] = (),
) -> ScaledPasses:
    """Run the model on ``alpha · images`` for ``alpha`` in ``linspace(0, 1, steps)``.

    The unscaled images (``alpha = 1``) run first, on their own: their attention of
    ``layers`` is kept, with its gradient for ``grad_layers`` (the backward goes down
    to the lowest of them only), and their logits give the predicted class when
    ``target`` is None. The other ``alpha`` run batched, ``chunk`` images per pass,
    each differentiated through the last block only. With ``steps == 1`` the sum
    holds only ``alpha = 0`` (``linspace(0, 1, 1)``) and the unscaled pass only
    supplies the attention, gradients and class.
    """
    b = images.shape[0]
    last = adapter.num_layers - 1
    grid = tuple(adapter.grid_for(images))
    wanted = sorted(set(layers) | set(grad_layers) | {last})
    grad_wanted = sorted(set(grad_layers) | {last})
    values: Dict[int, Tuple[Tensor, Tensor]] = {}

    def on_values(i: int, inputs: Tensor, projected: Tensor) -> None:
        values[i] = (inputs.detach(), projected.detach())

    with torch.enable_grad(), record_attention(adapter, layers=wanted) as rec:
        if value_layers:
            with adapter.value_probes(value_layers, on_values):
                logits = _differentiable_forward(adapter, images, grad_wanted[0], grid)
        else:
            logits = _differentiable_forward(adapter, images, grad_wanted[0], grid)
        if target is None:
            t = logits.argmax(dim=1)
        else:
            t = format_target(target, b, adapter.num_classes).to(logits.device)
        objective = logits.gather(1, t[:, None]).sum()
        maps = [rec.attentions[i] for i in grad_wanted]
        grads = dict(zip(grad_wanted, torch.autograd.grad(objective, maps)))
        pool = rec.pool_attention
        readout = head_readout(
            adapter,
            rec,
            rec.attentions[last][:, 0],
            lambda p: fused_pool_rows(p.detach(), "mean"),
        )
    attentions = {i: rec.attentions[i].detach() for i in wanted}
    del rec, maps, pool, logits, objective
    alphas = torch.linspace(0, 1, steps, dtype=torch.float64).tolist()
    total = grads[last].clone() if steps > 1 else torch.zeros_like(grads[last])
    rest = alphas[:-1] if steps > 1 else alphas
    # row k of the scaled batch is image k % b at alpha rest[k // b]
    n = len(rest) * b
    for lo, hi in chunks(n, chunk):
        rows = torch.arange(lo, hi)
        scale = torch.tensor([rest[k // b] for k in range(lo, hi)], dtype=images.dtype)
        idx = (rows % b).to(images.device)
        x = images[idx] * scale.to(images.device).view(-1, *[1] * (images.dim() - 1))
        with torch.enable_grad(), record_attention(adapter, layers=[last]) as rec:
            logits = _differentiable_forward(adapter, x, last, grid)
            objective = logits.gather(1, t[idx][:, None]).sum()
            (g,) = torch.autograd.grad(objective, [rec.attentions[last]])
        total.index_add_(0, idx, g.to(total.dtype))
    return ScaledPasses(
        target=t,
        attentions=attentions,
        gradients={i: g.detach() for i, g in grads.items()},
        integrated=total / steps,
        readout=readout.detach(),
        values=values,
    )


def readout_row(readout: Tensor, matrix: Tensor) -> Tensor:
    """(B, T) readout weights times (B, T, T) rows: ``Σ_t w_t · M[t, :]``."""
    return torch.einsum("bt,bts->bs", readout.to(matrix), matrix)


class TransitionAttentionMaps(GradientAttribution):
    r"""Transition Attention Maps (TAM; Yuan, Zhang, Sun & Li, IJCAI 2021).

    The head-averaged attention of each block is a Markov transition matrix over the
    tokens; the state the head reads is carried back through the blocks, and the
    integrated gradients of the last attention map make it class specific. With
    ``Ā_l`` the head mean of block l's attention (of the unscaled images) and ``w``
    the head's readout row (CLS; see below):

    - initial state ``s = w Ā_{L-1}``, then for ``l = L-2, …, start_layer``:
      ``s ← s + s Ā_l`` (a transition plus the residual path);
    - ``W = w · mean_heads(clamp(Ḡ, min=0))`` with ``Ḡ`` the gradient of the target
      **logit** with respect to the last block's attention, averaged over the
      ``steps`` images ``alpha · x``, ``alpha`` in ``linspace(0, 1, steps)`` (both
      ends included: the authors' Riemann sum, baseline the all-zero model input);
    - the score of patch j is ``s_j · W_j``.

    This follows the authors' ``transition_attention_maps`` in
    ``baselines/ViT/interpret_methods.py`` (XianrenYty/Transition_Attention_Maps at
    8329327), whose default first block is 4. Their code needs the CLS row; here the
    head's own readout replaces it: the CLS row, the mean of the CLS and distillation
    rows for distilled DeiT, the mean of the patch rows for average-pooled models,
    and for attention-pooled heads (SigLIP) the pool's head-averaged attention.

    Cost: ``steps`` forward passes (batched, ``internal_batch_size`` images per
    pass) plus backward passes through the last block only: the unscaled pass gives
    the attention maps, the class and the ``alpha = 1`` gradient, so it is one of
    the ``steps`` terms (with ``steps == 1`` the sum holds only ``alpha = 0`` and
    the unscaled pass is one forward more).

    Args:
        model: A supported ViT whose family records attention (see
            :class:`captum_vit.vit.ViTAdapter`), with a classifier head.
        start_layer: Last block (counted from 0) the state is carried back to;
            None: 4 (the authors'), or the last block on models with at most 4.
        steps: Number of integration points (the authors' 20).

    Raises:
        TypeError: an unsupported model, a family without recorded attention (Swin)
            or a model without classifier head.
        ValueError: ``start_layer`` outside ``[0, L - 1]`` or ``steps < 1``.

    Examples::

        >>> attr = TransitionAttentionMaps(model).attribute(images, target=labels)
        >>> grid = captum_vit.patch_scores(attr, model)
    """

    def __init__(
        self,
        model: nn.Module,
        start_layer: Optional[int] = None,
        steps: int = 20,
    ) -> None:
        self.adapter = ViTAdapter(model)
        self.adapter.require(RECORDED_ATTENTION, "TransitionAttentionMaps")
        self.adapter.require(CLASS_HEAD, "TransitionAttentionMaps")
        super().__init__(self.adapter.model)
        self.start_layer = resolve_start_layer(
            start_layer, TAM_START_LAYER, self.adapter.num_layers
        )
        self.steps = check_int("steps", steps, 1)

    def transition_state(
        self, attentions: Dict[int, Tensor], readout: Tensor
    ) -> Tensor:
        """The (B, T) state ``s`` carried back from the readout to ``start_layer``."""
        last = self.adapter.num_layers - 1
        s = readout_row(readout, attentions[last].mean(dim=1))
        for i in reversed(range(self.start_layer, last)):
            s = s + torch.einsum("bt,bts->bs", s, attentions[i].mean(dim=1))
        return s

    @log_usage()
    @evaluates_model
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor]],
        target: TargetType = None,
        internal_batch_size: int = 64,
        interpolate_mode: str = "nearest",
    ) -> Union[Tensor, Tuple[Tensor]]:
        r"""TAM score of every patch, spread over its pixels.

        Args:
            inputs: (B, C, H, W) images (or a 1-tuple of them).
            target: Class index: an int, a per-sample list or 1-D tensor; None
                explains the predicted class of each sample.
            internal_batch_size: Scaled images per forward pass of the integration.
            interpolate_mode: ``"nearest"`` keeps maps patch-constant;
                ``"bilinear"`` for display.

        Returns:
            Attributions of the inputs' shape (and tuple-ness), non-negative.
        """
        images, was_tuple = unpack_inputs(inputs)
        grid = self.adapter.check_images(images)
        chunk = check_int("internal_batch_size", internal_batch_size, 1)
        require_autograd("TransitionAttentionMaps")
        if target is not None:
            target = format_target(target, images.shape[0], self.adapter.num_classes)
        last = self.adapter.num_layers - 1
        run = scaled_passes(
            self.adapter,
            images,
            target,
            self.steps,
            layers=range(self.start_layer, last + 1),
            grad_layers=[last],
            chunk=chunk,
        )
        s = self.transition_state(run.attentions, run.readout)
        w = readout_row(run.readout, run.integrated.clamp(min=0).mean(dim=1))
        p = self.adapter.num_prefix_tokens
        scores = (s * w)[:, p:]
        return pack_output(
            tokens_to_pixels(scores.detach(), grid, images, interpolate_mode),
            was_tuple,
        )
