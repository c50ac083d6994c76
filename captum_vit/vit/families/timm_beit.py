"""timm ``Beit`` (BEiT, BEiT v2): relative position bias.

Layout: ``patch_embed`` → CLS token → absolute position embedding (optional) →
``pos_drop`` → blocks called as ``blk(x, shared_rel_pos_bias=...)`` → ``norm`` →
``forward_head`` (mean of patch tokens then ``fc_norm``, or the CLS token).

Each attention adds a relative position bias (1, heads, T, T) to its logits: its own
table (``attn._get_rel_pos_bias()``) and/or the model-level shared one
(``model.rel_pos_bias()``, passed to every block as ``shared_rel_pos_bias``). BEiT's
blocks take no attention mask, so key masking rides on ``shared_rel_pos_bias``: an
additive mask (0 / -inf, (B, 1, 1, T)) is added to it. Dropping tokens re-indexes the
bias to the kept (query, key) pairs of each sample, (B, heads, K, K): the shared bias
through a forward hook on ``model.rel_pos_bias``, each block's own bias by wrapping
its ``_get_rel_pos_bias`` for the duration of the context (an instance attribute that
is removed on exit). Both are exact: a kept token sees exactly the bias entries it
has in the full sequence.
"""

from __future__ import annotations

from typing import Any, List

import torch
import torch.nn as nn
from torch import Tensor

from ..adapter import MaskState, register_family, set_attribute
from ._timm import TimmTokenAdapter


def _gather_bias(bias: Tensor, token_index: Tensor) -> Tensor:
    """(1 | -, heads, T, T) bias → (B, heads, K, K) at the kept token pairs."""
    full = bias.reshape(-1, *bias.shape[-3:])[0] if bias.dim() == 4 else bias
    rows = token_index[:, :, None]  # (B, K, 1)
    cols = token_index[:, None, :]  # (B, 1, K)
    return full[:, rows, cols].permute(
        1, 0, 2, 3
    )  # (heads, B, K, K) → (B, heads, K, K)


@register_family(priority=20)
class BeitAdapter(TimmTokenAdapter):
    """timm ``Beit``."""

    family = "timm_beit"
    family_name = "timm Beit"
    lrp_containers = frozenset({"Beit", "Block", "Attention"})

    @classmethod
    def matches(cls, model: Any) -> bool:
        try:
            from timm.models.beit import Beit
        except ImportError:  # pragma: no cover - timm is a hard dependency
            return False
        return isinstance(model, Beit)

    def _validate(self) -> None:
        if self.model.global_pool not in ("avg", "token"):
            raise self._unsupported(
                f"Beit with global_pool={self.model.global_pool!r} (expected 'avg' or "
                "'token')"
            )
        super()._validate()

    @property
    def pool(self) -> str:
        return "avg" if self.model.global_pool == "avg" else "token"

    def _embed(self, images: Tensor) -> Tensor:
        m = self.model
        x = m.patch_embed(images)
        x = torch.cat((m.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        if m.pos_embed is not None:
            x = x + m.pos_embed
        return m.pos_drop(x)

    def _tokens_module(self) -> nn.Module:
        return self.model.pos_drop

    def _run_block(self, index, block, x, grid):
        shared = self.model.rel_pos_bias
        return block(x, shared_rel_pos_bias=shared() if shared is not None else None)

    def _block_hooks(self, state: MaskState, out: List[Any]) -> None:
        def pre(module, args, kwargs):
            mask = state.additive(args[0].dtype)
            if mask is not None:
                shared = kwargs.get("shared_rel_pos_bias")
                kwargs["shared_rel_pos_bias"] = (
                    mask if shared is None else shared + mask
                )
            return args, kwargs

        def gathered(key, bias: Tensor) -> Tensor:
            index = self.full_token_index(state)
            if index is None:
                return bias
            cached = state.cache.get(key)
            if cached is None or cached[0] is not bias:
                cached = (bias, _gather_bias(bias, index))
                state.cache[key] = cached
            return cached[1]

        shared = self.model.rel_pos_bias
        if shared is not None:
            out.append(
                shared.register_forward_hook(
                    lambda m, a, bias: gathered("shared", bias)
                )
            )
        for i, blk in enumerate(self.model.blocks):
            out.append(blk.register_forward_pre_hook(pre, with_kwargs=True))
            attn = blk.attn
            if getattr(attn, "relative_position_bias_table", None) is None:
                continue
            own = type(attn)._get_rel_pos_bias.__get__(attn)
            out.append(
                set_attribute(
                    attn,
                    "_get_rel_pos_bias",
                    lambda own=own, i=i: gathered(("block", i), own()),
                )
            )


__all__ = ["BeitAdapter"]
