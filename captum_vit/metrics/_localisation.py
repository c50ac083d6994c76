"""Localisation against ground truth: pointing game, energy-based pointing game,
segmentation AP and F1, mIoU, pixel accuracy and the IoU of the box around the
thresholded map.

These metrics need no model: they compare an attribution map with ground-truth boxes
or masks. Maps are brought to the ground truth's resolution first (channels summed;
lower-resolution maps such as a (B, gh, gw) patch grid are upsampled, nearest by
default, as SkipPLUS does for token maps).

Box convention: ``[x1, y1, x2, y2]`` in pixels, x along the width; a pixel (row r,
column c) is inside when its centre ``(c + 0.5, r + 0.5)`` lies in the box, i.e.
``x1 <= c < x2`` and ``y1 <= r < y2`` for integer coordinates.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .._utils import (
    all_finite,
    check_batch,
    check_choice,
    check_int,
    check_number,
    check_seed,
)
from . import _core

BoxesType = Union[Tensor, Sequence[Any]]
_TIES = ("any", "all", "random", "first")


# ------------------------------------------------------------------- inputs
def _size_of(attributions: Tensor) -> Tuple[int, int]:
    return int(attributions.shape[-2]), int(attributions.shape[-1])


def _maps(attributions: Any, size: Tuple[int, int], interpolate_mode: str) -> Tensor:
    """(B, H, W) float maps at ``size``; channels summed."""
    # checked even when no resampling is needed: an unused argument is still checked
    check_choice("interpolate_mode", interpolate_mode, ("nearest", "bilinear"))
    attr = _core.unwrap(attributions, "attributions").detach()
    if attr.dim() == 4:
        attr = attr.sum(dim=1)
    elif attr.dim() != 3:
        raise ValueError(
            "attributions: expected (B, C, H, W), (B, H, W) or a (B, gh, gw) grid, got "
            f"shape {tuple(attr.shape)}"
        )
    attr = attr.float()
    if not all_finite(attr):
        raise ValueError("attributions: contains NaN or infinite values")
    if _size_of(attr) != tuple(size):
        kw = {} if interpolate_mode == "nearest" else {"align_corners": False}
        attr = F.interpolate(attr[:, None], size=size, mode=interpolate_mode, **kw)[
            :, 0
        ]
    return attr


def _format_boxes(boxes: BoxesType, batch: int, size: Tuple[int, int]) -> List[Tensor]:
    """Per-sample (K, 4) float boxes, validated against the image size."""
    if isinstance(boxes, Tensor):
        if boxes.dim() == 2 and boxes.shape[-1] == 4:
            per = [boxes[i : i + 1] for i in range(boxes.shape[0])]
        elif boxes.dim() == 3 and boxes.shape[-1] == 4:
            per = [boxes[i] for i in range(boxes.shape[0])]
        else:
            raise ValueError(
                "boxes: expected a (B, 4) or (B, K, 4) tensor of [x1, y1, x2, y2], got "
                f"shape {tuple(boxes.shape)}"
            )
    elif isinstance(boxes, (list, tuple)):
        per = []
        for item in boxes:
            try:
                t = torch.as_tensor(item, dtype=torch.float64)
            except (TypeError, ValueError, RuntimeError):
                raise TypeError(
                    f"boxes: expected numeric [x1, y1, x2, y2] boxes, got {item!r}"
                ) from None
            if t.dim() == 1:
                t = t[None]
            if t.dim() != 2 or t.shape[-1] != 4:
                raise ValueError(
                    "boxes: every sample needs a (4,) box or a (K, 4) array of "
                    f"[x1, y1, x2, y2], got shape {tuple(t.shape)}"
                )
            per.append(t)
    else:
        raise TypeError(
            "boxes: expected a tensor (B, 4) / (B, K, 4) or a list of per-sample boxes"
        )
    if len(per) != batch:
        raise ValueError(f"boxes: expected boxes for {batch} samples, got {len(per)}")
    h, w = size
    out = []
    for i, t in enumerate(per):
        t = t.double()
        if t.shape[0] == 0:
            raise ValueError(f"boxes: sample {i} has no box")
        if not all_finite(t):
            raise ValueError(f"boxes: sample {i} has NaN or infinite coordinates")
        x1, y1, x2, y2 = t.unbind(-1)
        bad = (x1 < 0) | (y1 < 0) | (x2 > w) | (y2 > h)
        if bool(bad.any()):
            raise ValueError(
                f"boxes: sample {i} has a box outside the {h}x{w} image: "
                f"{t[bad][0].tolist()}"
            )
        if bool(((x2 <= x1) | (y2 <= y1)).any()):
            raise ValueError(
                f"boxes: sample {i} has an empty box (expected x2 > x1 and y2 > y1)"
            )
        out.append(t)
    return out


def _box_masks(boxes: List[Tensor], size: Tuple[int, int], device) -> Tensor:
    """Union of each sample's boxes as a (B, H, W) bool mask (pixel-centre rule)."""
    h, w = size
    rc = torch.arange(h, dtype=torch.float64) + 0.5
    cc = torch.arange(w, dtype=torch.float64) + 0.5
    masks = torch.zeros(len(boxes), h, w, dtype=torch.bool)
    for i, t in enumerate(boxes):
        for x1, y1, x2, y2 in t.tolist():
            rows = (rc >= y1) & (rc <= y2)
            cols = (cc >= x1) & (cc <= x2)
            masks[i] |= rows[:, None] & cols[None, :]
    return masks.to(device)


