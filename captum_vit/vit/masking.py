"""Evaluate a ViT on a subset of its patch tokens.

Two ways to hide a patch token from a ViT, both exact:

- ``"attention"``: the token stays in the sequence but is masked as an attention key in
  every block (the ViT Shapley surrogate's masking, Covert et al. 2023);
- ``"drop"``: the token is removed from the sequence right after the positional
  embedding (Transformer Input Sampling, Englebert et al. 2023), so the forward pass is
  cheaper. When samples in a batch keep different numbers of tokens the shorter
  sequences are padded and the padding is key-masked.

In both modes prefix tokens (CLS, distillation, registers) are always kept, and pooled
heads (avg/max) pool over kept patch tokens only, so the two modes agree to float
precision. Everything is done with forward hooks that are removed on exit, also when the
forward raises; the model's parameters and flags are never touched.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Dict, Iterator, Optional, Tuple, Union

import torch
import torch.nn as nn
from torch import Tensor

from .adapter import ViTAdapter

_MODES = ("attention", "drop")


class _MaskState:
    """Per-forward state shared by the hooks of one ``TokenMask.keep`` context."""

    def __init__(self) -> None:
        self.attn_mask: Optional[Tensor] = None  # (B, 1, 1, T') bool or None
        self.valid: Optional[Tensor] = None  # (B, T') bool: tokens that exist
        self.index: Optional[Tensor] = None  # (B, K) kept patch indices (drop mode)
        self._rope_cache: Optional[Tuple[Tensor, Tensor]] = None

    def rope(self, adapter: ViTAdapter, rope: Tensor) -> Tensor:
        """Rotary embedding of the kept patches, cached across blocks."""
        if self._rope_cache is None or self._rope_cache[0] is not rope:
            self._rope_cache = (rope, adapter.gather_rope(rope, self.index))
        return self._rope_cache[1]


def drop_index(keep: Tensor) -> Tuple[Tensor, Tensor]:
    """Indices of kept patches per sample, in patch order, padded to the largest count.

    Args:
        keep: (B, N) boolean keep mask.

    Returns:
        ``(index, valid)``: (B, K) long indices into the N patches (padding points at a
        held-out patch and must be masked) and the (B, K) boolean validity mask, with
        K the largest number of kept patches in the batch, at least 1: a batch that
        keeps no patch at all still carries one masked slot, so pooled heads see an
        empty (zero) pool as in attention mode instead of a mean over nothing.
    """
    counts = keep.sum(dim=1)
    k = max(int(counts.max()), 1) if keep.numel() else 0
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :k]
    valid = torch.arange(k, device=keep.device)[None, :] < counts[:, None]
    return order, valid


class TokenMask:
    """Run a timm ViT on a subset of patch tokens, a different subset per sample.

    Args:
        model: A supported timm ViT (see :class:`ViTAdapter`).
        mode: ``"attention"`` (key masking in every block, same sequence length) or
            ``"drop"`` (tokens removed after the positional embedding: fewer tokens,
            cheaper forward passes).

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
        self.model = self.adapter.model
        self.mode = mode

    def __call__(self, images: Tensor, keep: Tensor) -> Tensor:
        """Model output computed from only the kept patch tokens.

        Args:
            images: (B, C, H, W) input batch.
            keep: (B, N) boolean, True where a patch token is kept (row-major patch
                order, N = gh * gw for these images).

        Returns:
            The model's output (logits) for the masked inputs, (B, num_classes).
        """
        gh, gw = self.adapter.check_images(images)
        self.adapter.check_keep(keep, images.shape[0], gh * gw)
        with self.keep(keep):
            return self.model(images)

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
        adapter, state = self.adapter, _MaskState()
        handles = [
            self.model.norm_pre.register_forward_hook(
                lambda m, a, out: self._on_tokens(out, keep, state)
            ),
            self.model.norm.register_forward_hook(
                lambda m, a, out: self._on_final_norm(out, state)
            ),
        ]
        try:
            for blk in adapter.blocks:
                handles.append(
                    blk.register_forward_pre_hook(
                        lambda m, a, kw: self._on_block(a, kw, state),
                        with_kwargs=True,
                    )
                )
            yield self
        finally:
            for h in handles:
                h.remove()

    # ------------------------------------------------------------------ hooks
    def _on_tokens(self, x: Tensor, keep: Tensor, state: _MaskState) -> Tensor:
        adapter = self.adapter
        p = adapter.num_prefix_tokens
        keep = adapter.check_keep(keep.to(x.device), x.shape[0], x.shape[1] - p)
        if self.mode == "attention":
            state.attn_mask = adapter.key_mask(keep)
            state.valid = state.attn_mask[:, 0, 0]
            state.index = None
            return x
        index, valid_patch = drop_index(keep)
        patches = x[:, p:].gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        state.index = index
        state._rope_cache = None
        if bool(valid_patch.all()):  # equal counts: no padding, no mask needed
            state.attn_mask, state.valid = None, None
        else:
            state.attn_mask = adapter.key_mask(valid_patch)
            state.valid = state.attn_mask[:, 0, 0]
        return torch.cat([x[:, :p], patches], dim=1)

    def _on_block(
        self, args: Tuple[Any, ...], kwargs: Dict[str, Any], state: _MaskState
    ) -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
        if state.attn_mask is not None:
            kwargs["attn_mask"] = state.attn_mask
        rope = kwargs.get("rope")
        if state.index is not None and rope is not None:
            kwargs["rope"] = state.rope(self.adapter, rope)
        return args, kwargs

    def _on_final_norm(self, out: Tensor, state: _MaskState) -> Tensor:
        if state.valid is None:
            return out
        return self.adapter.fill_held_out(out, state.valid)
