"""ViT-ReciproCAM: gradient- and attention-free saliency for ViTs (Byun & Lee, 2023)."""

from __future__ import annotations

from typing import Any, List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from captum.attr import Attribution
from captum.log import log_usage
from torch import Tensor

from .._utils import progress_bar
from ..vit import CLASS_HEAD, TOKENS, ViTAdapter, tokens_to_pixels
from ..vit.adapter import installed
from ._utils import (
    TargetType,
    check_int,
    chunks,
    evaluates_model,
    format_target,
    pack_output,
    unpack_inputs,
)

#: The 3x3 Gaussian kernel of the paper and of openvino_xai (1/4 centre, 1/8 edges,
#: 1/16 corners).
GAUSSIAN_3X3 = (
    (1 / 16.0, 1 / 8.0, 1 / 16.0),
    (1 / 8.0, 1 / 4.0, 1 / 8.0),
    (1 / 16.0, 1 / 8.0, 1 / 16.0),
)


def mosaic_weights(grid: Tuple[int, int], gaussian: bool = True) -> Tensor:
    """(N, N) weights of the N spatial variations over the N patch tokens.

    Row ``k`` keeps the 3x3 neighbourhood of patch ``k`` weighted by
    :data:`GAUSSIAN_3X3` (cut at the border of the grid, not renormalised, as
    openvino_xai) and zeroes every other patch; with ``gaussian=False`` it keeps
    patch ``k`` alone with weight 1.

    Args:
        grid: The patch grid (gh, gw); N = gh * gw, row-major.
        gaussian: The 3x3 Gaussian neighbourhood, or the patch alone.

    Returns:
        A float32 (N, N) tensor.
    """
    gh, gw = int(grid[0]), int(grid[1])
    n = gh * gw
    eye = torch.eye(n).reshape(n, 1, gh, gw)
    if not gaussian:
        return eye.reshape(n, n)
    kernel = torch.tensor(GAUSSIAN_3X3).reshape(1, 1, 3, 3)
    # the kernel is symmetric, so correlating a one-hot grid places it centred on k
    return F.conv2d(eye, kernel, padding=1).reshape(n, n)


