"""ViT-CX: causal explanations from clustered ViT feature maps (Xie et al., IJCAI 2023).

Pipeline, one image at a time (mask generation) and batched across images (scoring):

1. :meth:`ViTCX.features`: the patch-token output of ``layer`` (default: the normalised
   input of the last block, ``blocks[-1].norm1``, as the reference code uses), prefix
   tokens removed, as (D, gh, gw) feature maps.
2. :func:`feature_masks`: every channel upsampled bilinearly to the image size and
   min-max normalised to [0, 1]; constant channels carry no spatial information and are
   dropped (they would be all-zero masks with an undefined cosine distance).
3. :func:`cluster_masks`: agglomerative clustering (fastcluster, complete linkage) of
   the upsampled masks under the cosine distance, cut at ``distance_threshold`` with
   scipy's ``fcluster``; one mask per cluster.
4. :meth:`ViTCX.scores`: the debiased causal impact score
   ``s_k = p(X⊙M_k + B⊙(1 − M_k) + ε_k) − p(X + ε_k) + p(X)``,
   ``ε_k = (1 − M_k)·N(0, σ²)``, with softmax probabilities of the target class and
   the fill ``B`` of the hidden pixels (``baselines``, default: the image's mean
   colour, see :class:`ViTCX`).
5. :func:`coverage_corrected_saliency`: ``S = Σ_k s_k M_k / Σ_k M_k``
   (pixel-coverage-bias correction).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Dict, List, Optional, Sequence, Tuple, Union

import fastcluster
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from captum.attr import PerturbationAttribution
from captum.log import log_usage
from scipy.cluster.hierarchy import fcluster
from torch import Tensor

from .._utils import progress_bar
from ..vit import CLASS_HEAD, ViTAdapter
from ._fill import (
    BaselinesType,
    apply_mask,
    fill_row,
    input_normalization,
    resolve_fill,
)
from ._utils import (
    TargetType,
    capture_layers,
    check_int,
    check_number,
    chunks,
    evaluates_model,
    format_target,
    pack_output,
    resolve_seed,
    unpack_inputs,
)

#: A channel whose range is below this fraction of its magnitude counts as constant.
_CONSTANT_RTOL = 1e-6

#: Default fill of the hidden pixels (see :class:`ViTCX`).
DEFAULT_FILL = "mean"


def _upsample(features: Tensor, size: Sequence[int]) -> Tensor:
    """(D, gh, gw) -> (D, H, W) bilinear (``align_corners=False``), float32."""
    return F.interpolate(
        features[None].float(),
        size=(int(size[0]), int(size[1])),
        mode="bilinear",
        align_corners=False,
    )[0]


def _extreme_rows(u: Tensor) -> Tensor:
    """Rows of a 1-D linear upsampling matrix (n, g) where extremes can occur.

    Each row mixes two adjacent source entries, ``(1 − t) g_i + t g_{i+1}``, which is
    linear in ``t``; over the rows sharing ``i`` a minimum or maximum is reached at the
    smallest or largest ``t``. Returns those rows (sorted), about ``2g`` of ``n``.
    """
    n, g = u.shape
    nz = u > 0
    if bool((nz.sum(dim=1) > 2).any()):  # not a 2-tap interpolation: keep all rows
        return torch.arange(n)
    first = nz.to(torch.int8).argmax(dim=1)
    nxt = (first + 1).clamp(max=g - 1)
    t = torch.where(nxt > first, u[torch.arange(n), nxt], torch.zeros(n, dtype=u.dtype))
    rows = set()
    for i in torch.unique(first).tolist():
        idx = (first == i).nonzero()[:, 0]
        rows.add(int(idx[t[idx].argmin()]))
        rows.add(int(idx[t[idx].argmax()]))
    return torch.tensor(sorted(rows), dtype=torch.long)


def _channel_range(
    features: Tensor,
    uh: Tensor,
    uw: Tensor,
    rows: Optional[Tensor] = None,
    cols: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    """Exact minimum and maximum of every bilinearly upsampled channel (float64).

    The upsampled map ``U_h f U_wᵀ`` is linear in the row weights for a fixed column
    and vice versa, so its extremes lie on the extreme rows × extreme columns of
    :func:`_extreme_rows`: a (D, ~2gh, ~2gw) evaluation instead of (D, H, W).
    """
    rows = _extreme_rows(uh) if rows is None else rows
    cols = _extreme_rows(uw) if cols is None else cols
    sub = torch.einsum("hi,dij,wj->dhw", uh[rows], features, uw[cols]).flatten(1)
    return sub.amin(dim=1), sub.amax(dim=1)


def _varying(lo: Tensor, hi: Tensor) -> Tensor:
    """Channels that are not constant (range above 1e-6 of their magnitude)."""
    return (hi - lo) > _CONSTANT_RTOL * torch.maximum(lo.abs(), hi.abs())


def feature_masks(features: Tensor, size: Sequence[int]) -> Tensor:
    """Upsample feature maps to the image size and min-max normalise each channel.

    This is the explicit form of ViT-CX's masks before clustering; :func:`cluster_masks`
    computes the same clustering without materialising the normalised stack.

    Args:
        features: (D, gh, gw) feature maps of one image.
        size: Image size (H, W).

    Returns:
        (D', H, W) masks in [0, 1] (each with minimum 0 and maximum 1), where the D − D'
        constant channels (range ``<= 1e-6 ×`` their magnitude, e.g. all-zero channels)
        are dropped: a constant channel has no spatial content and would give a zero
        mask, whose cosine distance is undefined. Channel order is kept.

    Examples::

        >>> masks = feature_masks(torch.randn(768, 14, 14), (224, 224))
        >>> masks.shape, float(masks.min()), float(masks.max())
        (torch.Size([768, 224, 224]), 0.0, 1.0)
    """
    _check_features(features)
    up = _upsample(features, size)
    flat = up.flatten(1)
    lo, hi = flat.amin(dim=1), flat.amax(dim=1)
    keep = _varying(lo, hi)
    # guarded division: every kept channel has hi > lo
    out = (flat[keep] - lo[keep, None]) / (hi - lo)[keep, None]
    return out.reshape(-1, up.shape[1], up.shape[2])


def _check_features(features: Tensor) -> None:
    if not isinstance(features, Tensor) or features.dim() != 3:
        raise ValueError(
            "features: expected (D, gh, gw) maps, got "
            + (str(tuple(features.shape)) if isinstance(features, Tensor) else "none")
        )


def _linear_upsampling(g: int, n: int) -> Tensor:
    """(n, g) float64 matrix of 1-D linear upsampling (``align_corners=False``).

    PyTorch's bilinear upsampling is separable: ``up(f) = U_h f U_wᵀ``.
    """
    eye = torch.eye(g, dtype=torch.float64)[:, None, :]
    return F.interpolate(eye, size=n, mode="linear", align_corners=False)[:, 0].T


@lru_cache(maxsize=16)
def _upsampling_operators(
    gh: int, gw: int, h: int, w: int
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Cached (U_h, U_w, extreme rows, extreme columns, UᵀU, Uᵀ1) for one geometry.

    The tensors are shared between calls and must not be modified.
    """
    uh, uw = _linear_upsampling(gh, h), _linear_upsampling(gw, w)
    g0 = torch.kron(uh.T @ uh, uw.T @ uw)  # (N, N) = UᵀU
    u1 = torch.kron(uh.sum(0), uw.sum(0))  # (N,) = Uᵀ1
    return uh, uw, _extreme_rows(uh), _extreme_rows(uw), g0, u1


def _labels_from_distances(dist: np.ndarray, distance_threshold: float) -> Tensor:
    """Complete-linkage clustering of a (D, D) distance matrix, cut at a threshold."""
    d = dist.shape[0]
    if d <= 1:
        return torch.zeros(d, dtype=torch.long)
    iu = np.triu_indices(d, k=1)
    z = fastcluster.linkage(np.ascontiguousarray(dist[iu]), method="complete")
    raw = fcluster(z, t=float(distance_threshold), criterion="distance")
    ids, first = np.unique(raw, return_index=True)
    relabel = np.empty(int(raw.max()) + 1, dtype=np.int64)
    # clusters numbered by their first member: independent of the library's numbering
    relabel[ids[np.argsort(first, kind="stable")]] = np.arange(len(ids))
    return torch.as_tensor(relabel[raw], dtype=torch.long)


def cluster_labels(masks: Tensor, distance_threshold: float) -> Tensor:
    """Agglomerative clustering of explicit masks: cosine distance, complete linkage.

    ``fastcluster.linkage(method="complete")`` builds the dendrogram of the pairwise
    cosine distances and ``scipy.cluster.hierarchy.fcluster(criterion="distance")``
    cuts it at ``distance_threshold``. Complete-linkage merge heights are monotone, so a
    larger threshold never gives more clusters.

    Args:
        masks: (D, H, W) non-negative masks, none of them all-zero.
        distance_threshold: Cut height of the dendrogram (cosine distance).

    Returns:
        (D,) long cluster index per mask in ``0 .. K-1``, clusters numbered in the
        order of their first member.

    Examples::

        >>> masks = feature_masks(features, (224, 224))     # (D', 224, 224)
        >>> labels = cluster_labels(masks, 0.1)             # (D',) in 0 .. K-1
    """
    flat = masks.reshape(masks.shape[0], -1).double()
    unit = flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-300)
    dist = np.clip(1.0 - (unit @ unit.T).cpu().numpy(), 0.0, 2.0)
    return _labels_from_distances(dist, distance_threshold)