def _image_size(image_size: Any) -> Tuple[int, int]:
    """(H, W) as two positive ints."""
    if isinstance(image_size, (str, bytes)) or not hasattr(image_size, "__len__"):
        raise TypeError(f"image_size: expected (H, W), got {image_size!r}")
    if len(image_size) != 2:
        raise ValueError(f"image_size: expected (H, W), got {image_size!r}")
    h, w = (check_int("image_size", v, 1) for v in image_size)
    return h, w


def _ground_truth(
    attributions: Any,
    boxes: Optional[BoxesType],
    masks: Optional[Tensor],
    image_size: Optional[Sequence[int]],
    need_boxes: bool = False,
) -> Tuple[Tensor, Optional[List[Tensor]], Tuple[int, int]]:
    """Ground-truth mask (B, H, W) bool, the boxes (if given), and (H, W)."""
    attr = check_batch("attributions", _core.unwrap(attributions, "attributions"))
    batch = attr.shape[0]
    if (boxes is None) == (masks is None) and not need_boxes:
        raise ValueError("boxes/masks: give exactly one of boxes and masks")
    if need_boxes and boxes is None:
        raise ValueError("boxes: this metric needs ground-truth boxes")
    if masks is not None:
        m = _core.unwrap(masks, "masks")
        if m.dim() == 4 and m.shape[1] == 1:
            m = m[:, 0]
        if m.dim() != 3 or m.shape[0] != batch:
            raise ValueError(
                f"masks: expected a (B, H, W) mask for B = {batch}, got shape "
                f"{tuple(m.shape)}"
            )
        if m.dtype != torch.bool:
            if not bool(((m == 0) | (m == 1)).all()):
                raise ValueError("masks: expected a boolean or 0/1 mask")
            m = m != 0
        size = (int(m.shape[1]), int(m.shape[2]))
        if image_size is not None and _image_size(image_size) != size:
            raise ValueError(
                f"image_size: {tuple(image_size)} differs from masks {size}"
            )
        gt = m.to(attr.device)
        box_list = None
        if boxes is not None:
            box_list = _format_boxes(boxes, batch, size)
    else:
        size = _image_size(image_size) if image_size is not None else _size_of(attr)
        box_list = _format_boxes(boxes, batch, size)
        gt = _box_masks(box_list, size, attr.device)
    if not bool(gt.flatten(1).any(dim=1).all()):
        raise ValueError(
            "masks: every sample needs at least one ground-truth pixel (empty mask)"
        )
    return gt, box_list, size


def _normalise(maps: Tensor) -> Tensor:
    """Per-sample min-max normalisation to [0, 1]; a constant map becomes zeros."""
    flat = maps.flatten(1)
    lo = flat.min(dim=1).values[:, None, None]
    hi = flat.max(dim=1).values[:, None, None]
    span = hi - lo
    return torch.where(span > 0, (maps - lo) / torch.where(span > 0, span, 1.0), 0.0)


def _binarise(maps: Tensor, threshold: Union[str, float]) -> Tensor:
    norm = _normalise(maps)
    if isinstance(threshold, str):
        check_choice("threshold", threshold, ("mean",))
        t = norm.flatten(1).mean(dim=1)[:, None, None]
    else:
        t = check_number("threshold", threshold, 0.0, 1.0)
    return norm > t