class ViTReciproCAM(Attribution):
    r"""ViT-ReciproCAM (Byun & Lee, 2023): spatially masked token maps scored by the
    rest of the network; no gradients, no attention maps.

    Let ``z`` be the (P + N, D) token map entering block ``layer`` (P prefix tokens:
    CLS, distillation, registers; N patch tokens on a gh x gw grid). For every patch
    position ``k`` a variation keeps the 3x3 neighbourhood of ``k`` weighted by a
    Gaussian kernel (1/4 at ``k``, 1/8 at its edge neighbours, 1/16 at its corner
    neighbours; cut at the border) and zeroes every other patch token; the prefix
    tokens are kept unchanged. Block ``layer`` and every later block then run on the
    N variations, and the head's **logit** of the target class on variation ``k`` is
    the saliency of patch ``k``.

    As in openvino_xai's ``ViTReciproCAM`` (which applies the mask to both inputs of
    the target block's branches, the residual stream and the output of its
    attention-input norm), the mask multiplies the residual input of block
    ``layer`` *and* its pre-attention norm's output of the unmasked map,
    ``norm1(z)``: the norm does not see the masked tokens, so it neither undoes the
    Gaussian weights (a LayerNorm is scale-invariant per token) nor turns the zeroed
    tokens into its bias. The N variations of every image are run in batches of
    ``perturbations_per_eval`` (one forward of the remaining blocks and the head per
    batch); no gradient is taken, so the method also runs inside
    ``torch.inference_mode()``. The model runs in eval mode for the call (its modes
    are restored afterwards).

    ``layer`` counts blocks from 0, negative values from the end: ``layer=-1``
    perturbs the map entering the last block (openvino_xai's default, ``k=1``), the
    default ``layer=-2`` the map entering the block before it (openvino_xai's
    ``k=2``), running the last two blocks on the variations.

    Families: every family with a flat token sequence and a classifier head (timm
    ViT/DeiT/registers/SigLIP, Eva, BEiT, torchvision, Hugging Face ViT/DeiT/DINOv2).
    Swin is refused: its stages hold window-partitioned maps that the adapter cannot
    run from a token map.

    Args:
        model: A supported ViT with a classifier head (see
            :class:`captum_vit.vit.ViTAdapter`).
        layer: The block whose input map is perturbed (negative counts from the end).
        gaussian: The 3x3 Gaussian neighbourhood (the paper's default); False keeps
            each patch token alone (openvino_xai's ``use_gaussian=False``).

    Raises:
        TypeError: an unsupported model, a family without a flat token sequence
            (Swin) or a model without classifier head.
        ValueError: ``layer`` out of range.

    Examples::

        >>> attr = ViTReciproCAM(model).attribute(images, target=labels)
        >>> grid = captum_vit.patch_scores(attr, model)
    """

    def __init__(
        self, model: nn.Module, layer: int = -2, gaussian: bool = True
    ) -> None:
        self.adapter = ViTAdapter(model)
        self.adapter.require(TOKENS, "ViTReciproCAM")
        self.adapter.require(CLASS_HEAD, "ViTReciproCAM")
        super().__init__(self.adapter.model)
        n = self.adapter.num_layers
        self.layer = check_int("layer", layer, -n, n - 1) % n
        if not isinstance(gaussian, bool):
            raise TypeError(f"gaussian: expected a bool, got {gaussian!r}")
        self.gaussian = gaussian

    def _norm_module(self) -> nn.Module:
        return self.adapter.attention_input(self.layer)

    def variations(
        self, tokens: Tensor, normed: Tensor, weights: Tensor, lo: int, hi: int
    ) -> Tuple[Tensor, Tensor]:
        """The masked residual inputs and norm outputs of variations ``lo..hi-1``.

        Variation ``v`` is patch ``v % N`` of image ``v // N``.

        Args:
            tokens: (B, P + N, D) token maps entering block ``layer``.
            normed: (B, P + N, D) their pre-attention norm's output.
            weights: (N, P + N) token weights of the N variations of an image (1 on
                the prefix tokens, the rows of :func:`mosaic_weights` on the
                patches).
            lo: First variation.
            hi: One past the last variation.

        Returns:
            ``(tokens, normed)`` of the variations, (hi - lo, P + N, D) each.
        """
        n = weights.shape[0]
        shape = (hi - lo,) + tuple(tokens.shape[1:])
        x, nx = tokens.new_empty(shape), normed.new_empty(shape)
        w = weights.to(tokens.dtype).unsqueeze(-1)
        v = lo
        while v < hi:  # one image at a time: a broadcast product, written once
            i, k = divmod(v, n)
            m = min(hi - v, n - k)
            torch.mul(tokens[i], w[k : k + m], out=x[v - lo : v - lo + m])
            torch.mul(normed[i], w[k : k + m], out=nx[v - lo : v - lo + m])
            v += m
        return x, nx

    @log_usage()
    @evaluates_model
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor]],
        target: TargetType = None,
        perturbations_per_eval: int = 64,
        show_progress: bool = False,
        interpolate_mode: str = "nearest",
    ) -> Union[Tensor, Tuple[Tensor]]:
        r"""ViT-ReciproCAM saliency of every patch, spread over its pixels.

        Args:
            inputs: (B, C, H, W) images (or a 1-tuple of them).
            target: Class index: an int, a per-sample list or 1-D tensor; None
                explains the predicted class of each sample.
            perturbations_per_eval: Variations per forward pass of the remaining
                blocks (variations of several images share a pass).
            show_progress: A tqdm bar over the variations.
            interpolate_mode: ``"nearest"`` keeps maps patch-constant (exact for
                :func:`captum_vit.patch_scores`); ``"bilinear"`` for display.

        Returns:
            Attributions of the inputs' shape (and tuple-ness): the target logit of
            each patch's variation (signed, not normalised).

        Raises:
            ValueError: bad image size, target or ``perturbations_per_eval``.
        """
        images, was_tuple = unpack_inputs(inputs)
        grid = self.adapter.check_images(images)
        b = images.shape[0]
        if target is not None:
            t = format_target(target, b, self.adapter.num_classes)
        ppe = check_int("perturbations_per_eval", perturbations_per_eval, 1)
        if not isinstance(show_progress, bool):
            raise TypeError(f"show_progress: expected a bool, got {show_progress!r}")
        adapter, layer = self.adapter, self.layer
        norm = self._norm_module()
        with torch.no_grad():
            z = adapter.run_blocks(adapter.embed(images), 0, layer, grid=grid)
            if target is None:
                t = adapter.head(adapter.run_blocks(z, layer, grid=grid)).argmax(1)
            normed = norm(z)
            weights = mosaic_weights(grid, self.gaussian).to(z.device)
            n, p = weights.shape[0], adapter.num_prefix_tokens
            weights = torch.cat([weights.new_ones(n, p), weights], dim=1)
            t = t.to(z.device)
            scores = z.new_empty(b * n)
            current: List[Optional[Tensor]] = [None]

            def replace(module: nn.Module, args: Any, out: Any) -> Tensor:
                if current[0] is None or not isinstance(out, Tensor):
                    raise RuntimeError("ViTReciproCAM: unexpected norm call")
                if out.shape != current[0].shape:
                    raise RuntimeError(
                        "ViTReciproCAM: the block's attention-input norm ran on "
                        f"{tuple(out.shape)}, expected {tuple(current[0].shape)}"
                    )
                result, current[0] = current[0], None  # once per block call
                return result

            bar = progress_bar(
                total=b * n, desc="ViT-ReciproCAM", enabled=show_progress
            )
            hook = installed(
                lambda out: out.append(norm.register_forward_hook(replace))
            )
            try:
                with hook:
                    for lo, hi in chunks(b * n, ppe):
                        img = torch.arange(lo, hi, device=z.device) // n
                        x, current[0] = self.variations(z, normed, weights, lo, hi)
                        x = adapter.run_blocks(x, layer, layer + 1, grid=grid)
                        if current[0] is not None:
                            raise RuntimeError(
                                "ViTReciproCAM: the attention-input norm of block "
                                f"{layer} did not run"
                            )
                        logits = adapter.head(
                            adapter.run_blocks(x, layer + 1, grid=grid)
                        )
                        scores[lo:hi] = logits.gather(1, t[img][:, None])[:, 0]
                        bar.update(hi - lo)
            finally:
                bar.close()
        return pack_output(
            tokens_to_pixels(scores.reshape(b, n), grid, images, interpolate_mode),
            was_tuple,
        )
