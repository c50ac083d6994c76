"""The grid pointing game (Böhle et al., CVPR 2021, B-cos networks / CoDA-Nets;
Rao et al., CVPR 2022): n x n grids of images of distinct classes, each grid
explained for the class of one cell, scored by the fraction of the positive
attribution that falls inside that cell.

:func:`make_grid` tiles images into grids at a given size (the model's input size);
:func:`grid_cell_masks` gives a cell's pixels; :func:`grid_pointing_game` scores the
maps. Choosing images of distinct classes from a labelled data set is the job's
(:class:`captum_vit.data.GridDataset`).

Cell convention: cell ``k`` of an n x n grid is row ``k // n``, column ``k % n``
(row-major); along a side of S pixels the cells' edges are ``floor(i * S / n)`` for
i = 0..n, so cells of a side divisible by n are equal.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .._utils import check_batch, check_int
from . import _core
from ._localisation import _image_size, _maps, energy_share


def grid_edges(size: int, n: int) -> List[int]:
    """The n + 1 cell edges along a side of ``size`` pixels: ``floor(i * size / n)``."""
    return [i * int(size) // int(n) for i in range(int(n) + 1)]


def make_grid(
    images: Tensor, grid: int = 2, size: Optional[Sequence[int]] = None
) -> Tensor:
    """Tile images into n x n grids at ``size``.

    Each image is shrunk to its cell by area averaging (every cell pixel the mean of
    the image pixels it covers: on normalised images it equals normalising the
    shrunk image; a cell larger than the image is filled by bilinear upsampling). The
    grid of a (B, C, H, W) model input of size (H, W) holds n^2 images each shrunk by
    n, so the grid is the model's input size, as the issue's protocol (Böhle et al.
    use grids of full-size images instead, twice the input side).

    Args:
        images: (B, n*n, C, H, W) (B grids, their cells row-major) or (n*n, C, H, W)
            (one grid).
        grid: n, the cells per side (default 2).
        size: (H, W) of the grids (default: the images' own size).

    Returns:
        (B, C, H, W) grids (B = 1 for a 4-D ``images``).

    Examples::

        >>> from captum_vit.metrics import make_grid
        >>> x = make_grid(torch.stack([a, b, c, d]), grid=2)   # (1, 3, H, W)
    """
    n = check_int("grid", grid, 2)
    imgs = _core.unwrap(images, "images")
    if imgs.dim() == 4:
        imgs = imgs[None]
    if imgs.dim() != 5 or imgs.shape[1] != n * n:
        raise ValueError(
            f"images: expected (B, {n * n}, C, H, W) or ({n * n}, C, H, W) for a "
            f"{n} x {n} grid, got shape {tuple(images.shape)}"
        )
    check_batch("images", imgs)
    if not imgs.is_floating_point():
        raise TypeError(f"images: expected floating-point images, got {imgs.dtype}")
    b, _, c, h, w = imgs.shape
    hh, ww = _image_size(size) if size is not None else (h, w)
    if hh < n or ww < n:
        raise ValueError(f"size: {(hh, ww)} is smaller than the {n} x {n} grid")
    rows, cols = grid_edges(hh, n), grid_edges(ww, n)
    out = imgs.new_zeros(b, c, hh, ww)
    for k in range(n * n):
        r, q = divmod(k, n)
        ch, cw = rows[r + 1] - rows[r], cols[q + 1] - cols[q]
        cell = imgs[:, k]
        if (ch, cw) != (h, w):
            shrink = ch <= h and cw <= w
            cell = F.interpolate(
                cell,
                size=(ch, cw),
                mode="area" if shrink else "bilinear",
                **({} if shrink else {"align_corners": False}),
            )
        out[:, :, rows[r] : rows[r + 1], cols[q] : cols[q + 1]] = cell
    return out


def _cells(cells: Any, batch: int, n: int) -> Tensor:
    """``cells`` as a (B,) long tensor of cell indices in 0..n*n - 1."""
    if isinstance(cells, bool):
        raise TypeError(f"cells: expected cell indices, got {cells!r}")
    if isinstance(cells, int):
        t = torch.full((batch,), cells, dtype=torch.long)
    else:
        try:
            t = torch.as_tensor(cells)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"cells: expected cell indices, got {cells!r}") from None
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"cells: expected integer cell indices, got {t.dtype}")
        t = t.long().flatten().cpu()
        if t.numel() == 1:
            t = t.expand(batch)
        if t.numel() != batch:
            raise ValueError(f"cells: expected {batch} cell indices, got {t.numel()}")
    if bool(((t < 0) | (t >= n * n)).any()):
        raise ValueError(
            f"cells: expected indices in 0..{n * n - 1} of a {n} x {n} grid, got "
            f"{t.tolist()}"
        )
    return t


def grid_cell_masks(cells: Any, grid: int, size: Sequence[int]) -> Tensor:
    """(B, H, W) bool masks of the given cells (row-major indices) of an n x n grid
    of ``size`` (H, W); ``cells`` is an int or one index per sample."""
    n = check_int("grid", grid, 2)
    h, w = _image_size(size)
    batch = 1 if isinstance(cells, int) else int(torch.as_tensor(cells).numel())
    c = _cells(cells, batch, n)
    rows, cols = grid_edges(h, n), grid_edges(w, n)
    out = torch.zeros(c.numel(), h, w, dtype=torch.bool)
    for i, k in enumerate(c.tolist()):
        r, q = divmod(k, n)
        out[i, rows[r] : rows[r + 1], cols[q] : cols[q + 1]] = True
    return out


def grid_pointing_game(
    attributions: Tensor,
    cells: Any,
    grid: int = 2,
    *,
    image_size: Optional[Sequence[int]] = None,
    interpolate_mode: str = "nearest",
) -> Tensor:
    """Grid pointing game (Böhle et al. 2021; Rao et al. 2022): the fraction of the
    positive attribution that falls inside the explained image's cell of an n x n
    grid of images of distinct classes.

    ``sum_{p in cell} max(a_p, 0) / sum_p max(a_p, 0)``; a map without positive
    values scores 0. A class-specific map scores 1 (all evidence on the explained
    image); a map that ignores the class scores about 1 / n^2.

    Args:
        attributions: (B, C, H, W) (channels summed), (B, H, W), or a lower-resolution
            (B, h, w) map such as a patch grid: scored at its own resolution, or
            upsampled to ``image_size`` (needed when h or w is not a multiple of n,
            so that the cells' edges fall where they do in the image).
        cells: The explained cell of each grid (row-major index, an int or one per
            sample).
        grid: n, the cells per side (default 2).
        image_size: (H, W) of the grid images, to score the map at that size.
        interpolate_mode: ``"nearest"`` (default) or ``"bilinear"`` upsampling.

    Returns:
        (B,) fractions in [0, 1] (higher is better).

    Examples::

        >>> from captum_vit.metrics import grid_pointing_game, make_grid
        >>> x = make_grid(cells_images, grid=2)            # (B, 3, H, W)
        >>> attr = GenAtt(model).attribute(x, target=labels_of_cell_0)
        >>> grid_pointing_game(attr, cells=0, grid=2).mean()
    """
    n = check_int("grid", grid, 2)
    attr = check_batch("attributions", _core.unwrap(attributions, "attributions"))
    b = attr.shape[0]
    c = _cells(cells, b, n)
    size: Tuple[int, int]
    if image_size is not None:
        size = _image_size(image_size)
    else:
        size = (int(attr.shape[-2]), int(attr.shape[-1]))
    if size[0] < n or size[1] < n:
        raise ValueError(
            f"attributions: a {size[0]} x {size[1]} map cannot hold a {n} x {n} "
            "grid; pass image_size"
        )
    maps = _maps(attr, size, interpolate_mode)
    masks = grid_cell_masks(c, n, size).to(maps.device)
    return energy_share(maps, masks).float()