# ------------------------------------------------------------------ metrics
def pointing_game(
    attributions: Tensor,
    boxes: Optional[BoxesType] = None,
    masks: Optional[Tensor] = None,
    *,
    tolerance: float = 0.0,
    max_box_fraction: Optional[float] = None,
    ties: str = "any",
    image_size: Optional[Sequence[int]] = None,
    interpolate_mode: str = "nearest",
    seed: int = 0,
) -> Tensor:
    """Pointing game (Zhang et al., ECCV 2016 / IJCV 2018).

    A hit when the maximum of the attribution map lies inside the ground truth (any
    of a sample's boxes, or the mask), or within ``tolerance`` pixels of it (Zhang et
    al. use 15 pixels). ViT-CX (Xie et al. 2023) and TIS (Englebert et al. 2023) skip
    images whose ground truth covers more than half of the image:
    ``max_box_fraction=0.5``. Accuracy over a dataset is ``torch.nanmean(result)``.

    **Protocols.** The papers (Zhang et al.; ViT-CX §4: "if the pixel with the
    highest saliency value falls inside the box, it is considered a hit") point with
    *one* pixel of the map at the image's resolution: ``ties="first"`` (the first
    maximum in row-major order, what the reference codes' ``argmax`` picks) or
    ``ties="random"`` (one maximum drawn with ``seed``), with ``tolerance=15`` for
    Zhang et al.'s 15-pixel margin. The default ``ties="any"`` is the patch-level
    variant: a patch-constant map scores a hit when any pixel of its top patch
    hits, which favours coarse maps over pixel-level ones.

    Args:
        attributions: (B, C, H, W) (channels summed), (B, H, W), or a lower-resolution
            (B, h, w) map such as a patch grid (upsampled to the ground truth).
        boxes: Ground-truth boxes ``[x1, y1, x2, y2]`` in pixels: a (B, 4) or
            (B, K, 4) tensor or a per-sample list of (4,) / (K, 4) arrays.
        masks: Alternatively, (B, H, W) boolean ground-truth masks.
        tolerance: Hit radius in pixels around the ground truth (Euclidean).
        max_box_fraction: Skip (NaN) samples whose ground-truth area (union of the
            boxes, or the mask) exceeds this fraction of the image.
        ties: When several pixels share the maximum (e.g. patch-constant maps):
            ``"any"`` (default; hit if any of them hits, as Quantus), ``"all"``,
            ``"first"`` (the first of them in row-major order, as ``argmax``) or
            ``"random"`` (one of them drawn with ``seed``, the same stream for
            every sample). ``"first"`` and ``"random"`` point with one pixel, as
            the papers.
        image_size: (H, W) of the images when only boxes are given and the map is
            not at image resolution.
        interpolate_mode: ``"nearest"`` (default) or ``"bilinear"`` upsampling.
        seed: Seed for ``ties="random"``.

    Returns:
        (B,) float: 1.0 hit, 0.0 miss, NaN for skipped samples (only with
        ``max_box_fraction``).

    Examples::

        >>> from captum_vit.metrics import pointing_game
        >>> hits = pointing_game(attr, boxes=[[10, 20, 120, 200]] * len(attr),
        ...                      max_box_fraction=0.5)
        >>> torch.nanmean(hits)
    """
    check_choice("ties", ties, _TIES)
    seed = check_seed("seed", seed)
    tolerance = check_number("tolerance", tolerance, 0.0)
    if max_box_fraction is not None:
        max_box_fraction = check_number(
            "max_box_fraction", max_box_fraction, 0.0, 1.0, low_open=True
        )
    gt, _, size = _ground_truth(attributions, boxes, masks, image_size)
    maps = _maps(attributions, size, interpolate_mode)
    b = maps.shape[0]
    reach = gt
    r = int(tolerance)
    if r > 0:
        k = torch.arange(-r, r + 1, dtype=torch.float32)
        disk = ((k[:, None] ** 2 + k[None, :] ** 2) <= float(tolerance) ** 2).float()
        reach = (
            F.conv2d(gt[:, None].float(), disk[None, None].to(gt.device), padding=r)[
                :, 0
            ]
            > 0
        )
    is_max = maps == maps.flatten(1).max(dim=1).values[:, None, None]
    hits_at_max = (is_max & reach).flatten(1).sum(dim=1)
    n_max = is_max.flatten(1).sum(dim=1)
    if ties == "any":
        hit = hits_at_max > 0
    elif ties == "all":
        hit = hits_at_max == n_max
    elif ties == "first":
        first = is_max.flatten(1).to(torch.uint8).argmax(dim=1)  # first True
        hit = reach.flatten(1).gather(1, first[:, None])[:, 0]
    else:
        hit = torch.zeros(b, dtype=torch.bool, device=maps.device)
        for i in range(b):
            where = torch.nonzero(is_max[i].flatten()).flatten()
            j = torch.randint(where.numel(), (1,), generator=_core.generator(seed, 31))
            hit[i] = reach[i].flatten()[where[int(j)]]
    out = hit.float()
    if max_box_fraction is not None:
        frac = gt.flatten(1).float().mean(dim=1)
        out = torch.where(frac > float(max_box_fraction), float("nan"), out)
    return out


