"""What fills the hidden pixels of a mask-based method (ViT-CX, RISE).

A mask ``M`` in [0, 1] hides pixels as ``X ⊙ M + B ⊙ (1 − M)`` with a fill ``B`` in
the model's input space, given Captum-style as ``baselines``: a number, a tensor
broadcastable to the inputs, or a name:

- ``"zero"``: 0 in the model's input space, i.e. ``X ⊙ M`` (the reference codes of
  RISE and ViT-CX). For normalised inputs 0 is the normalisation mean: mid-grey for
  mean = std = 0.5, ImageNet's mean colour for ImageNet statistics;
- ``"black"``: black pixels, ``(0 − mean) / std`` per channel, which needs the
  model's input normalisation (:func:`input_normalization`);
- ``"mean"``: the per-image, per-channel mean of the input;
- ``"blur"``: the input blurred with a Gaussian (kernel 11, σ 5, zero padding), the
  blur of the metrics' ``removal="blur"``.
"""

from __future__ import annotations

from numbers import Real
from typing import Any, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .._utils import all_finite, check_choice, check_number, gaussian_blur
from ..vit.adapter import Normalization, ViTAdapter
from ..vit.families._timm import pretrained_cfg_normalization

#: Fills known by name.
FILLS = ("zero", "black", "mean", "blur")

BaselinesType = Union[str, int, float, Tensor]


def _as_floats(value: object, name: str) -> Tuple[float, ...]:
    """Finite numbers (one per channel, or one for all), or an error naming
    ``name``."""
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name}: expected numbers, got {value!r}")
    try:
        items = list(value)  # type: ignore[call-overload]
    except TypeError:
        items = [value]
    out = tuple(check_number(name, v) for v in items)
    if not out:
        raise ValueError(f"{name}: expected one value per channel, got none")
    return out


def input_normalization(
    model: Any,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
) -> Optional[Normalization]:
    """The ``(mean, std)`` with which the model's inputs were normalised.

    An explicit ``mean``/``std`` wins; otherwise the model's adapter says what the
    model records (:attr:`captum_vit.vit.ViTAdapter.input_normalization`: timm's
    ``pretrained_cfg``; nothing for torchvision and Hugging Face models, whose
    normalisation lives in their transforms). Another callable (RISE takes any
    classifier) is asked for a timm ``pretrained_cfg`` directly. A model built from
    its class directly (e.g. the embedded default model) carries no such record:
    pass them explicitly (``captum_vit.zoo.MEAN`` / ``STD`` for the default model).

    Args:
        model: A supported ViT, its adapter, or any other model or callable.
        mean: Per-channel mean in [0, 1] pixel units (or one value for all channels).
        std: Per-channel standard deviation (positive).

    Returns:
        ``(mean, std)`` as tuples of floats, or None when neither is given nor
        recorded by the model.

    Raises:
        ValueError: only one of ``mean``/``std`` given, or a non-positive std.

    Examples::

        >>> input_normalization(timm.create_model("vit_tiny_patch16_224"))
        ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    """
    if (mean is None) != (std is None):
        raise ValueError("input_mean/input_std: give both or neither")
    if mean is None:
        if isinstance(model, ViTAdapter):
            recorded = model.input_normalization
        else:
            try:
                recorded = ViTAdapter(model).input_normalization
            except TypeError:  # not a supported ViT
                recorded = pretrained_cfg_normalization(model)
        if recorded is None:
            return None
        mean, std = recorded
    m = _as_floats(mean, "input_mean")
    s = _as_floats(std, "input_std")
    if len(m) != len(s):
        raise ValueError(
            f"input_mean/input_std: expected as many means as stds, got {len(m)} and "
            f"{len(s)}"
        )
    if min(s) <= 0:
        raise ValueError(f"input_std: expected positive values, got {s}")
    return m, s


def check_baselines(name: str, baselines: BaselinesType) -> None:
    """Early type check of a fill (the value check needs the inputs)."""
    if isinstance(baselines, str):
        check_choice(name, baselines, FILLS)
    elif isinstance(baselines, bool) or not isinstance(baselines, (Real, Tensor)):
        raise TypeError(
            f"{name}: expected a number, a tensor broadcastable to the inputs or one "
            f"of {FILLS}, got {type(baselines).__name__}"
        )
    elif not isinstance(baselines, Tensor):
        check_number(name, baselines)  # NaN / inf fills are refused


def resolve_fill(
    baselines: BaselinesType,
    images: Tensor,
    normalization: Optional[Normalization],
    name: str = "baselines",
) -> Tensor:
    """The fill ``B`` as a tensor broadcastable to ``images`` (same dtype, device).

    Args:
        baselines: A number, a tensor broadcastable to ``images`` (a (C, 1, 1)
            colour, a (1, C, H, W) image, or one (B, C, H, W) fill per sample), or
            one of ``"zero"``, ``"black"``, ``"mean"``, ``"blur"``.
        images: (B, C, H, W) inputs.
        normalization: ``(mean, std)`` of the model's inputs, needed by ``"black"``.
        name: Argument name for error messages.

    Returns:
        A tensor of rank 4 whose every dimension is 1 or the inputs' size.

    Raises:
        ValueError: an unknown name, ``"black"`` without a known normalisation, a
            tensor that does not broadcast, a number or tensor that is not finite.
        TypeError: any other kind of value.
    """
    check_baselines(name, baselines)
    b, c, h, w = images.shape
    like = dict(dtype=images.dtype, device=images.device)
    if isinstance(baselines, str):
        if baselines == "zero":
            return torch.zeros(1, 1, 1, 1, **like)
        if baselines == "mean":
            return images.mean(dim=(2, 3), keepdim=True)
        if baselines == "blur":
            return gaussian_blur(images)
        if normalization is None:
            raise ValueError(
                f"{name}: 'black' needs the model's input normalisation; the model "
                "records none (no pretrained_cfg): pass input_mean and input_std"
            )
        mean, std = normalization
        if len(mean) not in (1, c):
            raise ValueError(
                f"{name}: the normalisation has {len(mean)} channels, the inputs {c}"
            )
        m = torch.tensor(mean, **like).reshape(1, -1, 1, 1)
        s = torch.tensor(std, **like).reshape(1, -1, 1, 1)
        return -m / s
    if not isinstance(baselines, Tensor):
        return torch.full((1, 1, 1, 1), float(baselines), **like)
    if baselines.dtype == torch.bool or baselines.is_complex():
        raise TypeError(f"{name}: expected a numeric tensor, got {baselines.dtype}")
    t = baselines.detach().to(**like)
    if t.dim() > 4:
        raise ValueError(
            f"{name}: expected a tensor broadcastable to the inputs' shape "
            f"{tuple(images.shape)}, got {tuple(t.shape)}"
        )
    t = t.reshape((1,) * (4 - t.dim()) + tuple(t.shape))
    if any(s not in (1, full) for s, full in zip(t.shape, images.shape)):
        raise ValueError(
            f"{name}: shape {tuple(baselines.shape)} does not broadcast to the "
            f"inputs' shape {tuple(images.shape)}"
        )
    if not all_finite(t):
        raise ValueError(f"{name}: contains NaN or infinite values")
    return t


def fill_row(fill: Tensor, index: int) -> Tensor:
    """Sample ``index``'s fill, (C or 1, H or 1, W or 1)."""
    return fill[index] if fill.shape[0] > 1 else fill[0]


def apply_mask(x: Tensor, mask: Tensor, fill: Tensor) -> Tensor:
    """``x ⊙ M + B ⊙ (1 − M)`` (broadcasting)."""
    return x * mask + fill * (1 - mask)
