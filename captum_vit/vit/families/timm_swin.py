"""timm ``SwinTransformer``: windowed attention on a shrinking patch grid.

Swin has no flat token sequence: ``patch_embed`` gives an NHWC map of 4×4-pixel patches,
each stage attends within (shifted) local windows, and patch merging halves the grid
between stages; the head average-pools the last stage. So the methods that need a flat
sequence of patch tokens (TIS, TokenMask, rollout, GenAtt, raw attention, ViT Shapley,
PLUS/SkipPLUS over blocks) raise the capability error, and so does Transformer
Attribution (no LRP rules for its blocks). What works: ViT-CX on the last stage's
feature map (the paper's Swin setting, with its 0.05 distance threshold), Grad-CAM on a
block's normalised NHWC map (the last block's by default), RISE, Captum's gradient and
perturbation methods on the model itself, and every metric with a pixel baseline or
ROAD's imputation (its features are the patch-embedding grid), and the parameter
randomisation test (a stage's patch merging is randomised with the block after it).

PLUS/SkipPLUS are not offered: their sum over blocks adds token attributions of hidden
states that live on different grids (patch merging maps 2×2 tokens to one between
stages), for which the paper gives no definition.
"""

from __future__ import annotations

from typing import Any, List, Sequence

import torch.nn as nn
from torch import Tensor

from ..adapter import (
    ATTENTION_MASK,
    RECORDED_ATTENTION,
    TOKENS,
    TOKEN_DROP,
    register_family,
)
from ._timm import TimmAdapter

_WHY = "does not allow: its shifted windows need the full patch grid"


@register_family(priority=40)
class SwinAdapter(TimmAdapter):
    """timm ``SwinTransformer``."""

    family = "timm_swin"
    family_name = "timm SwinTransformer"
    missing_reasons = {
        TOKENS: (
            "does not have: its hidden states are NHWC maps whose grid shrinks "
            "between stages (patch merging)"
        ),
        TOKEN_DROP: _WHY,
        ATTENTION_MASK: _WHY,
        RECORDED_ATTENTION: (
            "does not offer: its attention is local to (shifted) windows, so there is "
            "no token-to-token attention over the image to propagate"
        ),
    }

    @classmethod
    def matches(cls, model: Any) -> bool:
        try:
            from timm.models.swin_transformer import SwinTransformer
        except ImportError:  # pragma: no cover - timm is a hard dependency
            return False
        return isinstance(model, SwinTransformer)

    def _validate(self) -> None:
        if getattr(self.model, "output_fmt", "NHWC") != "NHWC":
            raise self._unsupported("SwinTransformer with a non-NHWC layout")

    def _family_capabilities(self) -> Sequence[str]:
        return ()

    # ------------------------------------------------------------ geometry
    @property
    def num_prefix_tokens(self) -> int:
        return 0

    @property
    def embed_dim(self) -> int:
        return int(self.model.num_features)

    @property
    def pool(self) -> str:
        return "avg"

    @property
    def blocks(self) -> List[nn.Module]:
        return [blk for stage in self.model.layers for blk in stage.blocks]

    def attention_modules(self) -> List[nn.Module]:
        return [blk.attn for blk in self.blocks]

    # ------------------------------------------------------------ parameters
    def _after_blocks(self) -> List[nn.Module]:
        return [self.model.norm, self.model.head]

    def _block_group(self, index: int) -> List[nn.Module]:
        """A stage's patch merging runs right before its first block and belongs to
        that block's group."""
        group = [self.blocks[index]]
        start = 0
        for stage in self.model.layers:
            if index == start and isinstance(
                getattr(stage, "downsample", None), nn.Module
            ):
                group.insert(0, stage.downsample)
            start += len(stage.blocks)
        return group

    # ------------------------------------------------------------ feature maps
    @property
    def feature_distance_threshold(self) -> float:
        return 0.05

    def feature_module(self) -> nn.Module:
        return self.model.layers[-1]

    def feature_maps(self, output: Any, images: Tensor) -> Tensor:
        """(B, C, h, w) maps from an NHWC stage output (the last stage by default)."""
        self.check_images(images)
        b = images.shape[0]
        if not isinstance(output, Tensor) or output.dim() != 4 or output.shape[0] != b:
            shape = (
                tuple(output.shape)
                if isinstance(output, Tensor)
                else type(output).__name__
            )
            raise ValueError(
                f"layer: expected an NHWC feature map (B, h, w, C) with B = {b}, got "
                f"{shape}; pick a Swin stage such as model.layers[-1]"
            )
        return output.permute(0, 3, 1, 2)


__all__ = ["SwinAdapter"]