def _average_precision(scores: Tensor, labels: Tensor) -> Tensor:
    """AP of one ranking (scikit-learn's step-wise definition, ties grouped)."""
    order = torch.argsort(scores, descending=True, stable=True)
    s = scores[order].double()
    y = labels[order].double()
    tp = torch.cumsum(y, 0)
    last = torch.ones_like(s, dtype=torch.bool)
    last[:-1] = s[1:] != s[:-1]  # end of each group of tied scores
    idx = torch.nonzero(last).flatten()
    tp = tp[idx]
    precision = tp / (idx + 1).double()
    recall = tp / tp[-1]
    recall_prev = torch.cat([recall.new_zeros(1), recall[:-1]])
    return ((recall - recall_prev) * precision).sum()


def segmentation_ap(
    attributions: Tensor,
    masks: Optional[Tensor] = None,
    boxes: Optional[BoxesType] = None,
    *,
    include_background: bool = True,
    image_size: Optional[Sequence[int]] = None,
    interpolate_mode: str = "nearest",
) -> Tensor:
    """Average precision of the map as a soft segmentation (Chefer et al., CVPR 2021;
    SkipPLUS, Mehri et al. 2024).

    The map is min-max normalised to ``r`` in [0, 1]. With ``include_background``
    (default, the protocol of Chefer et al.'s ImageNet-segmentation evaluation, which
    SkipPLUS follows) the two-class prediction ``(1 - r, r)`` is scored against the
    one-hot (background, foreground) ground truth as one ranking; otherwise ``r``
    alone is ranked against the foreground mask. AP is scikit-learn's
    ``average_precision_score`` (step-wise, tied scores grouped).

    Args:
        attributions: (B, C, H, W), (B, H, W) or a lower-resolution (B, h, w) map.
        masks: (B, H, W) boolean ground-truth segmentation of the target class.
        boxes: Alternatively, boxes rasterised to masks.
        include_background: Score the background channel too (Chefer protocol).
        image_size: (H, W) when only boxes are given and the map is low-res.
        interpolate_mode: ``"nearest"`` (default, as SkipPLUS) or ``"bilinear"``.

    Returns:
        (B,) AP values in [0, 1].

    Examples::

        >>> from captum_vit.metrics import segmentation_ap
        >>> segmentation_ap(attr, masks=seg_masks).mean()
    """
    gt, _, size = _ground_truth(attributions, boxes, masks, image_size)
    maps = _normalise(_maps(attributions, size, interpolate_mode))
    out = []
    for i in range(maps.shape[0]):
        r, y = maps[i].flatten(), gt[i].flatten()
        if include_background:
            r, y = torch.cat([1.0 - r, r]), torch.cat([~y, y])
        out.append(_average_precision(r, y))
    return torch.stack(out).float()


