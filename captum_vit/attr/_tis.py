"""Transformer Input Sampling (Englebert et al., ICCV Workshops 2023).

Pipeline, one image at a time (mask generation) and batched across images (scoring):

1. :meth:`TransformerInputSampling.activations`: the output tokens of every block,
   concatenated along the hidden dimension, prefix tokens removed: (N, L·D). Each of the
   L·D channels is a point with N token coordinates.
2. :func:`kmeans`: k-means of these points into ``n_masks`` centroids (seeded, no empty
   clusters).
3. :func:`binarise`: each centroid keeps its top ``int(tokens_ratio · N)`` tokens.
4. :meth:`TransformerInputSampling.scores`: the softmax probability of the target when
   the transformer runs on the kept tokens only (:class:`captum_vit.vit.TokenMask` in
   ``"drop"`` mode: the other tokens are removed after the positional embedding).
5. :func:`token_saliency`: ``Σ_j w_j m_j / Σ_j m_j`` per token.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from captum.attr import PerturbationAttribution
from captum.log import log_usage
from torch import Tensor

from .._utils import progress_bar
from ..vit import CLASS_HEAD, TOKEN_DROP, TokenMask, ViTAdapter, tokens_to_pixels
from ._utils import (
    TargetType,
    capture_layers,
    check_choice,
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

_SCORE_MODES = ("drop", "attention")


def _assign(points: Tensor, sq: Tensor, centroids: Tensor) -> Tensor:
    """Index of the nearest centroid of every point (first one on ties)."""
    c_sq = (centroids * centroids).sum(dim=1)
    # ||x - c||² = ||x||² + ||c||² − 2 x·c; the ||x||² term does not change the argmin
    return torch.addmm(c_sq[None], points, centroids.T, alpha=-2.0).argmin(dim=1)


def _fill_empty(
    points: Tensor, sq: Tensor, centroids: Tensor, labels: Tensor, k: int
) -> Tuple[Tensor, bool]:
    """Give every empty cluster the farthest point of a cluster that has others."""
    counts = torch.bincount(labels, minlength=k)
    empty = (counts == 0).nonzero()[:, 0].tolist()
    if not empty:
        return labels, False
    own = centroids[labels]
    dist = sq - 2.0 * (points * own).sum(dim=1) + (own * own).sum(dim=1)
    order = torch.argsort(dist, descending=True, stable=True).tolist()
    labels = labels.clone()
    counts_l = counts.tolist()
    lab = labels.tolist()
    for p in order:
        if not empty:
            break
        if counts_l[lab[p]] > 1:
            counts_l[lab[p]] -= 1
            e = empty.pop(0)
            lab[p] = e
            counts_l[e] = 1
    return torch.tensor(lab, dtype=labels.dtype, device=labels.device), True


def _cluster_means(points: Tensor, labels: Tensor, k: int) -> Tensor:
    """Mean of every cluster's members (every cluster non-empty).

    A segment sum over the label-sorted points: deterministic, and much faster than a
    multi-threaded ``index_add_`` on a busy CPU.
    """
    counts = torch.bincount(labels, minlength=k)
    order = torch.argsort(labels, stable=True)
    sums = torch.segment_reduce(points[order], "sum", lengths=counts)
    return sums / counts[:, None].to(points.dtype)


def kmeans(
    points: Tensor,
    n_clusters: int,
    generator: torch.Generator,
    max_iter: int = 100,
) -> Tuple[Tensor, Tensor]:
    """Deterministic Lloyd k-means with no empty clusters.

    Initialisation: ``n_clusters`` distinct points drawn with ``generator`` (Forgy).
    Each iteration assigns every point to its nearest centroid (Euclidean, first
    centroid on ties), gives every empty cluster the point farthest from its own
    centroid among clusters with more than one member, and recomputes the centroids as
    member means. It stops when the assignment no longer changes, or after
    ``max_iter`` iterations. Every cluster therefore has at least one member and every
    centroid is the mean of real points (never a zero placeholder). Given the same
    points and generator state the result is bit-for-bit reproducible.

    Args:
        points: (n, d) points.
        n_clusters: k with ``1 <= k <= n``.
        generator: A CPU ``torch.Generator``.
        max_iter: Maximum number of Lloyd iterations (>= 1).

    Returns:
        ``(centroids, labels)``: (k, d) centroids and the (n,) cluster of every point;
        ``centroids[j]`` is the mean of ``points[labels == j]``.

    Examples::

        >>> g = torch.Generator().manual_seed(0)
        >>> centroids, labels = kmeans(torch.randn(500, 16), 32, g)
        >>> torch.bincount(labels, minlength=32).min() >= 1
        tensor(True)
    """
    n = points.shape[0]
    n_clusters = check_int("n_clusters", n_clusters, 1, n)
    max_iter = check_int("max_iter", max_iter, 1)
    x = points.float()
    sq = (x * x).sum(dim=1)
    init = torch.randperm(n, generator=generator)[:n_clusters].to(x.device)
    centroids = x[init]
    labels: Optional[Tensor] = None
    for _ in range(max_iter):
        new = _assign(x, sq, centroids)
        new, refilled = _fill_empty(x, sq, centroids, new, n_clusters)
        if labels is not None and not refilled and torch.equal(new, labels):
            break
        labels = new
        centroids = _cluster_means(x, labels, n_clusters)
    return centroids, labels


def binarise(centroids: Tensor, n_keep: int) -> Tensor:
    """Keep each centroid's ``n_keep`` largest tokens.

    Args:
        centroids: (M, N) centroids over N tokens.
        n_keep: Tokens kept per mask, ``1 <= n_keep <= N``.

    Returns:
        (M, N) boolean masks with exactly ``n_keep`` True per row (ties broken toward
        the lower token index).

    Examples::

        >>> binarise(torch.tensor([[0.1, 0.9, 0.5, 0.7]]), 2)
        tensor([[False,  True, False,  True]])
    """
    m, n = centroids.shape
    n_keep = check_int("n_keep", n_keep, 1, n)
    top = torch.argsort(centroids, dim=1, descending=True, stable=True)[:, :n_keep]
    masks = torch.zeros(m, n, dtype=torch.bool, device=centroids.device)
    return masks.scatter_(1, top, True)


def token_saliency(masks: Tensor, scores: Tensor) -> Tensor:
    """``Σ_j w_j m_j / Σ_j m_j`` per token; tokens no mask keeps get 0.

    Args:
        masks: (M, N) boolean (or 0/1) masks.
        scores: (M,) mask scores.

    Returns:
        (N,) saliency.

    Examples::

        >>> masks = torch.tensor([[True, False], [True, True]])
        >>> token_saliency(masks, torch.tensor([0.2, 0.6]))
        tensor([0.4000, 0.6000])
    """
    m = masks.to(torch.float32)
    num = scores.to(torch.float32) @ m
    den = m.sum(dim=0)
    covered = den > 0
    return torch.where(
        covered, num / torch.where(covered, den, torch.ones_like(den)), 0.0
    )


class TransformerInputSampling(PerturbationAttribution):
    r"""Transformer Input Sampling (TIS, Englebert et al., ICCV-W 2023).

    Masks over patch tokens come from the model's own activations: the output tokens of
    every block are concatenated to (N, L·D) (prefix tokens removed, so CLS, distilled
    and register models are handled alike), the L·D channels are clustered by k-means
    into ``n_masks`` centroids (:func:`kmeans`: seeded, Lloyd iterations, no empty
    clusters; channels constant over the tokens are left out since they carry no
    spatial information), and each centroid keeps its top ``int(tokens_ratio · N)``
    tokens. Every mask is scored by running the transformer on its kept tokens only
    (the other tokens are removed after the positional embedding, so no replacement
    value is needed and the forward passes are cheaper) and taking the target's
    **softmax probability** ``w_j``. The token saliency is
    ``Σ_j w_j m_j / Σ_j m_j`` (token-frequency correction; tokens no mask keeps get 0),
    not min-max normalised (normalise for display if wanted).

    The model runs in eval mode for every call (dropout off; its modes are restored
    afterwards), also in :meth:`activations`, :meth:`masks` and :meth:`scores`.

    Number of masks per image: ``min(n_masks, number of non-constant channels)``
    (``L·D`` for any real ViT). Cost per image: one full forward for the activations
    and the default target, then one forward per mask at ``int(tokens_ratio · N)``
    patch tokens, batched across masks and images.

    Args:
        model: A supported ViT whose family can drop tokens (see
            :class:`captum_vit.vit.ViTAdapter`), with a classifier head.
        n_masks: Number of k-means centroids (masks), >= 1; 1024 in the paper.
        tokens_ratio: Fraction of patch tokens each mask keeps, in (0, 1]; 0.5 in the
            paper. At least one token is kept.
        kmeans_iters: Maximum number of Lloyd iterations (100 in the reference code);
            k-means stops earlier once the assignment is stable.

    Examples::

        >>> explainer = TransformerInputSampling(model, n_masks=256)
        >>> attr = explainer.attribute(images, target=labels, seed=0)  # (B, C, H, W)
        >>> grid = captum_vit.patch_scores(attr, model)              # (B, gh, gw)
    """

    def __init__(
        self,
        model: nn.Module,
        n_masks: int = 1024,
        tokens_ratio: float = 0.5,
        kmeans_iters: int = 100,
    ) -> None:
        self.adapter = ViTAdapter(model)
        self.adapter.require(TOKEN_DROP, "TransformerInputSampling")
        self.adapter.require(CLASS_HEAD, "TransformerInputSampling")
        super().__init__(self.adapter.model)
        self.n_masks = check_int("n_masks", n_masks, 1)
        self.tokens_ratio = check_number(
            "tokens_ratio", tokens_ratio, 0.0, 1.0, low_open=True
        )
        self.kmeans_iters = check_int("kmeans_iters", kmeans_iters, 1)

    def n_keep(self, num_patches: int) -> int:
        """Tokens each mask keeps: ``max(1, int(tokens_ratio · N))``.

        Args:
            num_patches: Number of patch tokens N.

        Returns:
            The number of kept tokens per mask, in ``1 .. N``.

        Examples::

            >>> TransformerInputSampling(model).n_keep(196)
            98
        """
        return max(1, min(num_patches, int(self.tokens_ratio * num_patches)))

    # ------------------------------------------------------------ mask generation
    def _activations_and_logits(self, images: Tensor) -> Tuple[Tensor, Tensor]:
        gh, gw = self.adapter.check_images(images)
        with torch.no_grad():
            logits, outs = capture_layers(
                list(self.adapter.blocks), lambda: self.adapter.logits(images), "blocks"
            )
        p = self.adapter.num_prefix_tokens
        acts = torch.cat([o[:, p:] for o in outs], dim=-1)  # (B, N, L·D)
        return acts.detach(), logits.detach()

    @evaluates_model
    def activations(self, images: Tensor) -> Tensor:
        """Output tokens of every block, concatenated, prefix tokens removed.

        Args:
            images: (B, C, H, W) inputs.

        Returns:
            (B, N, L·D) activations (block-major along the last dimension).

        Examples::

            >>> TransformerInputSampling(model).activations(images).shape  # ViT-B/16
            torch.Size([2, 196, 9216])
        """
        images, _ = unpack_inputs(images)
        return self._activations_and_logits(images)[0]

    def masks_from_activations(self, acts: Tensor, seed: int) -> Tensor:
        """TIS masks of one image from its (N, L·D) activations.

        Args:
            acts: (N, L·D) activations of one image.
            seed: k-means seed (an int in ``[0, 2**64)``).

        Returns:
            (M, N) boolean masks, ``M = min(n_masks, non-constant channels)``.

        Examples::

            >>> tis = TransformerInputSampling(model)
            >>> masks = tis.masks_from_activations(tis.activations(images)[0], seed=0)
        """
        seed = check_seed("seed", seed)
        if not isinstance(acts, Tensor) or acts.dim() != 2:
            raise ValueError(
                "acts: expected (N, L·D) activations of one image, got "
                + (str(tuple(acts.shape)) if isinstance(acts, Tensor) else "no tensor")
            )
        points = acts.T.float()  # (L·D, N): one point per channel
        varying = points.amax(dim=1) > points.amin(dim=1)
        points = points[varying]
        n = acts.shape[0]
        if points.shape[0] == 0:
            return torch.zeros(0, n, dtype=torch.bool, device=acts.device)
        k = min(self.n_masks, points.shape[0])
        g = torch.Generator().manual_seed(seed)
        centroids, _ = kmeans(points, k, g, self.kmeans_iters)
        return binarise(centroids, self.n_keep(n)).to(acts.device)

    def _masks_and_probs(
        self, images: Tensor, seed: int, show_progress: bool = False
    ) -> Tuple[List[Tensor], Tensor]:
        masks, probs = [], []
        bar = progress_bar(
            range(images.shape[0]),
            desc="TIS k-means",
            enabled=show_progress,
            unit="img",
        )
        for i in bar:
            acts, logits = self._activations_and_logits(images[i : i + 1])
            masks.append(self.masks_from_activations(acts[0], seed))
            probs.append(torch.softmax(logits[0].float(), dim=-1))
        if not probs:
            return [], images.new_zeros(0, self.adapter.num_classes)
        return masks, torch.stack(probs)

    @evaluates_model
    def masks(
        self, images: Tensor, seed: Optional[int] = None, show_progress: bool = False
    ) -> List[Tensor]:
        """The TIS masks of every image.

        Each image gets its own forward pass (batch of one) and a k-means generator
        seeded with ``seed``, so an image's masks do not depend on the rest of the
        batch.

        Args:
            images: (B, C, H, W) inputs.
            seed: k-means seed; None draws one from torch's global RNG.
            show_progress: Show a tqdm bar over the images' k-means runs.

        Returns:
            A list of B boolean tensors (M_b, N).

        Examples::

            >>> masks = TransformerInputSampling(model).masks(images, seed=0)
            >>> masks[0].shape, int(masks[0][0].sum())           # ViT-B/16
            (torch.Size([1024, 196]), 98)
        """
        images, _ = unpack_inputs(images)
        return self._masks_and_probs(images, resolve_seed(seed), show_progress)[0]

    # ------------------------------------------------------------------ scoring
    @evaluates_model
    def scores(
        self,
        images: Tensor,
        masks: Sequence[Tensor],
        target: TargetType,
        perturbations_per_eval: int = 64,
        show_progress: bool = False,
        mode: str = "drop",
    ) -> List[Tensor]:
        """Softmax probability of the target with only each mask's tokens kept.

        Args:
            images: (B, C, H, W) inputs.
            masks: B boolean tensors (M_b, N) over patch tokens.
            target: Class per sample (int, list or 1-D tensor; required here).
            perturbations_per_eval: Masked inputs per forward pass.
            show_progress: Show a tqdm bar over the forward passes.
            mode: ``"drop"`` removes the other tokens (cheaper, the method's
                definition); ``"attention"`` key-masks them in every block (same
                result to float precision, for checking).

        Returns:
            A list of B tensors (M_b,) of probabilities.

        Examples::

            >>> tis = TransformerInputSampling(model, n_masks=256)
            >>> masks = tis.masks(images, seed=0)
            >>> w = tis.scores(images, masks, target=[3, 7])      # list of (256,)
            >>> sal = token_saliency(masks[0], w[0])             # (196,)
        """
        images, _ = unpack_inputs(images)
        gh, gw = self.adapter.check_images(images)
        b = images.shape[0]
        check_choice("mode", mode, _SCORE_MODES)
        if len(masks) != b:
            raise ValueError(
                f"masks: expected {b} per-image mask tensors, got {len(masks)}"
            )
        for i, m in enumerate(masks):
            if m.dtype != torch.bool or m.dim() != 2 or m.shape[1] != gh * gw:
                raise ValueError(
                    f"masks: expected a boolean (M, {gh * gw}) tensor for image {i}, "
                    f"got {tuple(m.shape)} {m.dtype}"
                )
        if target is None:
            raise ValueError("target: scores() needs explicit per-sample targets")
        tgt = format_target(target, b, self.adapter.num_classes).to(images.device)
        ppe = check_int("perturbations_per_eval", perturbations_per_eval, 1)
        masker = TokenMask(self.adapter, mode=mode)
        img_idx = torch.cat(
            [
                torch.full((m.shape[0],), i, dtype=torch.long)
                for i, m in enumerate(masks)
            ]
            + [torch.zeros(0, dtype=torch.long)]
        ).to(images.device)
        keep_all = (
            torch.cat([m.to(images.device) for m in masks])
            if b
            else torch.zeros(0, gh * gw, dtype=torch.bool)
        )
        flat = torch.empty(img_idx.shape[0], dtype=torch.float32, device=images.device)
        bar = progress_bar(
            total=img_idx.shape[0], desc="TIS", enabled=show_progress, unit="fwd"
        )
        try:
            with torch.no_grad():
                for lo, hi in chunks(img_idx.shape[0], ppe):
                    idx = img_idx[lo:hi]
                    logits = masker(images.index_select(0, idx), keep_all[lo:hi])
                    p = torch.softmax(logits.float(), dim=-1)
                    flat[lo:hi] = p.gather(1, tgt[idx][:, None])[:, 0]
                    bar.update(hi - lo)
        finally:
            bar.close()
        return list(flat.split([m.shape[0] for m in masks]))

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
        interpolate_mode: str = "nearest",
    ) -> Union[Tensor, Tuple[Tensor]]:
        r"""TIS saliency of every patch, spread over its pixels.

        Args:
            inputs: (B, C, H, W) images (or a 1-tuple).
            target: Class index: an int, a per-sample list or 1-D tensor; None
                explains the predicted class of each sample.
            perturbations_per_eval: Masked inputs per forward pass (batched across
                masks and images).
            show_progress: Show tqdm bars over the k-means runs of the images and
                over the forward passes (off by default, as in Captum).
            seed: k-means seed; None draws one from torch's global RNG (so
                ``torch.manual_seed`` makes calls reproducible). Every image uses the
                same seed, so a batch equals per-sample calls.
            interpolate_mode: ``"nearest"`` keeps maps patch-constant (so
                ``patch_scores`` recovers the token saliency exactly); ``"bilinear"``
                for display, as in the paper.

        Returns:
            Attributions of the inputs' shape (and tuple-ness): ``Σ_j w_j m_j /
            Σ_j m_j`` in probability units, 0 for tokens that no mask keeps.

        Raises:
            ValueError: bad image size, target out of range,
                ``perturbations_per_eval < 1``, unknown ``interpolate_mode``.

        Examples::

            >>> attr = TransformerInputSampling(model).attribute(images, seed=0)
            >>> captum_vit.patch_scores(attr, model).shape      # ViT-B/16
            torch.Size([2, 14, 14])
        """
        images, was_tuple = unpack_inputs(inputs)
        grid = self.adapter.check_images(images)
        b = images.shape[0]
        tgt = None
        if target is not None:
            tgt = format_target(target, b, self.adapter.num_classes)
        check_int("perturbations_per_eval", perturbations_per_eval, 1)
        if interpolate_mode not in ("nearest", "bilinear", "bicubic"):
            raise ValueError(
                "interpolate_mode: expected 'nearest', 'bilinear' or 'bicubic', got "
                f"{interpolate_mode!r}"
            )
        seed = resolve_seed(seed)
        masks, probs = self._masks_and_probs(images, seed, show_progress)
        if tgt is None:
            tgt = probs.argmax(dim=1).cpu()
        scores = self.scores(
            images,
            masks,
            tgt,
            perturbations_per_eval=perturbations_per_eval,
            show_progress=show_progress,
        )
        n = grid[0] * grid[1]
        sal = (
            torch.stack([token_saliency(m, s) for m, s in zip(masks, scores)])
            if b
            else images.new_zeros(0, n)
        )
        out = tokens_to_pixels(sal, grid, images, interpolate_mode)
        return pack_output(out, was_tuple)