def merge_clusters(masks: Tensor, labels: Tensor) -> Tensor:
    """One mask per cluster: the members' mean, min-max renormalised to [0, 1].

    The paper takes the mean of each cluster; the reference code sums the members and
    min-max normalises. Both give the same mask up to the affine stretch (min-max is
    invariant to the 1/|cluster| factor), and the stretch is kept here: every mask then
    spans [0, 1] like a single-channel mask, so the noise ``(1 − M)·N(0, σ²)`` spares
    exactly the pixels at the cluster's maximum and the coverage ``Σ M_k`` weighs all
    clusters alike. A cluster whose mean is constant (possible only for very large
    thresholds) keeps its mean unchanged (no division by a zero range).

    Args:
        masks: (D, H, W) masks.
        labels: (D,) cluster index per mask in ``0 .. K-1``.

    Returns:
        (K, H, W) cluster masks.

    Examples::

        >>> masks = feature_masks(features, (224, 224))
        >>> merged = merge_clusters(masks, cluster_labels(masks, 0.1))  # (K, 224, 224)
    """
    d, h, w = masks.shape
    if d == 0:
        return masks.new_zeros(0, h, w)
    labels = labels.to(masks.device)
    k = int(labels.max()) + 1
    flat = masks.reshape(d, -1)
    sums = flat.new_zeros(k, flat.shape[1]).index_add_(0, labels, flat)
    counts = torch.bincount(labels, minlength=k).to(flat.dtype)
    return _renormalise(sums / counts[:, None]).reshape(k, h, w)


