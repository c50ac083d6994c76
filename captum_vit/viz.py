"""Pictures of attributions: overlays and image × method comparison grids.

Takes Captum-shaped attributions ((C, H, W) or (B, C, H, W) tensors, channels summed
for display) and images in [0, 1]. Signed maps use a diverging colormap centred at zero,
unsigned maps a sequential one; the image stays visible underneath.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Union

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import Tensor

ArrayLike = Union[Tensor, np.ndarray]


def _to_numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def _image_hwc(image: ArrayLike) -> np.ndarray:
    img = _to_numpy(image)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = img.transpose(1, 2, 0)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim not in (2, 3):
        raise ValueError(f"image: expected (C, H, W) or (H, W, C), got {img.shape}")
    return np.clip(img, 0.0, 1.0)


def _attr_hw(attribution: ArrayLike) -> np.ndarray:
    a = _to_numpy(attribution)
    if a.ndim == 3:
        a = a.sum(axis=0)
    if a.ndim != 2:
        raise ValueError(f"attribution: expected (C, H, W) or (H, W), got {a.shape}")
    return np.nan_to_num(a)


def overlay(
    image: ArrayLike,
    attribution: ArrayLike,
    ax: Optional[plt.Axes] = None,
    signed: Optional[bool] = None,
    alpha: float = 0.55,
    title: Optional[str] = None,
) -> plt.Axes:
    """Draw an attribution over its image.

    Args:
        image: (3, H, W) / (H, W, 3) image with values in [0, 1].
        attribution: (C, H, W) or (H, W) attribution of the same spatial size;
            channels are summed.
        ax: Axes to draw on (a new figure if None).
        signed: Diverging colormap (``bwr``, symmetric around 0) if True, sequential
            (``inferno``, min to max) if False; None decides from the data (any
            negative value means signed).
        alpha: Opacity of the attribution layer.
        title: Optional axes title.

    Returns:
        The axes.
    """
    img, att = _image_hwc(image), _attr_hw(attribution)
    if img.shape[:2] != att.shape:
        raise ValueError(
            f"attribution: spatial size {att.shape} does not match the image "
            f"{img.shape[:2]}"
        )
    if ax is None:
        _, ax = plt.subplots(figsize=(3, 3))
    if signed is None:
        signed = bool((att < 0).any())
    gray = img.mean(axis=-1) if img.ndim == 3 else img
    ax.imshow(gray, cmap="gray", vmin=0, vmax=1)
    if signed:
        lim = float(np.abs(att).max()) or 1.0
        ax.imshow(att, cmap="bwr", vmin=-lim, vmax=lim, alpha=alpha)
    else:
        lo, hi = float(att.min()), float(att.max())
        ax.imshow(
            att, cmap="inferno", vmin=lo, vmax=hi if hi > lo else lo + 1, alpha=alpha
        )
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)
    return ax


def comparison_grid(
    images: ArrayLike,
    attributions: Dict[str, ArrayLike],
    path: Optional[str] = None,
    row_titles: Optional[Sequence[str]] = None,
    signed: Optional[Dict[str, bool]] = None,
    cell_size: float = 1.8,
) -> plt.Figure:
    """A grid with one row per image and one column per method (plus the image).

    Args:
        images: (B, 3, H, W) images in [0, 1].
        attributions: Method name -> (B, C, H, W) attributions.
        path: If given, the figure is saved there as PNG (and closed).
        row_titles: Optional label per image (e.g. "shirt (p=0.93)").
        signed: Optional method name -> signed flag (see :func:`overlay`).
        cell_size: Inches per cell.

    Returns:
        The matplotlib figure.
    """
    imgs = _to_numpy(images)
    b = imgs.shape[0]
    names = list(attributions)
    for name in names:
        if attributions[name].shape[0] != b:
            raise ValueError(
                f"attributions[{name!r}]: expected {b} maps, got "
                f"{attributions[name].shape[0]}"
            )
    cols = 1 + len(names)
    fig, axes = plt.subplots(
        b, cols, figsize=(cell_size * cols, cell_size * b), squeeze=False
    )
    for i in range(b):
        axes[i, 0].imshow(_image_hwc(imgs[i]))
        axes[i, 0].set_xticks([])
        axes[i, 0].set_yticks([])
        if row_titles is not None:
            axes[i, 0].set_ylabel(row_titles[i], fontsize=7)
        for j, name in enumerate(names, start=1):
            overlay(
                imgs[i],
                attributions[name][i],
                ax=axes[i, j],
                signed=None if signed is None else signed.get(name),
                title=name if i == 0 else None,
            )
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig


def class_name(class_names: Sequence[str], index: int) -> str:
    """``class_names[index]``, or ``"class <index>"`` outside the list."""
    return class_names[index] if 0 <= index < len(class_names) else f"class {index}"


def image_title(
    name: str, class_names: Sequence[str], target: int, label: int = -1
) -> str:
    """A picture's row title: the image's name, its true class (``label`` >= 0) and
    the explained class, e.g. ``"x.jpg\\ntrue: cat\\n→ dog"``.

    Args:
        name: The image's name (file name or scene).
        class_names: Names of the model's classes (see
            :func:`captum_vit.explain.display_names`).
        target: The explained class.
        label: The true class, -1 when unknown.

    Returns:
        The title, one item per line.
    """
    lines = [name]
    if label >= 0:
        lines.append(f"true: {class_name(class_names, label)}")
    lines.append(f"→ {class_name(class_names, target)}")
    return "\n".join(lines)


def to_unit_range(
    images: Tensor, mean: Sequence[float], std: Sequence[float]
) -> Tensor:
    """Undo a per-channel normalisation for display: ``images * std + mean``."""
    m = torch.tensor(mean, dtype=images.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=images.dtype).view(1, -1, 1, 1)
    return (images * s + m).clamp(0, 1)
