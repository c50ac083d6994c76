"""What timm's families share: geometry from ``patch_embed``, the class count and the
``pretrained_cfg`` normalisation (every timm family, Swin included); and what the
token-sequence families (ViT, Eva, BEiT) share besides.

Blocks are ``model.blocks``; the final norm is
``model.norm`` and ``model.forward_head`` pools and classifies. Attention modules keep
their post-softmax probabilities in ``attn.attn_drop`` on the explicit path; timm's
fused kernel (``fused_attn=True``, the default) never materialises them, so recording
sets each module's ``fused_attn`` to False for the call and restores it.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

import torch.nn as nn
from torch import Tensor

from ..adapter import Normalization, ViTAdapter, set_attribute


def pretrained_cfg_normalization(model: Any) -> Optional[Normalization]:
    """``(mean, std)`` recorded in a timm model's ``pretrained_cfg`` (or
    ``default_cfg``), which ``timm.create_model`` attaches to every model it builds,
    pretrained or not; None for a model without that record (e.g. built from its
    class directly)."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    if not isinstance(cfg, dict) or "mean" not in cfg or "std" not in cfg:
        return None
    return tuple(cfg["mean"]), tuple(cfg["std"])


class TimmAdapter(ViTAdapter):
    """Shared base of the timm adapters (not a family itself): what ``patch_embed``,
    ``num_classes`` and ``pretrained_cfg`` say."""

    @property
    def patch_size(self) -> Tuple[int, int]:
        return tuple(int(p) for p in self.model.patch_embed.patch_size)

    @property
    def grid_size(self) -> Tuple[int, int]:
        return tuple(int(g) for g in self.model.patch_embed.grid_size)

    @property
    def image_size(self) -> Tuple[int, int]:
        return tuple(int(s) for s in self.model.patch_embed.img_size)

    @property
    def num_classes(self) -> int:
        return int(self.model.num_classes)

    @property
    def in_chans(self) -> Optional[int]:
        proj = getattr(self.model.patch_embed, "proj", None)
        return int(proj.in_channels) if hasattr(proj, "in_channels") else None

    @property
    def input_normalization(self) -> Optional[Normalization]:
        return pretrained_cfg_normalization(self.model)

    def _input_module(self) -> nn.Module:
        return self.model.patch_embed


class TimmTokenAdapter(TimmAdapter):
    """Shared base of the timm token-sequence adapters (not a family itself)."""

    def _validate(self) -> None:
        for i, blk in enumerate(self.model.blocks):
            attn = getattr(blk, "attn", None)
            if attn is None or not hasattr(attn, "attn_drop"):
                raise self._unsupported(
                    f"block {i} ({type(blk).__name__}) without a standard attention "
                    "module"
                )

    # ------------------------------------------------------------ geometry
    @property
    def num_prefix_tokens(self) -> int:
        return int(self.model.num_prefix_tokens)

    @property
    def embed_dim(self) -> int:
        return int(self.model.embed_dim)

    @property
    def dynamic_img_size(self) -> bool:
        return bool(getattr(self.model, "dynamic_img_size", False))

    def _dynamic_grid(self, hw: Tuple[int, int]) -> Tuple[int, int]:
        return tuple(int(g) for g in self.model.patch_embed.dynamic_feat_size(hw))

    def _strict_size(self) -> bool:
        return bool(getattr(self.model.patch_embed, "strict_img_size", True))

    def _needs_patch_multiple(self) -> bool:
        return not getattr(self.model.patch_embed, "dynamic_img_pad", False)

    @property
    def blocks(self) -> List[nn.Module]:
        return list(self.model.blocks)

    def attention_modules(self) -> List[nn.Module]:
        return [blk.attn for blk in self.model.blocks]

    # ------------------------------------------------------------ forward parts
    def _final_norm_module(self) -> nn.Module:
        return self.model.norm

    def _head_from_normed(self, x: Tensor) -> Tensor:
        return self.model.forward_head(x)

    def _after_blocks(self) -> List[nn.Module]:
        names = ("norm", "fc_norm", "head", "head_dist", "head_drop", "attn_pool")
        return [
            m for n in names if isinstance(m := getattr(self.model, n, None), nn.Module)
        ]

    # ------------------------------------------------------------ attention
    def _attention_hooks(
        self,
        layers: List[int],
        on_block: Callable[[int, Tensor], None],
        on_pool: Optional[Callable[[Tensor], None]],
        handles: List[Any],
    ) -> None:
        modules = self.attention_modules()
        for i in layers:
            mod = modules[i]
            if hasattr(mod, "fused_attn"):
                handles.append(set_attribute(mod, "fused_attn", False))
            handles.append(
                mod.attn_drop.register_forward_hook(
                    lambda m, a, out, i=i: on_block(i, out)
                )
            )