def pixel_accuracy(
    attributions: Tensor,
    masks: Optional[Tensor] = None,
    boxes: Optional[BoxesType] = None,
    *,
    threshold: Union[str, float] = "mean",
    image_size: Optional[Sequence[int]] = None,
    interpolate_mode: str = "nearest",
) -> Tensor:
    """Pixel accuracy of the thresholded map (Chefer et al., CVPR 2021; review by
    Kashefi et al.).

    The map is min-max normalised per sample (a constant map becomes all zeros) and
    binarised at its mean (``threshold="mean"``, the protocol) or at a fixed value in
    [0, 1]; accuracy is the fraction of pixels whose binary label matches the mask.

    Args:
        attributions: (B, C, H, W), (B, H, W) or a lower-resolution (B, h, w) map.
        masks: (B, H, W) boolean ground-truth masks.
        boxes: Alternatively, boxes rasterised to masks.
        threshold: ``"mean"`` or a float in [0, 1] on the normalised map.
        image_size: (H, W) when only boxes are given and the map is low-res.
        interpolate_mode: ``"nearest"`` (default) or ``"bilinear"``.

    Returns:
        (B,) accuracies in [0, 1].

    Examples::

        >>> from captum_vit.metrics import pixel_accuracy
        >>> pixel_accuracy(attr, masks=seg_masks)
    """
    gt, _, size = _ground_truth(attributions, boxes, masks, image_size)
    pred = _binarise(_maps(attributions, size, interpolate_mode), threshold)
    return (pred == gt).flatten(1).float().mean(dim=1)


def mean_iou(
    attributions: Tensor,
    masks: Optional[Tensor] = None,
    boxes: Optional[BoxesType] = None,
    *,
    threshold: Union[str, float] = "mean",
    image_size: Optional[Sequence[int]] = None,
    interpolate_mode: str = "nearest",
) -> Tensor:
    """Mean IoU of the thresholded map over foreground and background (Chefer et al.,
    CVPR 2021; review by Kashefi et al.).

    Binarisation as :func:`pixel_accuracy`. IoU is computed for the foreground
    (map vs mask) and the background (complements) and averaged; a class absent from
    both prediction and ground truth (zero union) is left out of the mean (the
    foreground never is: empty masks are rejected).

    Args:
        attributions: (B, C, H, W), (B, H, W) or a lower-resolution (B, h, w) map.
        masks: (B, H, W) boolean ground-truth masks.
        boxes: Alternatively, boxes rasterised to masks.
        threshold: ``"mean"`` or a float in [0, 1] on the normalised map.
        image_size: (H, W) when only boxes are given and the map is low-res.
        interpolate_mode: ``"nearest"`` (default) or ``"bilinear"``.

    Returns:
        (B,) mIoU values in [0, 1].

    Examples::

        >>> from captum_vit.metrics import mean_iou
        >>> mean_iou(attr, masks=seg_masks).mean()
    """
    gt, _, size = _ground_truth(attributions, boxes, masks, image_size)
    pred = _binarise(_maps(attributions, size, interpolate_mode), threshold)
    ious = []
    for p, g in ((pred, gt), (~pred, ~gt)):
        inter = (p & g).flatten(1).sum(1).double()
        union = (p | g).flatten(1).sum(1).double()
        ious.append((inter, union))
    num = torch.zeros(pred.shape[0], dtype=torch.float64, device=pred.device)
    cnt = torch.zeros_like(num)
    for inter, union in ious:
        ok = union > 0
        num += torch.where(ok, inter / union.clamp_min(1.0), 0.0)
        cnt += ok.double()
    return (num / cnt.clamp_min(1.0)).float()


