"""LeGrad: layer-wise gradients of attention maps (Bousselham et al., ICCV 2025)."""

from __future__ import annotations

from typing import Dict, List, Tuple, Union

import torch
import torch.nn as nn
from captum.attr import GradientAttribution
from captum.log import log_usage
from torch import Tensor

from ..vit import CLASS_HEAD, RECORDED_ATTENTION, TOKENS, ViTAdapter, tokens_to_pixels
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

_POOLS = ["head", "mean"]


class LeGrad(GradientAttribution):
    r"""LeGrad (Bousselham et al., ICCV 2025): the positive gradient of each layer's
    own prediction with respect to that layer's attention map.

    For every block ``l`` from ``layer_index`` to the last, the head is applied to
    the block's output tokens ``z_l`` (the final norm, the model's pooling and the
    classifier, as the paper reads intermediate tokens through the model's own
    output layers), giving the layer's prediction ``s_l``: its **logit** of the
    target class. Then

    ``E_l = mean_heads mean_rows ReLU(∂s_l / ∂A_l)``,   ``E = Σ_l E_l``,

    with ``A_l`` block ``l``'s (heads, T, T) post-softmax attention; the rows
    (queries) averaged are all T tokens, prefix tokens included, and the columns
    kept are the patch tokens. ``∂s_l / ∂A_l`` is the gradient of block ``l``'s own
    prediction only: later blocks' predictions do not flow back into ``A_l``. The
    map is returned as the sum over layers, without the authors' final min-max
    rescaling to [0, 1] (a per-image affine map that changes no ranking or
    correlation; apply it for display).

    Attention-pooled heads (timm ``global_pool="map"``, SigLIP) read the tokens
    through the pool's own attention, and so does LeGrad, as the authors' SigLIP
    code: ``E_l`` is then the positive gradient of ``s_l`` with respect to the
    pool's attention over the tokens (when the pool reads ``z_l``), averaged over
    heads and latent queries.

    ``intermediate_pool="mean"`` reproduces the authors' OpenCLIP code, which pools
    every layer's tokens by their mean over all tokens (CLS included) before the
    final norm and projection, also for the last layer; the default ``"head"`` uses
    the model's own pooling (the CLS token of a CLS model).

    ``layer_index`` is the first block used, counted from the end when negative, as
    in the authors' code (``-2``: the last two blocks; ``0``: every block). Cost:
    one forward (the blocks before ``layer_index`` without autograd), the head once
    per chosen layer, and one backward through the chosen blocks only; no parameter
    ``.grad`` is written. The model runs in eval mode (and eagerly, if compiled)
    for the call, its modes restored afterwards. LeGrad needs autograd: it cannot
    run inside ``torch.inference_mode()`` (``torch.no_grad()`` around the call is
    fine). Image–text models wrapped in ``ZeroShotClassifier`` are explained
    through the same adapter protocol, the target being the prompt index.

    Args:
        model: A supported ViT whose family records attention (see
            :class:`captum_vit.vit.ViTAdapter`), with a classifier head.
        layer_index: First block used (negative counts from the end).
        intermediate_pool: ``"head"`` (the model's own pooling) or ``"mean"`` (the
            mean of all tokens, as the authors' OpenCLIP code).

    Raises:
        TypeError: an unsupported model, a family without recorded attention (Swin)
            or a model without classifier head.
        ValueError: ``layer_index`` out of range.

    Examples::

        >>> attr = LeGrad(model).attribute(images, target=labels)
        >>> grid = captum_vit.patch_scores(attr, model)
    """

    def __init__(
        self,
        model: nn.Module,
        layer_index: int = -2,
        intermediate_pool: str = "head",
    ) -> None:
        self.adapter = ViTAdapter(model)
        self.adapter.require(RECORDED_ATTENTION, "LeGrad")
        self.adapter.require(TOKENS, "LeGrad")
        self.adapter.require(CLASS_HEAD, "LeGrad")
        super().__init__(self.adapter.model)
        n = self.adapter.num_layers
        self.layer_index = check_int("layer_index", layer_index, -n, n - 1)
        self.start = self.layer_index % n
        self.intermediate_pool = check_choice(
            "intermediate_pool", intermediate_pool, _POOLS
        )

    def _layer_head(self, tokens: Tensor) -> Tensor:
        """The head on one layer's output tokens (mean-pooled first if asked)."""
        if self.intermediate_pool == "mean":
            tokens = tokens.mean(dim=1, keepdim=True).expand_as(tokens)
        return self.adapter.head(tokens)

    @log_usage()
    @evaluates_model
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor]],
        target: TargetType = None,
        interpolate_mode: str = "nearest",
    ) -> Union[Tensor, Tuple[Tensor]]:
        r"""LeGrad relevance of every patch, spread over its pixels.

        Args:
            inputs: (B, C, H, W) images (or a 1-tuple of them).
            target: Class index: an int, a per-sample list or 1-D tensor; None
                explains the predicted class of each sample (the model's output).
            interpolate_mode: ``"nearest"`` keeps maps patch-constant (exact for
                :func:`captum_vit.patch_scores`); ``"bilinear"`` for display.

        Returns:
            Attributions of the inputs' shape (and tuple-ness), non-negative.

        Raises:
            ValueError: bad image size or target.
            RuntimeError: inside ``torch.inference_mode()``.
        """
        images, was_tuple = unpack_inputs(inputs)
        grid = self.adapter.check_images(images)
        require_autograd("LeGrad")
        b = images.shape[0]
        if target is not None:
            t = format_target(target, b, self.adapter.num_classes)
        adapter, start, num = self.adapter, self.start, self.adapter.num_layers
        layers = list(range(start, num))
        block_attn: Dict[int, Tensor] = {}
        pool_attn: List[Tensor] = []
        on_pool = pool_attn.append if adapter.pool == "map" else None
        with torch.no_grad():
            z = adapter.run_blocks(adapter.embed(images), 0, start, grid=grid)
        scores: List[Tensor] = []
        with torch.enable_grad(), adapter.attention_probes(
            layers, block_attn.__setitem__, on_pool
        ):
            for layer in layers:
                # a fresh leaf per block: s_l reaches A_l only through block l
                x = z.detach().requires_grad_(True)
                z = adapter.run_blocks(x, layer, layer + 1, grid=grid)
                scores.append(self._layer_head(z))
        with torch.enable_grad():
            if target is None:  # the model's own prediction (the last layer's)
                if self.intermediate_pool == "head":
                    last = scores[-1].detach()
                else:
                    with torch.no_grad():
                        last = adapter.head(z)
                t = last.argmax(dim=1)
            t = t.to(z.device)
            objective = sum(s.gather(1, t[:, None]).sum() for s in scores)
            wanted = (
                pool_attn if on_pool is not None else [block_attn[i] for i in layers]
            )
            if len(wanted) != len(layers):
                raise RuntimeError(
                    f"LeGrad: recorded {len(wanted)} attention maps for "
                    f"{len(layers)} layers"
                )
            grads = torch.autograd.grad(objective, wanted)
        p = adapter.num_prefix_tokens
        total = 0.0
        for g in grads:
            g = g.clamp(min=0).mean(dim=1).mean(dim=1)  # heads, then rows (queries)
            if on_pool is not None:  # the pool skips its first pool_offset tokens
                g = torch.cat([g.new_zeros(b, adapter.pool_offset), g], dim=1)
            total = total + g[:, p:]
        scores_map = total.detach()
        return pack_output(
            tokens_to_pixels(scores_map, grid, images, interpolate_mode), was_tuple
        )
