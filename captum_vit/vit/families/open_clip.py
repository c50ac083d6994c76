"""OpenCLIP's image tower, ``open_clip.transformer.VisionTransformer`` (the
``visual`` of ``open_clip.create_model(...)``; optional extra ``captum-vit[clip]``).

Layout: ``conv1`` (patches) → CLS token (``class_embedding``) prepended →
``positional_embedding`` added → ``patch_dropout`` (identity in eval mode) → ``ln_pre``
→ ``transformer.resblocks`` (each a ``ResidualAttentionBlock`` around a batch-first
``nn.MultiheadAttention``) → ``ln_post`` → pooling (``pool_type='tok'``: the CLS
token; ``'avg'``: the mean of the patch tokens) → ``@ proj``. One prefix token, a
fixed image size.

The tower ends in an image *embedding*, not in class logits: on its own it is
headless (``num_classes == 0``), so the class-specific methods refuse it with the
usual capability error; :class:`captum_vit.vit.zero_shot.ZeroShotClassifier` turns an
image–text model into a classifier whose tower this adapter serves.

Masking and recording work as for torchvision's ``VisionTransformer`` (whose blocks
also call ``nn.MultiheadAttention`` with ``need_weights=False``): forward pre-hooks on
the attention modules add a ``key_padding_mask`` for held-out keys, or ask for the
(B, heads, T, T) probabilities, and with grad enabled the attention output is
recomputed from the reported probabilities so that gradients reach them.

Served: the default blocks (``block_type='default'``), ``pool_type`` ``'tok'`` or
``'avg'`` without an attentional pooler, and ``final_ln_after_pool`` with the CLS
token (``ln_post`` acts per token, so normalising before or after picking the CLS row
is the same). Not served, with a one-line ``TypeError``: the ``'custom'`` blocks
(open_clip's own ``Attention``: qk-norm, scaled-cosine attention), the CoCa attention
pooler, ``pool_type='none'`` and an average pool normalised after pooling.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from ..adapter import Normalization, ViTAdapter, register_family
from ._mha import MultiheadAttentionHooks


def _is_open_clip_vit(model: Any) -> bool:
    if not any(
        k.__name__ == "VisionTransformer" and k.__module__.startswith("open_clip.")
        for k in type(model).__mro__
    ):
        return False
    from open_clip.transformer import VisionTransformer

    return isinstance(model, VisionTransformer)


@register_family(priority=70)
class OpenCLIPVisionAdapter(MultiheadAttentionHooks, ViTAdapter):
    """OpenCLIP ``VisionTransformer`` (the image tower of an OpenCLIP model)."""

    family = "open_clip_vit"
    family_name = "OpenCLIP VisionTransformer"

    @classmethod
    def matches(cls, model: Any) -> bool:
        return isinstance(model, nn.Module) and _is_open_clip_vit(model)

    def _validate(self) -> None:
        m = self.model
        if getattr(m, "attn_pool", None) is not None:
            raise self._unsupported(
                "an OpenCLIP VisionTransformer with an attentional pooler (CoCa)"
            )
        pool = getattr(m, "pool_type", "tok")
        if pool not in ("tok", "avg"):
            raise self._unsupported(
                f"an OpenCLIP VisionTransformer with pool_type={pool!r} (expected "
                "'tok' or 'avg')"
            )
        if pool == "avg" and getattr(m, "final_ln_after_pool", False):
            raise self._unsupported(
                "an OpenCLIP VisionTransformer with pool_type='avg' and "
                "final_ln_after_pool=True"
            )
        if not getattr(m.transformer, "batch_first", True):
            raise self._unsupported(
                "an OpenCLIP VisionTransformer whose transformer is not batch-first"
            )
        for i, blk in enumerate(m.transformer.resblocks):
            mha = getattr(blk, "attn", None)
            if not (
                isinstance(mha, nn.MultiheadAttention)
                and mha.batch_first
                and mha._qkv_same_embed_dim
                and mha.bias_k is None
                and not mha.add_zero_attn
                and not hasattr(blk, "ln_1_kv")
            ):
                raise self._unsupported(
                    f"OpenCLIP block {i} ({type(blk).__name__}, {type(mha).__name__}"
                    " attention) without a standard batch-first nn.MultiheadAttention "
                    "(block_type='custom')"
                )

    # ------------------------------------------------------------ geometry
    @property
    def num_prefix_tokens(self) -> int:
        return 1

    @property
    def patch_size(self) -> Tuple[int, int]:
        p = self.model.patch_size
        p = tuple(p) if isinstance(p, (tuple, list)) else (p, p)
        return (int(p[0]), int(p[1]))

    @property
    def image_size(self) -> Tuple[int, int]:
        s = self.model.image_size
        s = tuple(s) if isinstance(s, (tuple, list)) else (s, s)
        return (int(s[0]), int(s[1]))

    @property
    def embed_dim(self) -> int:
        return int(self.model.transformer.width)

    @property
    def num_classes(self) -> int:
        return 0  # an image embedding, not class logits

    def _headless_reason(self) -> str:
        return (
            "it outputs an image embedding; wrap the image-text model in "
            "captum_vit.ZeroShotClassifier for class scores"
        )

    def _remove_head(self, model: nn.Module) -> None:
        model.proj = None

    @property
    def in_chans(self) -> Optional[int]:
        return int(self.model.conv1.in_channels)

    def _input_module(self) -> nn.Module:
        return self.model.conv1

    @property
    def input_normalization(self) -> Optional[Normalization]:
        """The ``image_mean`` / ``image_std`` that ``open_clip.create_model`` records
        on the tower (None on a tower built from its class)."""
        mean = getattr(self.model, "image_mean", None)
        std = getattr(self.model, "image_std", None)
        if mean is None or std is None:
            return None
        return tuple(float(v) for v in mean), tuple(float(v) for v in std)

    @property
    def pool(self) -> str:
        return "avg" if self.model.pool_type == "avg" else "token"

    @property
    def blocks(self) -> List[nn.Module]:
        return list(self.model.transformer.resblocks)

    def attention_modules(self) -> List[nn.Module]:
        return [blk.attn for blk in self.model.transformer.resblocks]

    # ------------------------------------------------------------ forward parts
    def _embed(self, images: Tensor) -> Tensor:
        m = self.model
        x = m.conv1(images)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = m.class_embedding.to(x.dtype).reshape(1, 1, -1).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + m.positional_embedding.to(x.dtype)
        return m.ln_pre(m.patch_dropout(x))

    def _tokens_module(self) -> nn.Module:
        return self.model.ln_pre

    def _final_norm_module(self) -> nn.Module:
        return self.model.ln_post

    def _head_from_normed(self, x: Tensor) -> Tensor:
        m = self.model
        pooled = x[:, 1:].mean(dim=1) if m.pool_type == "avg" else x[:, 0]
        return pooled if m.proj is None else pooled @ m.proj

    def _after_blocks(self) -> List[nn.Module]:
        return [self.model.ln_post]

    def _attention_input_of(self, block: nn.Module) -> Optional[nn.Module]:
        return getattr(block, "ln_1", None)

    # ------------------------------------------- the projection is a bare Parameter
    def parameter_groups(self) -> List[Tuple[str, List[Tuple[str, nn.Parameter]]]]:
        groups = super().parameter_groups()
        proj = self.model.proj
        if proj is None:
            return groups
        moved: List[Tuple[str, nn.Parameter]] = []
        out = []
        for g, params in groups:
            moved += [(n, p) for n, p in params if p is proj]
            out.append((g, [(n, p) for n, p in params if p is not proj]))
        if out and out[0][0] == "head":
            out[0] = ("head", out[0][1] + moved)
        else:
            out.insert(0, ("head", moved))
        return [(g, params) for g, params in out if params]

    def trunk_state_names(self, stop: int) -> List[str]:
        names = super().trunk_state_names(stop)
        return [n for n in names if n != "proj"]


__all__ = ["OpenCLIPVisionAdapter"]