def _renormalise(flat: Tensor) -> Tensor:
    """Min-max normalise each row to [0, 1]; constant rows are left as they are."""
    lo = flat.amin(dim=1, keepdim=True)
    hi = flat.amax(dim=1, keepdim=True)
    ok = _varying(lo, hi)
    den = torch.where(ok, hi - lo, torch.ones_like(lo))
    return torch.where(ok, ((flat - lo) / den).clamp(0.0, 1.0), flat)


def cluster_masks(
    features: Tensor, size: Sequence[int], distance_threshold: float
) -> Tuple[Tensor, Tensor]:
    """Feature maps of one image to ViT-CX masks.

    Same result as ``merge_clusters(m, cluster_labels(m, t))`` with
    ``m = feature_masks(features, size)``, computed without the (D, H, W) normalised
    stack: every normalised mask is affine in its small map,
    ``m_c = (U f_c − lo_c)/r_c`` with ``U`` the (separable) bilinear upsampling, so the
    Gram matrix of the masks is ``A (UᵀU) Aᵀ`` plus rank-one terms (float64, (D, D)),
    and a cluster mean is the upsampled mean of its members' ``f_c / r_c`` minus the
    mean of ``lo_c / r_c``. The per-channel minimum and maximum are exact, from the
    few rows and columns where bilinear extremes can lie (:func:`_channel_range`).

    Args:
        features: (D, gh, gw) feature maps.
        size: Image size (H, W).
        distance_threshold: Dendrogram cut (cosine distance).

    Returns:
        ``(masks, labels)``: (K, H, W) masks in [0, 1] (float32) and the (D,) cluster
        index of every channel (-1 for dropped constant channels).

    Examples::

        >>> feats = ViTCX(model).features(image[None])[0]     # (D, 14, 14)
        >>> masks, labels = cluster_masks(feats, (224, 224), 0.1)
    """
    _check_features(features)
    h, w = int(size[0]), int(size[1])
    d, gh, gw = features.shape
    uh, uw, rows, cols, g0, u1 = _upsampling_operators(gh, gw, h, w)
    f64 = features.detach().double().cpu()
    lo, hi = _channel_range(f64, uh, uw, rows, cols)
    keep = _varying(lo, hi)
    labels = torch.full((d,), -1, dtype=torch.long)
    if not bool(keep.any()):
        return features.new_zeros(0, h, w, dtype=torch.float32), labels
    f = f64[keep].flatten(1)  # (D', N)
    r = (hi - lo)[keep]
    a = f / r[:, None]
    b = lo[keep] / r
    au = a @ u1
    gram = (a @ g0) @ a.T - au[:, None] * b[None] - b[:, None] * au[None]
    gram = gram + float(h * w) * (b[:, None] * b[None])
    norm = gram.diagonal().clamp_min(1e-300).sqrt()
    dist = np.clip(1.0 - (gram / (norm[:, None] * norm[None])).numpy(), 0.0, 2.0)
    np.fill_diagonal(dist, 0.0)
    kept_labels = _labels_from_distances(dist, distance_threshold)
    labels[keep.cpu()] = kept_labels
    k = int(kept_labels.max()) + 1
    counts = torch.bincount(kept_labels, minlength=k).double()
    mean_a = (
        torch.zeros(k, a.shape[1], dtype=torch.float64).index_add_(0, kept_labels, a)
        / counts[:, None]
    )
    mean_b = torch.zeros(k, dtype=torch.float64).index_add_(0, kept_labels, b) / counts
    masks = torch.empty(k, h, w, dtype=torch.float32)
    for i, j in chunks(k, 32):  # (32, H, W) float64 at a time
        mean = torch.einsum("hi,kij,wj->khw", uh, mean_a[i:j].reshape(-1, gh, gw), uw)
        mean = (mean - mean_b[i:j, None, None]).flatten(1)
        masks[i:j] = _renormalise(mean).float().reshape(-1, h, w)
    return masks.to(features.device), labels


