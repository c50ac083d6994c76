"""RISE: randomized input sampling for explanation (Petsiuk, Das & Saenko, BMVC 2018).

Mask generation, as in the paper (§3.2):

1. draw N binary grids of ``s × s`` cells, each cell 1 with probability ``p``;
2. upsample every grid bilinearly to ``(s + 1)·C_H × (s + 1)·C_W`` with the cell size
   ``C = ⌈image size / s⌉``;
3. crop an image-sized window at a random shift in ``[0, C_H) × [0, C_W)``.

Each mask ``M_i`` hides pixels as ``X ⊙ M_i + B ⊙ (1 − M_i)`` (the fill ``B``, see
:mod:`captum_vit.attr._fill`) and the saliency is the Monte-Carlo estimate

``S = 1 / (N · p) · Σ_i P_t(X ⊙ M_i + B ⊙ (1 − M_i)) · M_i``

with ``P_t`` the **softmax probability** of the target class.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from captum.attr import PerturbationAttribution
from captum.log import log_usage
from torch import Tensor

from .._utils import progress_bar
from ..vit import CLASS_HEAD, ViTAdapter, is_supported_vit, logits_of
from ._fill import (
    BaselinesType,
    apply_mask,
    fill_row,
    input_normalization,
    resolve_fill,
)
from ._utils import (
    TargetType,
    as_target,
    check_int,
    check_number,
    check_seed,
    chunks,
    evaluates_model,
    format_target,
    pack_output,
    resolve_seed,
    unpack_inputs,
)


def _image_size(image_size: Sequence[int]) -> Tuple[int, int]:
    """(H, W) as two integers >= 1, or an error naming ``image_size``."""
    if isinstance(image_size, (str, bytes)) or not hasattr(image_size, "__len__"):
        raise TypeError(f"image_size: expected (H, W), got {image_size!r}")
    if len(image_size) != 2:
        raise ValueError(f"image_size: expected (H, W), got {image_size!r}")
    h, w = (check_int("image_size", v, 1) for v in image_size)
    return h, w


def rise_grids(
    n_masks: int,
    grid_size: int,
    p: float,
    image_size: Sequence[int],
    generator: torch.Generator,
) -> Tuple[Tensor, Tensor]:
    """Random binary grids and shifts of RISE masks.

    Args:
        n_masks: Number of masks N.
        grid_size: Cells per side s.
        p: Probability that a cell is 1 (kept).
        image_size: (H, W) of the images.
        generator: Source of randomness (CPU).

    Returns:
        ``(grids, shifts)``: (N, s, s) float grids of 0/1 and (N, 2) long shifts,
        row shift in ``[0, ⌈H/s⌉)`` and column shift in ``[0, ⌈W/s⌉)``.

    Examples::

        >>> grids, shifts = rise_grids(8, 7, 0.5, (224, 224), torch.Generator())
    """
    h, w = int(image_size[0]), int(image_size[1])
    ch, cw = math.ceil(h / grid_size), math.ceil(w / grid_size)
    grids = (torch.rand(n_masks, grid_size, grid_size, generator=generator) < p).float()
    rows = torch.randint(0, ch, (n_masks,), generator=generator)
    cols = torch.randint(0, cw, (n_masks,), generator=generator)
    return grids, torch.stack([rows, cols], dim=1)


def rise_masks(grids: Tensor, shifts: Tensor, image_size: Sequence[int]) -> Tensor:
    """RISE masks from their grids and shifts.

    Every grid is upsampled bilinearly (``align_corners=False``; borders repeat the
    edge cells) to ``(s + 1)·⌈H/s⌉ × (s + 1)·⌈W/s⌉`` and cropped to (H, W) at its
    shift.

    Args:
        grids: (N, s, s) grids from :func:`rise_grids`.
        shifts: (N, 2) shifts from :func:`rise_grids`.
        image_size: (H, W).

    Returns:
        (N, H, W) float masks in [0, 1].

    Examples::

        >>> masks = rise_masks(grids, shifts, (224, 224))    # (8, 224, 224)
    """
    h, w = int(image_size[0]), int(image_size[1])
    n, s, _ = grids.shape
    ch, cw = math.ceil(h / s), math.ceil(w / s)
    up = F.interpolate(
        grids[:, None].float(),
        size=((s + 1) * ch, (s + 1) * cw),
        mode="bilinear",
        align_corners=False,
    )[:, 0]
    rows = shifts[:, :1].to(up.device) + torch.arange(h, device=up.device)[None]
    cols = shifts[:, 1:].to(up.device) + torch.arange(w, device=up.device)[None]
    index = torch.arange(n, device=up.device)[:, None, None]
    return up[index, rows[:, :, None], cols[:, None, :]]


class RISE(PerturbationAttribution):
    r"""RISE (Petsiuk et al., BMVC 2018) with the paper's mask generation.

    ``n_masks`` random masks (binary ``grid_size × grid_size`` grids, cells kept with
    probability ``p``, upsampled bilinearly and shifted at random, see
    :func:`rise_masks`) are drawn from ``seed``; every image is scored with the same
    masks, so a batch equals per-sample calls. The saliency is
    ``S = Σ_i P_t(X ⊙ M_i + B ⊙ (1 − M_i)) · M_i / (N · p)`` with the **softmax
    probability** ``P_t`` of the target and the fill ``B`` (``baselines``). Forward
    passes are batched, ``perturbations_per_eval`` masked images at a time, under
    ``torch.no_grad()``; masks are generated chunk by chunk, never all at once.

    Defaults are the paper's for ImageNet: N = 4000 masks, s = 7, p = 0.5, and the
    fill of its reference code, 0 in the model's input space (``"zero"``; for
    normalised inputs that is the normalisation mean, see ``baselines``).

    Any classifier works (outputs with ``.logits``, as Hugging Face's, are
    unwrapped); a supported ViT has its images validated by its adapter, and a
    supported ViT without classifier head is refused. The model runs in eval mode
    (and eagerly, if compiled) for the call, its modes restored afterwards; no
    gradient is taken, so RISE also runs inside ``torch.inference_mode()``.

    Args:
        forward_func: The model (or a callable) mapping (B, C, H, W) images to
            (B, classes) logits (or an output with ``.logits``).
        n_masks: Number of masks N.
        grid_size: Cells per side s of the binary grids.
        p: Probability that a cell is kept.
        input_mean: Per-channel mean of the model's input normalisation, for
            ``baselines="black"`` (default: the model's timm ``pretrained_cfg``).
        input_std: Per-channel std of the normalisation (with ``input_mean``).

    Examples::

        >>> rise = RISE(model, n_masks=2000)
        >>> attr = rise.attribute(images, target=labels, seed=0)
    """

    def __init__(
        self,
        forward_func: Callable,
        n_masks: int = 4000,
        grid_size: int = 7,
        p: float = 0.5,
        input_mean: Optional[Sequence[float]] = None,
        input_std: Optional[Sequence[float]] = None,
    ) -> None:
        if not callable(forward_func):
            raise TypeError("forward_func: expected a model or a callable")
        super().__init__(forward_func)
        self.adapter = (
            ViTAdapter(forward_func) if is_supported_vit(forward_func) else None
        )
        if self.adapter is not None:
            self.adapter.require(CLASS_HEAD, type(self).__name__)
        self.n_masks = check_int("n_masks", n_masks, 1)
        self.grid_size = check_int("grid_size", grid_size, 1)
        self.p = check_number("p", p, 0.0, 1.0, low_open=True)
        self.normalization = input_normalization(
            self.adapter if self.adapter is not None else forward_func,
            input_mean,
            input_std,
        )

    def grids(self, image_size: Sequence[int], seed: int) -> Tuple[Tensor, Tensor]:
        """The (grids, shifts) of the masks for images of ``image_size``."""
        size = _image_size(image_size)
        gen = torch.Generator().manual_seed(check_seed("seed", seed))
        return rise_grids(self.n_masks, self.grid_size, self.p, size, gen)

    def masks(self, image_size: Sequence[int], seed: int) -> Tensor:
        """All (N, H, W) masks for ``seed`` (memory: N·H·W floats).

        Examples::

            >>> masks = RISE(model, n_masks=100).masks((224, 224), seed=0)
        """
        size = _image_size(image_size)
        grids, shifts = self.grids(size, seed)
        return rise_masks(grids, shifts, size)

    @log_usage()
    @evaluates_model
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor]],
        target: TargetType = None,
        perturbations_per_eval: int = 64,
        show_progress: bool = False,
        seed: Optional[int] = None,
        baselines: BaselinesType = "zero",
    ) -> Union[Tensor, Tuple[Tensor]]:
        r"""RISE saliency of every pixel.

        Args:
            inputs: (B, C, H, W) images in the model's input space (or a 1-tuple).
            target: Class index: an int, a per-sample list or 1-D tensor; None
                explains the predicted class of each sample.
            perturbations_per_eval: Masked images per forward pass.
            show_progress: Show a tqdm bar over the forward passes (off by
                default, as in Captum).
            seed: Seed of the masks (an int in ``[0, 2**64)``); None draws one from
                torch's global RNG (so ``torch.manual_seed`` reproduces it).
            baselines: Fill of the hidden pixels: ``"zero"`` (default, the
                reference code), ``"mean"``, ``"black"``, ``"blur"``, a number or
                a tensor broadcastable to the inputs (see
                :class:`captum_vit.ViTCX`).

        Returns:
            Attributions of the inputs' shape (and tuple-ness), equal across
            channels, in probability units (an unbiased estimate of
            ``E[P_t · M(u)] / p``).

        Raises:
            ValueError: bad inputs (also an empty batch), target, fill, seed or
                ``perturbations_per_eval``.
            TypeError: non-floating-point inputs (e.g. uint8 images), a target that
                is not integer-like.

        Examples::

            >>> attr = RISE(model).attribute(images, target=3, seed=0)
        """
        images, was_tuple = unpack_inputs(inputs)
        if self.adapter is not None:
            self.adapter.check_images(images)
        elif images.dim() != 4:
            raise ValueError(
                f"inputs: expected (B, C, H, W) images, got {tuple(images.shape)}"
            )
        b, _, h, w = images.shape
        tgt = None
        if target is not None and self.adapter is not None:
            tgt = format_target(target, b, self.adapter.num_classes)
        elif target is not None:  # the classes are known after the first forward
            as_target(target)
        ppe = check_int("perturbations_per_eval", perturbations_per_eval, 1)
        seed = resolve_seed(seed)
        with torch.no_grad():
            fill = resolve_fill(baselines, images, self.normalization)
            if target is None:
                preds = [
                    logits_of(self.forward_func(images[lo:hi])).argmax(dim=1)
                    for lo, hi in chunks(b, ppe)
                ]
                tgt = torch.cat(preds).cpu()
            grids, shifts = self.grids((h, w), seed)
            sal = images.new_zeros(b, h, w, dtype=torch.float32)
            bar = progress_bar(
                total=self.n_masks * b,
                desc="RISE",
                enabled=show_progress,
                unit="fwd",
            )
            try:
                for lo, hi in chunks(self.n_masks, ppe):
                    m = rise_masks(grids[lo:hi], shifts[lo:hi], (h, w)).to(images)
                    for i in range(b):
                        x = apply_mask(images[i], m[:, None], fill_row(fill, i))
                        logits = logits_of(self.forward_func(x))
                        if tgt is None:
                            tgt = format_target(target, b, logits.shape[1])
                        prob = torch.softmax(logits.float(), dim=-1)[:, int(tgt[i])]
                        sal[i] += torch.einsum("k,khw->hw", prob, m.float())
                        bar.update(hi - lo)
            finally:
                bar.close()
            sal = sal / (self.n_masks * self.p)
        out = sal[:, None].to(images.dtype).expand_as(images).contiguous()
        return pack_output(out, was_tuple)
