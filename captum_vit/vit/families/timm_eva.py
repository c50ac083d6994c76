"""timm ``Eva`` (EVA-02 style, rotary position embeddings).

Like the timm ViT, but ``_pos_embed`` returns ``(tokens, rope)`` and every block takes
``rope=`` (rotary embeddings of the patch tokens, (N, dim)). Blocks take ``attn_mask``
(boolean), so masking is direct; dropping tokens re-indexes the rotary embedding to the
kept patches per sample ((B, 1, K, dim), as ``timm.layers.apply_keep_indices_nlc``
does for timm's own patch dropout).
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import torch.nn as nn
from torch import Tensor

from ..adapter import MaskState, register_family
from ._timm import TimmTokenAdapter

_POOLS = ("token", "avg", "max", "avgmax")


@register_family(priority=10)
class EvaAdapter(TimmTokenAdapter):
    """timm ``Eva``."""

    family = "timm_eva"
    family_name = "timm Eva"
    lrp_containers = frozenset({"Eva", "EvaBlock", "EvaBlockPostNorm", "EvaAttention"})

    @classmethod
    def matches(cls, model: Any) -> bool:
        try:
            from timm.models.eva import Eva
        except ImportError:  # pragma: no cover - timm is a hard dependency
            return False
        return isinstance(model, Eva)

    def _validate(self) -> None:
        m = self.model
        if getattr(m, "attn_pool", None) is not None:
            raise self._unsupported("Eva with attention pooling")
        if m.global_pool not in _POOLS:
            raise self._unsupported(
                f"Eva with global_pool={m.global_pool!r} (expected one of {_POOLS})"
            )
        if getattr(m, "rope_mixed", False):
            raise self._unsupported(
                "Eva with depth-dependent ('mixed') rotary embeddings"
            )
        super()._validate()

    @property
    def pool(self) -> str:
        return str(self.model.global_pool)

    @property
    def pool_include_prefix(self) -> bool:
        return bool(getattr(self.model, "pool_include_prefix", False))

    def _embed(self, images: Tensor) -> Tensor:
        x, _ = self.model._pos_embed(self.model.patch_embed(images))
        return self.model.norm_pre(x)

    def _tokens_module(self) -> nn.Module:
        return self.model.norm_pre

    def rope(self, grid: Tuple[int, int]) -> Optional[Tensor]:
        """Rotary embedding (N, dim) for a patch grid, or None."""
        rope = self.model.rope
        if rope is None:
            return None
        if tuple(grid) == self.grid_size and hasattr(rope, "feat_shape"):
            return rope.get_embed()
        return rope.get_embed(shape=list(grid))

    def _grid_for_tokens(self, tokens, grid):
        g = super()._grid_for_tokens(tokens, grid)
        if g is None:
            n = tokens.shape[1] - self.num_prefix_tokens
            raise ValueError(
                "grid: this Eva model needs the patch grid for a sequence of "
                f"{n} patch tokens (pass grid=(gh, gw))"
            )
        return g

    def _run_block(self, index, block, x, grid):
        rope = self.rope(grid)
        return block(x) if rope is None else block(x, rope=rope)

    def _block_hooks(self, state: MaskState, out: List[Any]) -> None:
        def pre(module, args, kwargs):
            if state.valid is not None:
                kwargs["attn_mask"] = state.valid[:, None, None, :]
            rope = kwargs.get("rope")
            if state.index is not None and rope is not None:
                cached = state.cache.get("rope")
                if cached is None or cached[0] is not rope:
                    cached = (rope, rope[state.index].unsqueeze(1))  # (B, 1, K, dim)
                    state.cache["rope"] = cached
                kwargs["rope"] = cached[1]
            return args, kwargs

        for blk in self.model.blocks:
            out.append(blk.register_forward_pre_hook(pre, with_kwargs=True))


__all__ = ["EvaAdapter"]
