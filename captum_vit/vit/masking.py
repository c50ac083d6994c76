"""Evaluate a ViT on a subset of its patch tokens.

Two ways to hide a patch token from a ViT, both exact:

- ``"attention"``: the token stays in the sequence but is masked as an attention key in
  every block (the ViT Shapley surrogate's masking, Covert et al. 2023);
- ``"drop"``: the token is removed from the sequence right after the positional
  embedding (Transformer Input Sampling, Englebert et al. 2023), so the forward pass is
  cheaper. When samples in a batch keep different numbers of tokens the shorter
  sequences are padded and the padding is key-masked.

In both modes prefix tokens (CLS, distillation, registers) are always kept, pooled heads
(avg/max) pool over kept patch tokens only and attention pools (SigLIP's ``map``) mask
held-out keys too, so the two modes agree to float precision. Position terms that
depend on the token (Eva's rotary embeddings, BEiT's relative position bias) are
re-indexed to the kept tokens when dropping. Everything is done with hooks that the
model's adapter installs and removes on exit, also when the forward raises; the model's
parameters and flags are never changed. Families that cannot drop or mask tokens (Swin)
raise a ``TypeError`` naming the capability.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Union

import torch
import torch.nn as nn
from torch import Tensor

from .._utils import check_image_batch
from .adapter import ATTENTION_MASK, TOKEN_DROP, ViTAdapter, drop_index, logits_of

_MODES = ("attention", "drop")

__all__ = ["TokenMask", "drop_index"]


class TokenMask:
    """Run a ViT on a subset of patch tokens, a different subset per sample.

    Args:
        model: A supported ViT (see :class:`ViTAdapter`) whose family can mask
            (``"attention"``) or drop (``"drop"``) tokens.
        mode: ``"attention"`` (key masking in every block, same sequence length) or
            ``"drop"`` (tokens removed after the positional embedding: fewer tokens,
            cheaper forward passes).

    Raises:
        ValueError: unknown ``mode``.
        TypeError: a model the family adapters do not serve, or a family without the
            capability (e.g. Swin).

    Examples::

        >>> keep = torch.rand(images.shape[0], 196) < 0.5   # (B, N) bool
        >>> logits = TokenMask(model, mode="drop")(images, keep)
        >>> with TokenMask(model).keep(keep):
        ...     logits = model(images)
    """

    def __init__(self, model: Union[nn.Module, ViTAdapter], mode: str = "attention"):
        if mode not in _MODES:
            raise ValueError(f"mode: expected one of {_MODES}, got {mode!r}")
        self.adapter = ViTAdapter.of(model)
        self.adapter.require(
            TOKEN_DROP if mode == "drop" else ATTENTION_MASK,
            "TokenMask" if mode == "attention" else 'TokenMask(mode="drop")',
        )
        self.model = self.adapter.model
        self.mode = mode

    def __call__(self, images: Tensor, keep: Tensor) -> Tensor:
        """Model output computed from only the kept patch tokens.

        Args:
            images: (B, C, H, W) input batch.
            keep: (B, N) boolean, True where a patch token is kept (row-major patch
                order, N = gh * gw for these images).

        Returns:
            The model's output (logits; ``.logits`` of Hugging Face outputs) for the
            masked inputs, (B, num_classes).

        Raises:
            TypeError: not a tensor, integer images (e.g. uint8: convert and normalise
                them), or another floating-point dtype than the model's; ``keep``
                not a boolean (B, N) tensor.
            ValueError: an empty batch, NaN or infinite values, a channels-last or
                otherwise misshapen batch, or ``keep`` of another shape.
        """
        # the input guard of every method: check_image_batch, then the model's
        # layout and dtype checks in ViTAdapter.check_images
        check_image_batch("images", images)
        gh, gw = self.adapter.check_images(images, "images")
        self.adapter.check_keep(keep, images.shape[0], gh * gw)
        with self.keep(keep):
            return logits_of(self.model(images))

    @contextmanager
    def keep(self, keep: Tensor) -> Iterator["TokenMask"]:
        """Context manager: every forward of the model inside sees only kept tokens.

        Args:
            keep: (B, N) boolean keep mask for the batch that will be passed.

        Yields:
            This ``TokenMask``.
        """
        if not isinstance(keep, Tensor) or keep.dtype != torch.bool or keep.dim() != 2:
            raise TypeError(
                "keep: expected a boolean tensor of shape (batch, num_patches)"
            )
        with self.adapter.masking(keep, self.mode):
            yield self