def box_iou(
    attributions: Tensor,
    boxes: BoxesType,
    *,
    threshold: float = 0.2,
    image_size: Optional[Sequence[int]] = None,
    interpolate_mode: str = "nearest",
) -> Tensor:
    """IoU of the box around the thresholded map with the ground-truth box (review by
    Kashefi et al.; Niu et al.).

    The map is upsampled to the image, min-max normalised, pixels above
    ``threshold`` (0.2) are kept, and their tight bounding box is compared with the
    ground-truth box (the best-matching one when a sample has several). A map with
    no pixel above the threshold (e.g. constant) predicts no box: IoU 0.

    Args:
        attributions: (B, C, H, W), (B, H, W) or a lower-resolution (B, h, w) map.
        boxes: Ground-truth boxes, (B, 4) / (B, K, 4) tensor or per-sample list.
        threshold: Threshold in [0, 1] on the normalised map.
        image_size: (H, W) when the map is not at image resolution.
        interpolate_mode: ``"nearest"`` (default) or ``"bilinear"``.

    Returns:
        (B,) IoU values in [0, 1].

    Examples::

        >>> from captum_vit.metrics import box_iou
        >>> box_iou(attr, boxes=gt_boxes, threshold=0.2)
    """
    threshold = check_number("threshold", threshold, 0.0, 1.0)
    _, box_list, size = _ground_truth(attributions, boxes, None, image_size, True)
    on = _binarise(_maps(attributions, size, interpolate_mode), threshold)
    out = []
    for i in range(on.shape[0]):
        rows = torch.nonzero(on[i].any(dim=1)).flatten()
        cols = torch.nonzero(on[i].any(dim=0)).flatten()
        if rows.numel() == 0:
            out.append(torch.tensor(0.0, dtype=torch.float64))
            continue
        px1, px2 = float(cols[0]), float(cols[-1]) + 1.0
        py1, py2 = float(rows[0]), float(rows[-1]) + 1.0
        g = box_list[i]
        ix = (
            torch.minimum(g[:, 2], torch.tensor(px2))
            - torch.maximum(g[:, 0], torch.tensor(px1))
        ).clamp_min(0)
        iy = (
            torch.minimum(g[:, 3], torch.tensor(py2))
            - torch.maximum(g[:, 1], torch.tensor(py1))
        ).clamp_min(0)
        inter = ix * iy
        union = (
            (px2 - px1) * (py2 - py1)
            + (g[:, 2] - g[:, 0]) * (g[:, 3] - g[:, 1])
            - inter
        )
        out.append((inter / union).max())  # union >= predicted area >= 1
    return torch.stack(out).float().to(on.device)


def energy_share(maps: Tensor, regions: Tensor) -> Tensor:
    """Share of each (B, H, W) map's positive part inside the (B, H, W) bool
    ``regions``, (B,) float64; 0.0 for a map without positive values."""
    pos = maps.double().clamp_min(0.0)
    total = pos.flatten(1).sum(dim=1)
    inside = (pos * regions).flatten(1).sum(dim=1)
    return torch.where(total > 0, inside / torch.where(total > 0, total, 1.0), 0.0)


def energy_pointing_game(
    attributions: Tensor,
    boxes: Optional[BoxesType] = None,
    masks: Optional[Tensor] = None,
    *,
    threshold: Optional[float] = None,
    image_size: Optional[Sequence[int]] = None,
    interpolate_mode: str = "nearest",
) -> Tensor:
    """Energy-based pointing game (Wang et al., CVPR-W 2020, Score-CAM; used by TAM,
    Yuan et al. 2021): the share of the map's positive energy that falls inside the
    ground truth.

    ``sum_{p in GT} max(L_p, 0) / sum_p max(L_p, 0)`` over the pixels p of the map
    at the ground truth's resolution, the union of a sample's boxes (or the mask)
    being the ground truth. Only the positive part counts (Score-CAM's maps are
    non-negative; for signed maps the negative evidence is not "energy" pointing
    anywhere). A map with no positive value scores 0. Unlike the pointing game it
    rewards maps whose whole mass, not only the maximum, lies on the object.

    With ``threshold`` the map is min-max normalised and binarised first (pixels
    above ``threshold`` count 1): TAM's evaluation script does this with 0.3 before
    it computes the share (its "precision").

    Args:
        attributions: (B, C, H, W) (channels summed), (B, H, W), or a lower-resolution
            (B, h, w) map such as a patch grid (upsampled to the ground truth).
        boxes: Ground-truth boxes ``[x1, y1, x2, y2]`` in pixels: a (B, 4) or
            (B, K, 4) tensor or a per-sample list of (4,) / (K, 4) arrays.
        masks: Alternatively, (B, H, W) boolean ground-truth masks.
        threshold: None (default: the map's positive part, Score-CAM) or a value
            in [0, 1] on the min-max normalised map (TAM's script: 0.3).
        image_size: (H, W) of the images when only boxes are given and the map is
            not at image resolution.
        interpolate_mode: ``"nearest"`` (default) or ``"bilinear"`` upsampling.

    Returns:
        (B,) shares in [0, 1] (higher is better).

    Examples::

        >>> from captum_vit.metrics import energy_pointing_game
        >>> energy_pointing_game(attr, boxes=[[10, 20, 120, 200]] * len(attr)).mean()
    """
    if threshold is not None:
        threshold = check_number("threshold", threshold, 0.0, 1.0)
    gt, _, size = _ground_truth(attributions, boxes, masks, image_size)
    maps = _maps(attributions, size, interpolate_mode)
    if threshold is not None:
        maps = _binarise(maps, threshold).float()
    return energy_share(maps, gt).float()


