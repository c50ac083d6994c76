"""Input helpers shared by the attribution methods and the metrics.

Kept here rather than imported from Captum's private modules, which change between
releases.
"""

from __future__ import annotations

from typing import Any, List, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

TargetType = Union[None, int, Sequence[int], Tensor]

#: Gaussian blur baseline (Petsiuk et al. 2018; TIS): kernel size and sigma.
BLUR_KERNEL, BLUR_SIGMA = 11, 5.0


def unpack_inputs(inputs: Union[Tensor, Tuple[Tensor, ...]]) -> Tuple[Tensor, bool]:
    """Accept a tensor or a 1-tuple of tensors (Captum's tuple/tensor symmetry).

    Returns:
        ``(images, was_tuple)``.
    """
    if isinstance(inputs, tuple):
        if len(inputs) != 1 or not isinstance(inputs[0], Tensor):
            raise ValueError(
                "inputs: ViT methods take one image tensor (or a 1-tuple of it); got a "
                f"tuple of {len(inputs)} items"
            )
        return inputs[0], True
    if not isinstance(inputs, Tensor):
        raise TypeError(f"inputs: expected a (B, C, H, W) tensor, got {type(inputs)}")
    return inputs, False


def pack_output(out: Tensor, was_tuple: bool) -> Union[Tensor, Tuple[Tensor]]:
    """Return ``out`` in the same tuple-ness as the inputs."""
    return (out,) if was_tuple else out


def format_target(
    target: TargetType, batch: int, num_classes: int, name: str = "target"
) -> Tensor:
    """Turn a Captum-style class target into a (B,) long tensor and validate it.

    Args:
        target: An int (same class for every sample), a per-sample list/tuple or 1-D
            tensor of ints.
        batch: Batch size B.
        num_classes: Number of output classes.
        name: Argument name used in error messages.

    Returns:
        A (B,) long tensor on the CPU.

    Raises:
        TypeError: for tuples of indices into multi-dimensional outputs or other types.
        ValueError: wrong length, or a class index outside ``[0, num_classes)``.
    """
    if isinstance(target, bool):
        raise TypeError(f"{name}: expected an int class index, got a bool")
    if isinstance(target, int):
        t = torch.full((batch,), target, dtype=torch.long)
    elif isinstance(target, Tensor):
        if (
            target.is_floating_point()
            or target.is_complex()
            or target.dtype == torch.bool
        ):
            raise TypeError(
                f"{name}: expected an integer tensor of class indices, got "
                f"{target.dtype}"
            )
        if target.dim() == 0:
            t = target.reshape(1).expand(batch).long().cpu()
        elif target.dim() == 1:
            t = target.long().cpu()
        else:
            raise ValueError(
                f"{name}: expected a scalar or 1-D integer tensor of class indices, "
                f"got shape {tuple(target.shape)} dtype {target.dtype}"
            )
    elif isinstance(target, (list, tuple)):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in target):
            raise TypeError(
                f"{name}: expected an int or a per-sample list of int class indices "
                "(tuples indexing multi-dimensional outputs are not supported)"
            )
        t = torch.tensor(list(target), dtype=torch.long)
    else:
        raise TypeError(f"{name}: expected int, list or tensor, got {type(target)}")
    if t.numel() != batch:
        raise ValueError(
            f"{name}: expected {batch} per-sample targets, got {t.numel()}"
        )
    if batch and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        raise ValueError(
            f"{name}: class indices must lie in [0, {num_classes}), got "
            f"{t.tolist() if batch <= 16 else (int(t.min()), int(t.max()))}"
        )
    return t


def check_choice(name: str, value: Any, choices: List[Any]) -> Any:
    """Raise a ValueError naming ``name`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")
    return value


def gaussian_blur(
    images: Tensor, kernel: int = BLUR_KERNEL, sigma: float = BLUR_SIGMA
) -> Tensor:
    """Depthwise Gaussian blur with zero padding (as the RISE reference code).

    Shared by the metrics' ``"blur"`` baseline and the ``"blur"`` fill of the
    mask-based attribution methods, so both hide pixels the same way.

    Args:
        images: (B, C, H, W) batch.
        kernel: Odd kernel size (default 11).
        sigma: Standard deviation of the Gaussian in pixels (default 5).

    Returns:
        The blurred batch, same shape, dtype and device.
    """
    r = torch.arange(kernel, dtype=images.dtype, device=images.device) - kernel // 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    k2 = g[:, None] * g[None, :]
    k2 = k2 / k2.sum()
    c = images.shape[1]
    weight = k2.expand(c, 1, kernel, kernel)
    return F.conv2d(images, weight, padding=kernel // 2, groups=c)
