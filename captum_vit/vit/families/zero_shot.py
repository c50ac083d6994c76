"""``ZeroShotClassifier``: the adapter sees through it to the image tower.

Everything about tokens, blocks, masking and attention is the tower's own family
adapter's (OpenCLIP, Hugging Face CLIP / SigLIP, timm, ...), bound to the tower; only
the head differs: after the tower's own readout (pooling and its projection) come the
classifier's projection (Hugging Face CLIP's ``visual_projection``), the
normalisation and the image–text scores over the K prompts. So the classifier has the
tower's capabilities plus a class head (K classes), and every method explains
``target = k`` as "why this image matches prompt k". LRP rules are not offered (the
head is a cosine, not a linear layer).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch.nn as nn
from torch import Tensor

from ..adapter import (
    ATTNLRP_RULES,
    LRP_RULES,
    MaskState,
    Normalization,
    ViTAdapter,
    register_family,
)
from ..zero_shot import ZeroShotClassifier


def _delegate(name: str) -> property:
    return property(lambda self: getattr(self.inner, name))


@register_family(priority=80)
class ZeroShotAdapter(ViTAdapter):
    """:class:`~captum_vit.vit.zero_shot.ZeroShotClassifier` around a served tower."""

    family = "zero_shot"
    inner: ViTAdapter

    @classmethod
    def matches(cls, model: Any) -> bool:
        return isinstance(model, ZeroShotClassifier)

    def _validate(self) -> None:
        self.inner = ViTAdapter(self.model.tower)
        self.family = f"zero_shot/{self.inner.family}"

    @property
    def family_name(self) -> str:  # type: ignore[override]
        return f"ZeroShotClassifier({self.inner.family_name})"

    # ---------------------------------------------------- the head is ours
    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    def _headless_reason(self) -> str:
        return "its text embeddings were removed"

    def _remove_head(self, model: nn.Module) -> None:
        k = model.text_embeddings
        model.text_embeddings = k[:0]

    def _has_lrp_rules(self) -> bool:
        return False

    def missing_reason(self, capability: str) -> str:
        if capability in (LRP_RULES, ATTNLRP_RULES):
            return (
                "does not have: its head is an image-text cosine score, not a linear "
                "classifier"
            )
        return self.inner.missing_reason(capability)

    def _head_from_normed(self, x: Tensor) -> Tensor:
        feats = self.inner._head_from_normed(x)
        if self.model.projection is not None:
            feats = self.model.projection(feats)
        return self.model.scores(feats)

    def _after_blocks(self) -> List[nn.Module]:
        out = list(self.inner._after_blocks())
        if self.model.projection is not None:
            out.append(self.model.projection)
        return out

    def parameter_groups(self) -> List[Tuple[str, List[Tuple[str, nn.Parameter]]]]:
        groups = [
            (g, [(f"tower.{n}", p) for n, p in ps])
            for g, ps in self.inner.parameter_groups()
        ]
        proj = self.model.projection
        extra = [] if proj is None else list(proj.named_parameters("projection"))
        if extra:
            if groups and groups[0][0] == "head":
                groups[0] = ("head", groups[0][1] + extra)
            else:
                groups.insert(0, ("head", extra))
        return groups

    def trunk_state_names(self, stop: int) -> List[str]:
        return [f"tower.{n}" for n in self.inner.trunk_state_names(stop)]

    # -------------------------------------------- everything else is the tower's
    num_prefix_tokens = _delegate("num_prefix_tokens")  # type: ignore[assignment]
    patch_size = _delegate("patch_size")  # type: ignore[assignment]
    image_size = _delegate("image_size")  # type: ignore[assignment]
    grid_size = _delegate("grid_size")  # type: ignore[assignment]
    embed_dim = _delegate("embed_dim")  # type: ignore[assignment]
    in_chans = _delegate("in_chans")  # type: ignore[assignment]
    casts_inputs = _delegate("casts_inputs")  # type: ignore[assignment]
    pool = _delegate("pool")  # type: ignore[assignment]
    pool_include_prefix = _delegate("pool_include_prefix")  # type: ignore[assignment]
    readout_prefix_weights = _delegate(  # type: ignore[assignment]
        "readout_prefix_weights"
    )
    blocks = _delegate("blocks")  # type: ignore[assignment]
    dynamic_img_size = _delegate("dynamic_img_size")  # type: ignore[assignment]
    pool_offset = _delegate("pool_offset")  # type: ignore[assignment]
    feature_distance_threshold = _delegate(  # type: ignore[assignment]
        "feature_distance_threshold"
    )

    @property
    def input_normalization(self) -> Optional[Normalization]:
        return self.inner.input_normalization

    def _family_capabilities(self) -> Sequence[str]:
        return self.inner._family_capabilities()

    def _walked_capabilities(self) -> Dict[str, Callable[[], bool]]:
        # the tower's block-level checks; the rules of the head are this adapter's
        inner = self.inner._walked_capabilities()
        own = super()._walked_capabilities()
        return {**{c: f for c, f in inner.items() if c not in own}, **own}

    def attention_modules(self) -> List[nn.Module]:
        return self.inner.attention_modules()

    def _dynamic_grid(self, hw: Tuple[int, int]) -> Tuple[int, int]:
        return self.inner._dynamic_grid(hw)

    def _input_module(self) -> nn.Module:
        return self.inner._input_module()

    def _needs_patch_multiple(self) -> bool:
        return self.inner._needs_patch_multiple()

    def _strict_size(self) -> bool:
        return self.inner._strict_size()

    def _embed(self, images: Tensor) -> Tensor:
        return self.inner._embed(images)

    def _grid_for_tokens(self, tokens, grid):
        return self.inner._grid_for_tokens(tokens, grid)

    def _run_block(self, index, block, x, grid):
        return self.inner._run_block(index, block, x, grid)

    def _block_group(self, index: int) -> List[nn.Module]:
        return self.inner._block_group(index)

    def _final_norm_module(self) -> nn.Module:
        return self.inner._final_norm_module()

    def _tokens_module(self) -> nn.Module:
        return self.inner._tokens_module()

    def _block_hooks(self, state: MaskState, out: List[Any]) -> None:
        self.inner._block_hooks(state, out)

    def _pool_hooks(self, state: MaskState, out: List[Any]) -> None:
        self.inner._pool_hooks(state, out)

    def _attention_hooks(
        self,
        layers: List[int],
        on_block: Callable[[int, Tensor], None],
        on_pool: Optional[Callable[[Tensor], None]],
        handles: List[Any],
    ) -> None:
        self.inner._attention_hooks(layers, on_block, on_pool, handles)

    def _value_hooks(
        self,
        layers: List[int],
        on_block: Callable[[int, Tensor, Tensor], None],
        out: List[Any],
    ) -> None:
        self.inner._value_hooks(layers, on_block, out)

    def feature_module(self) -> nn.Module:
        return self.inner.feature_module()

    def _attention_input_of(self, block: nn.Module) -> Optional[nn.Module]:
        return self.inner._attention_input_of(block)

    def feature_maps(self, output: Any, images: Tensor) -> Tensor:
        return self.inner.feature_maps(output, images)


__all__ = ["ZeroShotAdapter"]
