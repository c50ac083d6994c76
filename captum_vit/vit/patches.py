"""Moving scores between the patch grid and pixel space."""

from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .adapter import ViTAdapter

_MODES = ("nearest", "bilinear", "bicubic")


def tokens_to_pixels(
    scores: Tensor,
    grid: Sequence[int],
    like: Tensor,
    interpolate_mode: str = "nearest",
) -> Tensor:
    """Spread per-patch scores over the pixels of an image batch.

    Args:
        scores: (B, N) scores in row-major patch order, N = gh * gw.
        grid: The patch grid (gh, gw).
        like: The (B, C, H, W) inputs; the result has their shape, dtype and device.
        interpolate_mode: ``"nearest"`` (default) makes every pixel of a patch carry
            its patch's score, so :func:`patch_scores` recovers ``scores`` exactly;
            ``"bilinear"``/``"bicubic"`` give smooth maps for display.

    Returns:
        A tensor of ``like``'s shape, identical across channels.
    """
    if interpolate_mode not in _MODES:
        raise ValueError(
            f"interpolate_mode: expected one of {_MODES}, got {interpolate_mode!r}"
        )
    gh, gw = int(grid[0]), int(grid[1])
    b, c, h, w = like.shape
    maps = scores.reshape(b, 1, gh, gw).to(like.dtype)
    if interpolate_mode == "nearest":
        maps = F.interpolate(maps, size=(h, w), mode="nearest")
    else:
        maps = F.interpolate(
            maps, size=(h, w), mode=interpolate_mode, align_corners=False
        )
    return maps.expand(b, c, h, w).contiguous()


def patch_scores(attributions: Tensor, model: Union[nn.Module, ViTAdapter]) -> Tensor:
    """Recover the (B, gh, gw) patch grid from a pixel-shaped attribution.

    Each patch's value is the mean of the attribution over its pixels and channels,
    which for the patch-constant maps returned by captum-vit's token-level methods is
    exactly the token score (the mean is accumulated in float64). The result is
    detached from the autograd graph.

    Args:
        attributions: (B, C, H, W) attribution (or a 1-tuple of it).
        model: The ViT (or adapter) whose patch size defines the grid.

    Returns:
        A (B, gh, gw) tensor.

    Examples::

        >>> attr = GenAtt(model).attribute(images, target=3)
        >>> grid = patch_scores(attr, model)   # (B, 14, 14) for ViT-B/16 at 224
    """
    if isinstance(attributions, tuple):
        if len(attributions) != 1:
            raise ValueError("attributions: expected a tensor or a 1-tuple of tensors")
        attributions = attributions[0]
    if not isinstance(attributions, Tensor) or attributions.dim() != 4:
        raise ValueError(
            "attributions: expected a (B, C, H, W) tensor, got "
            + (
                str(tuple(attributions.shape))
                if isinstance(attributions, Tensor)
                else str(type(attributions))
            )
        )
    adapter = ViTAdapter.of(model)
    ph, pw = adapter.patch_size
    h, w = attributions.shape[-2:]
    if h % ph or w % pw:
        raise ValueError(
            f"attributions: spatial size {(h, w)} is not a multiple of the patch size "
            f"{(ph, pw)}"
        )
    # float64 accumulation makes the mean of a constant patch exactly its value
    x = attributions.detach().to(torch.float64).mean(dim=1, keepdim=True)
    return F.avg_pool2d(x, (ph, pw))[:, 0].to(attributions.dtype)