def _f1(pred: Tensor, gt: Tensor) -> Tensor:
    """F1 of the foreground over the last dimension (scikit-learn's ``f1_score``
    with ``zero_division=0``: 0.0 where there is no true and no predicted
    positive), float64."""
    tp = (pred & gt).sum(dim=-1).double()
    fp = (pred & ~gt).sum(dim=-1).double()
    fn = (~pred & gt).sum(dim=-1).double()
    den = 2 * tp + fp + fn
    return torch.where(den > 0, 2 * tp / torch.where(den > 0, den, 1.0), 0.0)


def segmentation_f1(
    attributions: Tensor,
    masks: Optional[Tensor] = None,
    boxes: Optional[BoxesType] = None,
    *,
    threshold: Union[str, float, Sequence[float]] = "mean",
    average: str = "image",
    image_size: Optional[Sequence[int]] = None,
    interpolate_mode: str = "nearest",
) -> Tensor:
    """F1 of the thresholded map as a foreground segmentation: the per-image value
    whose mean over images is the "mF1" of Chen et al. (CVPR 2023, Beyond
    Intuition), reported beside pixel accuracy, mIoU and mAP.

    The map is min-max normalised per sample (a constant map becomes all zeros) and
    binarised at ``threshold``; F1 = 2 TP / (2 TP + FP + FN) of the foreground
    against the mask (0 when there is no true and no predicted foreground, as
    scikit-learn's ``f1_score``).

    **Protocol.** Chen et al.'s evaluation script (jiaminchen-1031/transformerinterp,
    ``ViT/baselines/ViT/imagenet_seg_eval.py`` with ``utils/metrices.py``'s
    ``get_f1_scores``) binarises at one threshold, the mean of the normalised map
    (the default here, the same binarisation as :func:`pixel_accuracy` and
    :func:`mean_iou`); it does not sweep thresholds, although the review by Kashefi
    et al. describes mF1 as an average over thresholds: pass a sequence of
    thresholds for that reading (the F1 is averaged over them). The script also
    scores each *row of pixels* separately (``get_f1_scores`` reshapes the (H, W)
    map to H "samples") and averages the H row F1s, rows without foreground in map
    and mask counting 0; ``average="rows"`` reproduces that, ``average="image"``
    (default) is the F1 of the whole image.

    Args:
        attributions: (B, C, H, W), (B, H, W) or a lower-resolution (B, h, w) map.
        masks: (B, H, W) boolean ground-truth segmentation of the target class.
        boxes: Alternatively, boxes rasterised to masks.
        threshold: ``"mean"`` (default, Chen et al.'s script), a float in [0, 1] on
            the normalised map, or a sequence of such floats (F1 averaged over
            them).
        average: ``"image"`` (default: one F1 over all pixels) or ``"rows"`` (the
            mean of per-row F1s, as the authors' script).
        image_size: (H, W) when only boxes are given and the map is low-res.
        interpolate_mode: ``"nearest"`` (default) or ``"bilinear"`` (the
            authors' script upsamples patch maps bilinearly).

    Returns:
        (B,) F1 values in [0, 1].

    Examples::

        >>> from captum_vit.metrics import segmentation_f1
        >>> segmentation_f1(attr, masks=seg_masks).mean()            # mF1
        >>> segmentation_f1(attr, masks=seg_masks, threshold=[0.1, 0.2, 0.3])
    """
    check_choice("average", average, ("image", "rows"))
    if isinstance(threshold, str) or not hasattr(threshold, "__len__"):
        thresholds = [threshold]
    else:
        thresholds = list(threshold)
        if not thresholds:
            raise ValueError("threshold: expected at least one threshold")
        for t in thresholds:
            if isinstance(t, str):
                raise ValueError(
                    "threshold: a sequence of thresholds must hold numbers in [0, 1]"
                )
    gt, _, size = _ground_truth(attributions, boxes, masks, image_size)
    maps = _maps(attributions, size, interpolate_mode)
    total = torch.zeros(maps.shape[0], dtype=torch.float64, device=maps.device)
    for t in thresholds:
        pred = _binarise(maps, t)
        if average == "image":
            total += _f1(pred.flatten(1), gt.flatten(1))
        else:
            total += _f1(pred, gt).mean(dim=1)
    return (total / len(thresholds)).float()
