"""Cooperative games played by patches: ``v(s)`` = the surrogate's class probabilities
when only the patches in ``s`` are kept.

A *game* in :mod:`captum_vit.shapley` is any callable that maps an (n, d) boolean keep
matrix to an (n, C) tensor of values (or (n,) for a scalar game); :func:`exact_shapley`
and :func:`kernel_shap` accept any game. :class:`SurrogateGame` builds the games ViT
Shapley explains: held-out patches are removed by :class:`~captum_vit.vit.TokenMask`
and the value is the surrogate's softmax probability vector.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Tuple, Union

import torch
import torch.nn as nn
from torch import Tensor

from .._utils import check_int
from ..vit import ATTENTION_MASK, CLASS_HEAD, TOKEN_DROP, TokenMask, ViTAdapter
from ._utils import eval_mode

__all__ = ["Game", "SurrogateGame", "masked_chunks", "masked_logits"]

#: A game: (n, d) bool keep masks -> (n, C) values.
Game = Callable[[Tensor], Tensor]


def masked_logits(
    mask: TokenMask, images: Tensor, keep: Tensor, batch_size: int = 1024
) -> Tensor:
    """Logits of ``mask.model`` on each image with only its kept patches, in chunks.

    Rows are processed in order of their number of kept patches, so that in ``"drop"``
    mode every chunk holds sequences of (nearly) equal length and little padding is
    computed; results come back in the original row order. Gradients flow (call under
    ``torch.no_grad()`` for evaluation only).

    Args:
        mask: A :class:`~captum_vit.vit.TokenMask` on the model.
        images: (n, C, H, W) images, or (1, C, H, W) shared by every row of ``keep``.
        keep: (n, N) boolean keep masks.
        batch_size: Largest number of rows per forward pass.

    Returns:
        (n, num_classes) logits.
    """
    n = keep.shape[0]
    if images.shape[0] not in (1, n):
        raise ValueError(
            f"images: expected 1 or {n} images for {n} keep masks, got "
            f"{images.shape[0]}"
        )
    if n == 0:
        return images.new_zeros(0, mask.adapter.num_classes)
    x = images.expand(n, *images.shape[1:]) if images.shape[0] == 1 else images
    outs, order = [], []
    for idx, mode in masked_chunks(keep, mask.mode, batch_size):
        chunk_mask = mask if mode == mask.mode else TokenMask(mask.adapter, mode=mode)
        outs.append(chunk_mask(x[idx.to(x.device)], keep[idx]))
        order.append(idx)
    out = torch.cat(outs, dim=0)
    perm = torch.cat(order)
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(n, device=perm.device)
    return out[inverse.to(out.device)]


def masked_chunks(
    keep: Tensor, mode: str, batch_size: int = 1024
) -> List[Tuple[Tensor, str]]:
    """How :func:`masked_logits` splits rows into forward passes.

    Rows are sorted by their number of kept patches (stable); in ``"drop"`` mode a
    chunk closes early when padding would waste more than 10 % of its token slots,
    and a chunk that keeps no patch at all runs with (the equivalent) attention
    masking, since dropping every patch would leave pooled heads nothing to pool.

    Args:
        keep: (n, N) boolean keep masks.
        mode: The TokenMask mode, ``"attention"`` or ``"drop"``.
        batch_size: Largest number of rows per chunk.

    Returns:
        ``(rows, mode)`` per forward pass: row indices (long, on ``keep``'s device)
        and the mode to run them with; together the rows are ``0..n-1`` once each.
    """
    n = keep.shape[0]
    counts = keep.sum(dim=1)
    order = torch.argsort(counts, stable=True)
    if mode == "drop":
        bounds = _drop_chunks(counts[order].tolist(), batch_size)
    else:
        bounds = [(lo, min(n, lo + batch_size)) for lo in range(0, n, batch_size)]
    out = []
    for lo, hi in bounds:
        idx = order[lo:hi]
        chunk_mode = mode
        if mode == "drop" and int(counts[idx].max()) == 0:
            chunk_mode = "attention"
        out.append((idx, chunk_mode))
    return out


def _drop_chunks(
    sorted_counts: List[int], batch_size: int, max_waste: float = 0.1
) -> List[Tuple[int, int]]:
    """Split rows sorted by kept-patch count into chunks for drop-mode forwards.

    A chunk closes when it holds ``batch_size`` rows or when padding every row to the
    chunk's largest count would waste more than ``max_waste`` of its token slots.
    """
    bounds: List[Tuple[int, int]] = []
    lo, total = 0, 0
    for i, c in enumerate(sorted_counts):
        rows = i - lo + 1
        if rows > batch_size or (
            rows > 1 and rows * (c + 1) > (total + c + rows) * (1 + max_waste)
        ):
            bounds.append((lo, i))
            lo, total, rows = i, 0, 1
        total += c
    if sorted_counts:
        bounds.append((lo, len(sorted_counts)))
    return bounds


class SurrogateGame:
    """The surrogate's class probabilities on subsets of patches.

    ``v_x(s) = softmax(g(x_s))``: patches outside ``s`` are held out with
    :class:`~captum_vit.vit.TokenMask` (``"attention"``: key masking in every block, as
    in ViT Shapley; ``"drop"``: the same values to float precision, computed on shorter
    sequences, so much cheaper). Evaluation runs under
    ``torch.no_grad()`` with the surrogate temporarily in eval mode (its flags are
    restored afterwards).

    ``v(0)`` (no patch kept) does not depend on the image under token masking, because
    the prefix tokens then attend only to each other; it is computed once per patch grid
    and cached (call :meth:`clear_cache` if the surrogate's weights change).

    Args:
        surrogate: A supported timm ViT with at least one prefix token (CLS, register)
            so that the empty coalition can be evaluated.
        mode: ``"attention"`` or ``"drop"`` (default, faster).
        batch_size: Largest number of masked images per forward pass.

    Examples::

        >>> game = SurrogateGame(surrogate)
        >>> v = game.for_image(images[0])            # a game: (n, d) bool -> (n, C)
        >>> phi = exact_shapley(v, 16)                 # (16, C)
        >>> v1, v0 = game.full_value(images), game.empty_value(images)
    """

    def __init__(
        self,
        surrogate: Union[nn.Module, ViTAdapter],
        mode: str = "drop",
        batch_size: int = 1024,
    ) -> None:
        self.adapter = ViTAdapter.of(surrogate)
        self.model = self.adapter.model
        self.adapter.require(CLASS_HEAD, "ViT Shapley")
        self.adapter.require(
            TOKEN_DROP if mode == "drop" else ATTENTION_MASK, "ViT Shapley"
        )
        if self.adapter.num_prefix_tokens < 1:
            raise ValueError(
                "surrogate: ViT Shapley needs a model with at least one prefix token "
                "(CLS or register) so that the empty coalition v(0) is defined"
            )
        self.mask = TokenMask(self.adapter, mode=mode)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self._v0: Dict[Tuple, Tensor] = {}

    @property
    def num_classes(self) -> int:
        """Number of classes C (length of a value vector)."""
        return self.adapter.num_classes

    def clear_cache(self) -> None:
        """Forget the cached ``v(0)``."""
        self._v0.clear()

    def __call__(self, images: Tensor, keep: Tensor) -> Tensor:
        """Values ``v_{x_i}(s_i)`` (n, C), probabilities.

        Args:
            images: (n, C, H, W) images or one (1, C, H, W) image shared by all rows.
            keep: (n, N) boolean keep masks (True = patch kept).
        """
        grid = self.adapter.check_images(images)
        if not isinstance(keep, Tensor) or keep.dtype != torch.bool or keep.dim() != 2:
            raise TypeError("keep: expected an (n, num_patches) boolean tensor")
        if keep.shape[1] != grid[0] * grid[1]:
            raise ValueError(
                f"keep: expected {grid[0] * grid[1]} columns (one per patch), got "
                f"{keep.shape[1]}"
            )
        with torch.no_grad(), eval_mode(self.model):
            logits = masked_logits(
                self.mask, images, keep.to(images.device), self.batch_size
            )
        return logits.float().softmax(dim=-1)

    def for_image(self, image: Tensor) -> Game:
        """The game of one image: a callable (n, d) bool -> (n, C) probabilities.

        Args:
            image: (C, H, W) or (1, C, H, W) model input.
        """
        x = image.unsqueeze(0) if image.dim() == 3 else image
        if x.dim() != 4 or x.shape[0] != 1:
            raise ValueError(
                f"image: expected (C, H, W) or (1, C, H, W), got {tuple(image.shape)}"
            )
        self.adapter.check_images(x, "image")

        def game(keep: Tensor) -> Tensor:
            return self(x, keep)

        return game

    def full_value(self, images: Tensor) -> Tensor:
        """``v(1)``: probabilities with every patch kept, (B, C)."""
        self.adapter.check_images(images)
        with torch.no_grad(), eval_mode(self.model):
            return self.adapter.logits(images).float().softmax(dim=-1)

    def empty_value(self, images: Tensor) -> Tensor:
        """``v(0)``: probabilities with no patch kept, (C,), cached per patch grid.

        Args:
            images: Any batch of model inputs of the size to be explained (only its
                shape and device are used, and its first image for the one forward
                pass that fills the cache).
        """
        grid = self.adapter.check_images(images)
        key = (tuple(grid), tuple(images.shape[1:]), str(images.device))
        if key not in self._v0:
            keep = torch.zeros(1, grid[0] * grid[1], dtype=torch.bool)
            self._v0[key] = self(images[:1], keep)[0].detach()
        return self._v0[key]