def coverage_corrected_saliency(masks: Tensor, scores: Tensor) -> Tensor:
    """Pixel-coverage-bias corrected saliency ``Σ_k s_k M_k / Σ_k M_k``.

    Pixels that no mask covers (``Σ_k M_k = 0``, also when there is no mask at all)
    get saliency 0 instead of NaN: no mask carries evidence about them.

    Args:
        masks: (K, H, W) non-negative masks.
        scores: (K,) score per mask.

    Returns:
        (H, W) saliency map.

    Examples::

        >>> sal = coverage_corrected_saliency(masks, scores)  # (H, W)
    """
    num = torch.einsum("k,khw->hw", scores.to(masks.dtype), masks)
    den = masks.sum(dim=0)
    covered = den > 0
    return torch.where(
        covered, num / torch.where(covered, den, torch.ones_like(den)), 0.0
    )


class ViTCX(PerturbationAttribution):
    r"""ViT-CX (Xie et al., IJCAI 2023): causal impact of clustered ViT feature masks.

    Masks are the patch-token feature maps of ``layer``, upsampled bilinearly to the
    image size, min-max normalised per channel and clustered (cosine distance, complete
    linkage, cut at ``distance_threshold``). Each cluster gives one mask: the mean of
    its members (as in the paper), min-max renormalised to [0, 1] (as the reference
    code's sum-then-renormalise, which is the same mask); see :func:`merge_clusters`.
    Each mask ``M_k`` is scored with the debiased causal impact
    ``s_k = p(X⊙M_k + B⊙(1 − M_k) + ε_k) − p(X + ε_k) + p(X)``,
    ``ε_k = (1 − M_k)·Z_k``, ``Z_k ~ N(0, noise_std²)`` in the model's (normalised)
    input space, one ``ε_k`` shared by the pair, where ``p`` is the **softmax
    probability** of the target class and ``B`` the fill of the hidden pixels
    (``baselines`` of :meth:`attribute`). The saliency is
    ``S = Σ_k s_k M_k / Σ_k M_k`` (pixel-coverage-bias correction; uncovered pixels
    get 0), at pixel level by construction.

    **Fill.** The paper writes ``X ⊙ M`` for images in pixel space, where a hidden
    pixel is black; the reference code multiplies the *normalised* input, so a hidden
    pixel becomes the normalisation mean (mid-grey for mean = std = 0.5), and a grey
    hole keeps the object's outline. ``baselines="zero"`` reproduces the reference
    code; the default is ``"mean"``, each image's own mean colour. Measured on the
    embedded model, all four fills on the same masks and noise (64 held-out scenes,
    ``benchmarks/vitcx_fill.py``, numbers in ``benchmarks/VITCX_FILL.md``): the mean
    fill gives the highest object-vs-background contrast of the map (+1.18 standard
    deviations; zero fill +0.70, black +0.64, blur +0.89), the highest insertion −
    deletion under token removal (+0.38; zero +0.28, black +0.18, blur +0.30) and
    pointing accuracy (0.83; the others 0.66–0.70). Whether a fill makes the mask
    scores grow with the masks' areas can be checked with
    ``scores(..., return_areas=True)``.
    ``"black"`` needs the model's input normalisation (``input_mean`` /
    ``input_std``, or the model's timm ``pretrained_cfg``).

    The model runs in eval mode for every call (dropout off; its modes are restored
    afterwards), also in :meth:`features`, :meth:`masks` and :meth:`scores`.

    Cost per image: one forward for the features and ``p(X)``, then ``2K`` forwards
    (``K`` when ``noise_std == 0``, where ``p(X + ε) = p(X)`` exactly), batched across
    masks and images. The number of masks ``K`` varies per image.

    Args:
        model: A supported ViT or Swin (see :class:`captum_vit.vit.ViTAdapter`) with a
            classifier head.
        layer: The module whose output gives the feature maps: (B, P + N, D) tokens on
            ViTs, an NHWC map on Swin. Default (from the model's adapter): the last
            block's first norm (its normalised input) on ViTs, the last stage's output
            on Swin.
        distance_threshold: Dendrogram cut of the clustering (cosine distance); None
            (default) takes the paper's value for the family, 0.1 for ViT/DeiT and
            0.05 for Swin. Larger gives fewer masks.
        noise_std: Standard deviation σ of the noise ``ε`` (0.1 in the paper); 0
            disables the debiasing noise.
        input_mean: Per-channel mean of the model's input normalisation (pixel
            values in [0, 1]), for ``baselines="black"``. Default: read from the
            model's timm ``pretrained_cfg`` where it has one.
        input_std: Per-channel std of the normalisation (with ``input_mean``).

    Raises:
        TypeError: an unsupported model or a model without classifier head.

    Examples::

        >>> explainer = ViTCX(model)
        >>> attr = explainer.attribute(images, target=labels, seed=0)  # (B, C, H, W)
        >>> masks = explainer.masks(images)   # list of (K_b, H, W), K_b per image
    """

    def __init__(
        self,
        model: nn.Module,
        layer: Optional[nn.Module] = None,
        distance_threshold: Optional[float] = None,
        noise_std: float = 0.1,
        input_mean: Optional[Sequence[float]] = None,
        input_std: Optional[Sequence[float]] = None,
    ) -> None:
        self.adapter = ViTAdapter(model)
        self.adapter.require(CLASS_HEAD, "ViTCX")
        super().__init__(self.adapter.model)
        if layer is None:
            layer = self.adapter.feature_module()
        if distance_threshold is None:
            distance_threshold = self.adapter.feature_distance_threshold
        if not isinstance(layer, nn.Module):
            raise TypeError(f"layer: expected an nn.Module, got {type(layer).__name__}")
        if not any(m is layer for m in self.adapter.model.modules()):
            raise ValueError("layer: the module is not part of the model")
        self.layer = layer
        # a cosine distance lies in [0, 2]: a cut above 2 would mean the same as 2
        self.distance_threshold = check_number(
            "distance_threshold", distance_threshold, 0.0, 2.0
        )
        self.noise_std = check_number("noise_std", noise_std, 0.0)
        self.normalization = input_normalization(self.adapter, input_mean, input_std)

    # ------------------------------------------------------------ mask generation
    def _features_and_logits(self, images: Tensor) -> Tuple[Tensor, Tensor]:
        """(B, D, gh, gw) feature maps of ``layer`` and (B, classes) logits, one
        forward pass, the hook removed afterwards also on error."""
        self.adapter.check_images(images)
        with torch.no_grad():
            logits, (out,) = capture_layers(
                [self.layer], lambda: self.adapter.logits(images)
            )
        feats = self.adapter.feature_maps(out, images)
        return feats.detach(), logits.detach()

    @evaluates_model
    def features(self, images: Tensor) -> Tensor:
        """Feature maps of ``layer``, prefix tokens removed.

        Args:
            images: (B, C, H, W) inputs.

        Returns:
            (B, D, gh, gw) feature maps.

        Examples::

            >>> ViTCX(model).features(images).shape             # ViT-B/16 at 224
            torch.Size([2, 768, 14, 14])
        """
        images, _ = unpack_inputs(images)
        return self._features_and_logits(images)[0]

    @evaluates_model
    def masks(self, images: Tensor, show_progress: bool = False) -> List[Tensor]:
        """The ViT-CX masks of every image.

        Each image is processed with its own forward pass (batch of one), so an image's
        masks do not depend on the rest of the batch.

        Args:
            images: (B, C, H, W) inputs.
            show_progress: Show a tqdm bar over the images being clustered.

        Returns:
            A list of B tensors (K_b, H, W) with values in [0, 1].

        Examples::

            >>> masks = ViTCX(model).masks(images)
            >>> [m.shape[0] for m in masks]                     # K per image
            [63, 71]
        """
        images, _ = unpack_inputs(images)
        return self._masks_and_probs(images, show_progress)[0]

    def _masks_and_probs(
        self, images: Tensor, show_progress: bool = False
    ) -> Tuple[List[Tensor], Tensor]:
        size = images.shape[-2:]
        masks, probs = [], []
        bar = progress_bar(
            range(images.shape[0]),
            desc="ViT-CX clustering",
            enabled=show_progress,
            unit="img",
        )
        for i in bar:
            feats, logits = self._features_and_logits(images[i : i + 1])
            masks.append(cluster_masks(feats[0], size, self.distance_threshold)[0])
            probs.append(torch.softmax(logits[0].float(), dim=-1))
        if not probs:
            return [], images.new_zeros(0, self.adapter.num_classes)
        return masks, torch.stack(probs)

    # ------------------------------------------------------------------ scoring
    @evaluates_model
    def scores(
        self,
        images: Tensor,
        masks: Sequence[Tensor],
        target: TargetType,
        perturbations_per_eval: int = 64,
        show_progress: bool = False,
        seed: Optional[int] = None,
        probs: Optional[Tensor] = None,
        baselines: BaselinesType = DEFAULT_FILL,
        return_areas: bool = False,
    ) -> Union[List[Tensor], Tuple[List[Tensor], List[Tensor]]]:
        """Debiased causal impact
        ``s_k = p(X⊙M_k + B⊙(1 − M_k) + ε_k) − p(X + ε_k) + p(X)``.

        The noise of image b's k-th mask is the k-th draw ``Z_k ~ N(0, σ²)`` (shape
        (C, H, W)) of a generator seeded with ``seed`` afresh for every image, so a
        result does not depend on the batch it was computed in. Forward passes are
        batched across masks and images, ``perturbations_per_eval`` inputs at a time,
        under ``torch.no_grad()``.

        Args:
            images: (B, C, H, W) inputs.
            masks: B tensors (K_b, H, W), e.g. from :meth:`masks`.
            target: Class per sample (int, list or 1-D tensor; required here).
            perturbations_per_eval: Inputs per forward pass.
            show_progress: Show a tqdm bar over the forward batches.
            seed: Noise seed; None draws one from torch's global RNG.
            probs: Optional (B, classes) softmax output for the clean images, to save
                their forward pass.
            baselines: Fill ``B`` of the hidden pixels: ``"mean"`` (default),
                ``"zero"``, ``"black"``, ``"blur"``, a number or a tensor
                broadcastable to the inputs (see :class:`ViTCX`).
            return_areas: Also return every mask's area, the mean of ``M_k`` over
                the pixels (the fraction of the image it keeps), to check whether
                the scores grow with the area (area bias).

        Returns:
            A list of B tensors (K_b,) of scores; with ``return_areas`` a pair
            ``(scores, areas)`` of such lists.

        Examples::

            >>> explainer = ViTCX(model)
            >>> masks = explainer.masks(images)
            >>> scores = explainer.scores(images, masks, target=[3, 7], seed=0)
            >>> scores, areas = explainer.scores(images, masks, [3, 7], seed=0,
            ...                                  return_areas=True)
            >>> np.corrcoef(scores[0], areas[0])[0, 1]    # area bias of image 0
        """
        images, _ = unpack_inputs(images)
        self.adapter.check_images(images)
        b = images.shape[0]
        if len(masks) != b:
            raise ValueError(
                f"masks: expected {b} per-image mask tensors, got {len(masks)}"
            )
        for i, m in enumerate(masks):
            if m.dim() != 3 or tuple(m.shape[1:]) != tuple(images.shape[-2:]):
                raise ValueError(
                    f"masks: expected (K, {images.shape[-2]}, {images.shape[-1]}) "
                    f"masks for image {i}, got {tuple(m.shape)}"
                )
        if target is None:
            raise ValueError("target: scores() needs explicit per-sample targets")
        tgt = format_target(target, b, self.adapter.num_classes).to(images.device)
        ppe = check_int("perturbations_per_eval", perturbations_per_eval, 1)
        seed = resolve_seed(seed)
        with torch.no_grad():
            fill = resolve_fill(baselines, images, self.normalization)
            if probs is None:
                probs = images.new_zeros(b, self.adapter.num_classes, dtype=torch.float)
                for lo, hi in chunks(b, ppe):
                    logits = self.adapter.logits(images[lo:hi]).float()
                    probs[lo:hi] = torch.softmax(logits, dim=-1)
            p_x = probs.gather(1, tgt[:, None].to(probs.device))[:, 0]
            with_noise = self.noise_std > 0
            # jobs: (image, mask index, masked?) in image, mask order; the masked and
            # the noise-only input of one mask share its noise draw.
            jobs = [
                (i, k, masked)
                for i in range(b)
                for k in range(masks[i].shape[0])
                for masked in ((True, False) if with_noise else (True,))
            ]
            out = [images.new_zeros(m.shape[0], dtype=torch.float32) for m in masks]
            gens: Dict[int, torch.Generator] = {}
            noise: Dict[Tuple[int, int], Tensor] = {}
            bar = progress_bar(
                total=len(jobs),
                desc="ViT-CX",
                enabled=show_progress,
                unit="fwd",
            )
            try:
                for lo, hi in chunks(len(jobs), ppe):
                    batch = []
                    for i, k, masked in jobs[lo:hi]:
                        x, m = images[i], masks[i][k].to(images)
                        hidden = apply_mask(x, m, fill_row(fill, i)) if masked else x
                        if with_noise:
                            if (i, k) not in noise:
                                if i not in gens:
                                    gens = {i: torch.Generator().manual_seed(seed)}
                                z = torch.randn(x.shape, generator=gens[i])
                                noise[(i, k)] = (1 - m) * (self.noise_std * z.to(x))
                            eps = noise[(i, k)] if masked else noise.pop((i, k))
                            batch.append(hidden + eps)
                        else:
                            batch.append(hidden)
                    logits = self.adapter.logits(torch.stack(batch))
                    p = torch.softmax(logits.float(), -1)
                    for (i, k, masked), row in zip(jobs[lo:hi], p):
                        v = row[tgt[i]]
                        out[i][k] += v if masked else -v
                    bar.update(hi - lo)
            finally:
                bar.close()
            for i in range(b):
                if with_noise:
                    out[i] += p_x[i]
        if return_areas:
            areas = [m.float().flatten(1).mean(dim=1) for m in masks]
            return out, areas
        return out

    # --------------------------------------------------------------- attribute
    @log_usage()
    @evaluates_model
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor]],
        target: TargetType = None,
        perturbations_per_eval: int = 64,
        show_progress: bool = False,
        seed: Optional[int] = None,
        baselines: BaselinesType = DEFAULT_FILL,
    ) -> Union[Tensor, Tuple[Tensor]]:
        r"""ViT-CX saliency of every pixel.

        Args:
            inputs: (B, C, H, W) images in the model's input space (or a 1-tuple).
            target: Class index: an int, a per-sample list or 1-D tensor; None
                explains the predicted class of each sample.
            perturbations_per_eval: Perturbed inputs per forward pass (batched across
                masks and images); 64 keeps a ViT-B batch at 224 px near 40 MB of
                inputs.
            show_progress: Show tqdm bars over the clustering of each image and
                over the forward passes (off by default, as in Captum).
            seed: Seed of the noise ``ε`` (an int in ``[0, 2**64)``); None draws one
                from torch's global RNG (so ``torch.manual_seed`` makes calls
                reproducible). The same seed gives every image the same noise stream,
                so a batch equals per-sample calls.
            baselines: Fill ``B`` of the hidden pixels, Captum style: ``"mean"``
                (default; each image's per-channel mean), ``"zero"`` (0 in the model's
                input space, the reference code), ``"black"`` (black pixels in the
                model's normalisation; needs ``input_mean``/``input_std`` or a timm
                ``pretrained_cfg``), ``"blur"`` (Gaussian, kernel 11, σ 5), a number,
                or a tensor broadcastable to the inputs (e.g. one (C, 1, 1) colour or
                a (B, C, H, W) fill per sample).

        Returns:
            Attributions of the inputs' shape (and tuple-ness), equal across channels:
            ``Σ_k s_k M_k / Σ_k M_k`` in probability units, 0 where no mask covers a
            pixel.

        Raises:
            ValueError: bad image size, target out of range, a ``layer`` whose output
                is not token-shaped, ``perturbations_per_eval < 1``, an unknown fill,
                ``"black"`` without a known normalisation, a fill tensor that does
                not broadcast to the inputs.

        Examples::

            >>> attr = ViTCX(model).attribute(images, target=labels, seed=0)
            >>> attr.shape == images.shape
            True
        """
        images, was_tuple = unpack_inputs(inputs)
        self.adapter.check_images(images)
        b = images.shape[0]
        tgt = None
        if target is not None:
            tgt = format_target(target, b, self.adapter.num_classes)
        check_int("perturbations_per_eval", perturbations_per_eval, 1)
        seed = resolve_seed(seed)
        with torch.no_grad():  # fail early on a bad fill, before the masks
            resolve_fill(baselines, images, self.normalization)
        masks, probs = self._masks_and_probs(images, show_progress)
        if tgt is None:
            tgt = probs.argmax(dim=1).cpu()
        scores = self.scores(
            images,
            masks,
            tgt,
            perturbations_per_eval=perturbations_per_eval,
            show_progress=show_progress,
            seed=seed,
            probs=probs,
            baselines=baselines,
        )
        h, w = images.shape[-2:]
        sal = (
            torch.stack(
                [coverage_corrected_saliency(m, s) for m, s in zip(masks, scores)]
            )
            if b
            else images.new_zeros(0, h, w)
        )
        out = sal[:, None].to(images.dtype).expand_as(images).contiguous()
        return pack_output(out, was_tuple)
