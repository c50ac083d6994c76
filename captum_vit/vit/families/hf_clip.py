"""Hugging Face CLIP and SigLIP image towers (optional extra ``captum-vit[hf]``).

Served classes (transformers >= 5):

- ``CLIPVisionModel`` (``CLIPModel.vision_model``): ``embeddings`` (CLS + patches +
  positions) → ``pre_layrnorm`` → ``encoder.layers`` → ``post_layernorm`` of the CLS
  token, the ``pooler_output``. One prefix token, a CLS readout.
- ``CLIPVisionModelWithProjection``: the same, then ``visual_projection``
  (``image_embeds``).
- ``SiglipVisionModel`` (``SiglipModel.vision_model``): ``embeddings`` (patches +
  positions, no CLS) → ``encoder.layers`` → ``post_layernorm`` of every token → the
  attention-pooling ``head`` (a learned probe attending to all tokens through an
  ``nn.MultiheadAttention``, then a residual MLP), as timm's SigLIP
  (``global_pool="map"``).
- ``SiglipForImageClassification``: the SigLIP tower, then a linear classifier on the
  mean of all final tokens (``pool == "avg"``, no prefix token).

The towers end in an image embedding, not class logits: they are headless
(``num_classes == 0``) and the class-specific methods refuse them;
:class:`captum_vit.ZeroShotClassifier` turns ``CLIPModel`` / ``SiglipModel`` into a
classifier whose tower this adapter serves. Their outputs are ``ModelOutput`` objects:
:func:`~captum_vit.vit.logits_of` reads ``image_embeds`` or ``pooler_output``.

Masking passes an additive key mask as each encoder layer's ``attention_mask`` (as
for Hugging Face ViT) and a ``key_padding_mask`` to SigLIP's pooling attention.
Recording switches the attention implementation to ``"eager"`` on every config object
for the call (the layers' probabilities are the second output of ``self_attn``), and
asks the pooling ``nn.MultiheadAttention`` for its (B, heads, 1, T) weights; with grad
enabled the pool's output is recomputed from the reported weights so that gradients
reach them (torch returns them outside the graph).

Not served: ``CLIPForImageClassification`` (its classifier averages the patch tokens
*before* any final norm, a readout with no norm module to hook), a SigLIP tower built
with ``vision_use_head=False`` (no pooled output), and SigLIP 2's NaFlex
``Siglip2VisionModel``, which takes pre-cut patch sequences instead of images.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from ..adapter import MaskState, ViTAdapter, register_family
from .hf import mask_blocks, record_eager

#: Served class names -> kind.
_CLASSES: Dict[str, str] = {
    "CLIPVisionModel": "clip",
    "CLIPVisionModelWithProjection": "clip_proj",
    "SiglipVisionModel": "siglip",
    "SiglipForImageClassification": "siglip_cls",
}


def _kind_class(model: Any) -> Optional[str]:
    for k in type(model).__mro__:
        if k.__name__ in _CLASSES and k.__module__.startswith("transformers."):
            return k.__name__
    return None


@register_family(priority=65)
class HFCLIPVisionAdapter(ViTAdapter):
    """Hugging Face CLIP / SigLIP image towers (and SigLIP's image classifier)."""

    family = "hf_clip_vision"

    @classmethod
    def matches(cls, model: Any) -> bool:
        return isinstance(model, nn.Module) and _kind_class(model) is not None

    @property
    def family_name(self) -> str:  # type: ignore[override]
        return f"Hugging Face {_kind_class(self.model)}"

    @property
    def _kind(self) -> str:
        return _CLASSES[_kind_class(self.model)]

    @property
    def _siglip(self) -> bool:
        return self._kind.startswith("siglip")

    @property
    def _vm(self) -> nn.Module:
        """The module holding ``embeddings``, ``encoder`` and ``post_layernorm``."""
        return (
            self.model if self._kind in ("clip", "siglip") else self.model.vision_model
        )

    def _validate(self) -> None:
        vm = self._vm
        if self._kind == "siglip" and getattr(vm, "head", None) is None:
            raise self._unsupported(
                "a SiglipVisionModel without its attention-pooling head "
                "(vision_use_head=False)"
            )
        for i, layer in enumerate(self.blocks):
            if not isinstance(getattr(layer, "self_attn", None), nn.Module):
                raise self._unsupported(
                    f"{type(self.model).__name__} layer {i} without a `self_attn` "
                    "module (transformers >= 5 is required)"
                )
        head = getattr(vm, "head", None)
        if self._siglip and not isinstance(
            getattr(head, "attention", None), nn.MultiheadAttention
        ):
            raise self._unsupported(
                f"{type(self.model).__name__} whose pooling head has no "
                "nn.MultiheadAttention"
            )

    # ------------------------------------------------------------ structure
    @property
    def _config(self) -> Any:
        return self._vm.config

    @property
    def blocks(self) -> List[nn.Module]:
        return list(self._vm.encoder.layers)

    def attention_modules(self) -> List[nn.Module]:
        return [layer.self_attn for layer in self.blocks]

    # ------------------------------------------------------------ geometry
    @property
    def num_prefix_tokens(self) -> int:
        return 0 if self._siglip else 1

    @property
    def patch_size(self) -> Tuple[int, int]:
        p = int(self._config.patch_size)
        return (p, p)

    @property
    def image_size(self) -> Tuple[int, int]:
        s = int(self._config.image_size)
        return (s, s)

    @property
    def embed_dim(self) -> int:
        return int(self._config.hidden_size)

    @property
    def num_classes(self) -> int:
        if self._kind != "siglip_cls":
            return 0
        return int(self.model.classifier.out_features) if self._has_linear_head() else 0

    def _has_linear_head(self) -> bool:
        return isinstance(getattr(self.model, "classifier", None), nn.Linear)

    def _headless_reason(self) -> str:
        if self._kind == "siglip_cls":
            return "num_labels=0"
        return (
            "it outputs an image embedding; wrap the image-text model in "
            "captum_vit.ZeroShotClassifier for class scores"
        )

    def _remove_head(self, model: nn.Module) -> None:
        if self._kind == "siglip_cls":
            model.classifier = nn.Identity()

    @property
    def in_chans(self) -> Optional[int]:
        return int(self._config.num_channels)

    @property
    def casts_inputs(self) -> bool:
        return True  # the embeddings cast pixel_values to the patch embedding's dtype

    def _input_module(self) -> nn.Module:
        return self._vm.embeddings.patch_embedding

    @property
    def pool(self) -> str:
        return {"clip": "token", "clip_proj": "token", "siglip": "map"}.get(
            self._kind, "avg"
        )

    # ------------------------------------------------------------ forward parts
    def _embed(self, images: Tensor) -> Tensor:
        vm = self._vm
        x = vm.embeddings(images)
        return x if self._siglip else vm.pre_layrnorm(x)

    def _tokens_module(self) -> nn.Module:
        vm = self._vm
        return vm.embeddings if self._siglip else vm.pre_layrnorm

    def _final_norm_module(self) -> nn.Module:
        # CLIP normalises the CLS row only; LayerNorm acts per token, so normalising
        # every token and reading the CLS row is the same.
        return self._vm.post_layernorm

    def _run_block(self, index, block, x, grid):
        return block(x, None)

    def _head_from_normed(self, x: Tensor) -> Tensor:
        kind = self._kind
        if kind == "siglip":
            return self._vm.head(x)
        if kind == "siglip_cls":
            return self.model.classifier(x.mean(dim=1))
        pooled = x[:, 0]
        return self.model.visual_projection(pooled) if kind == "clip_proj" else pooled

    def _after_blocks(self) -> List[nn.Module]:
        vm, out = self._vm, [self._vm.post_layernorm]
        if self._siglip:
            out.append(vm.head)
        for name in ("visual_projection", "classifier"):
            if isinstance(getattr(self.model, name, None), nn.Module):
                out.append(getattr(self.model, name))
        return out

    def _attention_input_of(self, block: nn.Module) -> Optional[nn.Module]:
        return getattr(block, "layer_norm1", None)

    # ------------------------------------------------------------ masks
    def _block_hooks(self, state: MaskState, out: List[Any]) -> None:
        mask_blocks(self.blocks, state, out)

    def _pool_hooks(self, state: MaskState, out: List[Any]) -> None:
        if self.pool != "map":
            return

        def pre(module, args, kwargs):
            if state.valid is not None:
                kwargs["key_padding_mask"] = ~state.valid[:, self.pool_offset :]
            return args, kwargs

        mha = self._vm.head.attention
        out.append(mha.register_forward_pre_hook(pre, with_kwargs=True))

    # ------------------------------------------------------------ attention
    def _attention_hooks(
        self,
        layers: List[int],
        on_block: Callable[[int, Tensor], None],
        on_pool: Optional[Callable[[Tensor], None]],
        handles: List[Any],
    ) -> None:
        record_eager(self.model, self.attention_modules(), layers, on_block, handles)
        if self.pool != "map" or on_pool is None:
            return

        def pre(module, args, kwargs):
            kwargs["need_weights"] = True
            kwargs["average_attn_weights"] = False
            return args, kwargs

        def post(mha, args, kwargs, out):
            probs = out[1]
            on_pool(probs)
            if not torch.is_grad_enabled():
                return None
            value = args[2] if len(args) > 2 else kwargs["value"]
            return _pool_output_from_probs(mha, value, probs), probs

        mha = self._vm.head.attention
        handles.append(mha.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(mha.register_forward_hook(post, with_kwargs=True))


def _pool_output_from_probs(
    mha: nn.MultiheadAttention, value: Tensor, probs: Tensor
) -> Tensor:
    """An attention pool's output computed from its reported (B, heads, Q, T)
    probabilities: the value projection of ``value``, ``probs @ v`` and the output
    projection (``nn.MultiheadAttention`` returns its weights outside the graph)."""
    b, t, e = value.shape
    heads, q = mha.num_heads, probs.shape[2]
    bias = None if mha.in_proj_bias is None else mha.in_proj_bias[2 * e :]
    v = nn.functional.linear(value, mha.in_proj_weight[2 * e :], bias)
    v = v.reshape(b, t, heads, e // heads).transpose(1, 2)
    y = (probs @ v).transpose(1, 2).reshape(b, q, e)
    return mha.out_proj(y)


__all__ = ["HFCLIPVisionAdapter"]
