"""Hugging Face ``transformers`` image classifiers (optional extra ``captum-vit[hf]``).

Served classes: ``ViTForImageClassification``, ``DeiTForImageClassification``,
``DeiTForImageClassificationWithTeacher``, ``Dinov2ForImageClassification`` and
``Dinov2WithRegistersForImageClassification`` (transformers >= 5, where every layer's
attention module returns ``(output, probabilities)`` through the attention interface).

Layout: ``<base>.embeddings`` (CLS [+ distillation | registers] + patches + positions)
→ layers (``<base>.layers`` or ``<base>.encoder.layer``), each called as
``layer(hidden, attention_mask)`` → ``<base>.layernorm`` → the class's head. Outputs are
``ImageClassifierOutput`` objects; :meth:`ViTAdapter.logits` returns their
``.logits``.

Masking passes an additive key mask (0 / -inf, (B, 1, 1, T)) as each layer's
``attention_mask``, which both the eager and the SDPA attention add to the logits.
Recording switches the attention implementation to ``"eager"`` (SDPA returns no
probabilities) on every config object of the model for the call, and restores each
one's own setting afterwards; the probabilities are the second output of each layer's
attention module.

Heads and their readout rows (for rollout / GenAtt): ViT and DeiT read the CLS token
(DeiT's distillation token is then an unread prefix token); DeiT with teacher averages
a CLS head and a distillation head (both rows, weight 1/2); DINOv2 feeds the CLS token
concatenated with the mean of the patch tokens (registers excluded) to one linear layer
(``token+avg``: CLS row and patch mean, equal weight).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from ..adapter import MaskState, ViTAdapter, register_family, set_attribute
from ..lrp_sites import LRPSites, scale_gradient, walk_sites

#: Class-name endings (after ``ViT``/``DeiT``/``Dinov2``/``Dinov2WithRegisters``) of
#: modules whose forward only adds, averages, reshapes or concatenates, or whose
#: attention the AttnLRP hooks handle (:meth:`HFViTAdapter._lrp_sites`).
_LRP_CONTAINERS = (
    "ForImageClassification",
    "ForImageClassificationWithTeacher",
    "Model",
    "Embeddings",
    "PatchEmbeddings",
    "Encoder",
    "Layer",
    "Attention",
    "SelfAttention",
    "SelfOutput",
    "Intermediate",
    "Output",
    "MLP",
    "Pooler",
)
_LRP_PREFIXES = ("Dinov2WithRegisters", "Dinov2", "DeiT", "ViT")
#: Query, key and value projections of an attention module (transformers 5 names
#: first, the nested ``attention.query`` layout of earlier releases second).
_QKV_NAMES = (("q_proj", "k_proj", "v_proj"), ("query", "key", "value"))


def _hf_container(module: nn.Module) -> bool:
    name = type(module).__name__
    if name in ("Sequential", "ModuleList"):
        return True
    for prefix in _LRP_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix) :] in _LRP_CONTAINERS
    return False


def _qkv_projections(attn: nn.Module) -> Optional[List[nn.Module]]:
    """The query, key and value ``nn.Linear`` of a layer's attention, or None."""
    for owner in (attn, getattr(attn, "attention", None)):
        for names in _QKV_NAMES:
            mods = [getattr(owner, n, None) for n in names]
            if owner is not None and all(isinstance(m, nn.Linear) for m in mods):
                return mods
    return None


#: Served class names -> head kind.
_CLASSES: Dict[str, str] = {
    "ViTForImageClassification": "cls",
    "DeiTForImageClassification": "cls",
    "DeiTForImageClassificationWithTeacher": "cls+dist",
    "Dinov2ForImageClassification": "cls+mean",
    "Dinov2WithRegistersForImageClassification": "cls+mean",
}


def _configs(model: nn.Module) -> List[Any]:
    """Every distinct config object the model's modules read."""
    seen: Dict[int, Any] = {}
    for mod in model.modules():
        cfg = getattr(mod, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation"):
            seen.setdefault(id(cfg), cfg)
    return list(seen.values())


@register_family(priority=60)
class HFViTAdapter(ViTAdapter):
    """Hugging Face ViT / DeiT / DINOv2 image classifiers."""

    family = "hf_vit"

    @classmethod
    def matches(cls, model: Any) -> bool:
        return isinstance(model, nn.Module) and any(
            k.__name__ in _CLASSES and k.__module__.startswith("transformers.")
            for k in type(model).__mro__
        )

    @property
    def family_name(self) -> str:  # type: ignore[override]
        return f"Hugging Face {self._kind_class}"

    @property
    def _kind_class(self) -> str:
        return next(
            k.__name__ for k in type(self.model).__mro__ if k.__name__ in _CLASSES
        )

    def _validate(self) -> None:
        base = self._base
        if not hasattr(base, "embeddings") or not hasattr(base, "layernorm"):
            raise self._unsupported(f"{type(self.model).__name__} without embeddings")
        for i, layer in enumerate(self.blocks):
            if not isinstance(getattr(layer, "attention", None), nn.Module):
                raise self._unsupported(
                    f"{type(self.model).__name__} layer {i} without an `attention` "
                    "module (transformers >= 5 is required)"
                )

    # ------------------------------------------------------------ structure
    @property
    def _base(self) -> nn.Module:
        return getattr(self.model, self.model.base_model_prefix)

    @property
    def _head_kind(self) -> str:
        return _CLASSES[self._kind_class]

    @property
    def _config(self) -> Any:
        return self.model.config

    @property
    def blocks(self) -> List[nn.Module]:
        base = self._base
        layers = getattr(base, "layers", None)
        if layers is None:
            layers = base.encoder.layer
        return list(layers)

    def attention_modules(self) -> List[nn.Module]:
        return [layer.attention for layer in self.blocks]

    # ------------------------------------------------------------ geometry
    @property
    def num_prefix_tokens(self) -> int:
        emb = self._base.embeddings
        n = 1
        if getattr(emb, "distillation_token", None) is not None:
            n += 1
        reg = getattr(emb, "register_tokens", None)
        if reg is not None:
            n += int(reg.shape[1])
        return n

    @property
    def patch_size(self) -> Tuple[int, int]:
        p = self._base.embeddings.patch_embeddings.patch_size
        p = tuple(p) if isinstance(p, (tuple, list)) else (p, p)
        return (int(p[0]), int(p[1]))

    @property
    def image_size(self) -> Tuple[int, int]:
        s = self._base.embeddings.patch_embeddings.image_size
        s = tuple(s) if isinstance(s, (tuple, list)) else (s, s)
        return (int(s[0]), int(s[1]))

    @property
    def dynamic_img_size(self) -> bool:
        # DINOv2 interpolates its position embedding for every input size; ViT and
        # DeiT only with interpolate_pos_encoding=True, which the adapter never sets.
        return self._head_kind == "cls+mean"

    @property
    def embed_dim(self) -> int:
        return int(self._config.hidden_size)

    @property
    def num_classes(self) -> int:
        return int(self._config.num_labels) if self._has_linear_head() else 0

    def _has_linear_head(self) -> bool:
        heads = [
            getattr(self.model, n, None)
            for n in ("classifier", "cls_classifier", "distillation_classifier")
        ]
        return any(isinstance(h, nn.Linear) for h in heads)

    def _remove_head(self, model: nn.Module) -> None:
        for name in ("classifier", "cls_classifier", "distillation_classifier"):
            if hasattr(model, name):
                setattr(model, name, nn.Identity())

    def _headless_reason(self) -> str:
        return "num_labels=0"

    @property
    def in_chans(self) -> Optional[int]:
        return int(self._config.num_channels)

    @property
    def casts_inputs(self) -> bool:
        return True  # the embeddings cast pixel_values to the patch embedding's dtype

    @property
    def pool(self) -> str:
        return "token+avg" if self._head_kind == "cls+mean" else "token"

    @property
    def readout_prefix_weights(self) -> Tuple[float, ...]:
        return (0.5, 0.5) if self._head_kind == "cls+dist" else (1.0,)

    # ------------------------------------------------------------ forward parts
    def _embed(self, images: Tensor) -> Tensor:
        emb = self._base.embeddings
        return emb(images.to(emb.patch_embeddings.projection.weight.dtype))

    def _tokens_module(self) -> nn.Module:
        return self._base.embeddings

    def _final_norm_module(self) -> nn.Module:
        return self._base.layernorm

    def _run_block(self, index, block, x, grid):
        return block(x, None)

    def _head_from_normed(self, x: Tensor) -> Tensor:
        m, kind = self.model, self._head_kind
        if kind == "cls":
            return m.classifier(x[:, 0])
        if kind == "cls+dist":
            return (m.cls_classifier(x[:, 0]) + m.distillation_classifier(x[:, 1])) / 2
        patches = x[:, self.num_prefix_tokens :]
        return m.classifier(torch.cat([x[:, 0], patches.mean(dim=1)], dim=1))

    def _after_blocks(self) -> List[nn.Module]:
        names = ("classifier", "cls_classifier", "distillation_classifier")
        heads = [getattr(self.model, n) for n in names if hasattr(self.model, n)]
        return [self._base.layernorm] + heads

    def _attention_input_of(self, block: nn.Module) -> Optional[nn.Module]:
        for name in ("layernorm_before", "norm1"):  # ViT/DeiT, DINOv2
            if isinstance(getattr(block, name, None), nn.Module):
                return getattr(block, name)
        return None

    # ------------------------------------------------------------ masks
    def _block_hooks(self, state: MaskState, out: List[Any]) -> None:
        mask_blocks(self.blocks, state, out)

    # ------------------------------------------------------------ AttnLRP
    def _lrp_sites(self) -> Tuple[Optional[LRPSites], Optional[str]]:
        projections = []
        for i, layer in enumerate(self.blocks):
            qkv = _qkv_projections(layer.attention)
            if qkv is None:
                return None, (
                    f"query, key and value projections; layer {i}'s "
                    f"{type(layer.attention).__name__} has none this adapter knows"
                )
            projections.append(qkv)
            mlp = getattr(layer, "mlp", None) or getattr(layer, "intermediate", None)
            act = getattr(mlp, "activation_fn", None) or getattr(
                mlp, "intermediate_act_fn", None
            )
            if mlp is not None and act is not None and not isinstance(act, nn.Module):
                return None, (
                    f"an activation module; layer {i}'s MLP calls a function "
                    f"({act!r})"
                )
        sites, problem = walk_sites(self.model, _hf_container)
        if problem is not None:
            return None, problem

        def attention(qk: float, v: float, handles: List[Any]) -> None:
            for q, k, val in projections:
                for mod, f in ((q, qk), (k, qk), (val, v)):
                    handles.append(
                        mod.register_forward_hook(
                            lambda m, a, out, f=f: scale_gradient(out, f)
                        )
                    )

        sites.attention = attention
        return sites, None

    # ------------------------------------------------------------ attention
    def _attention_hooks(
        self,
        layers: List[int],
        on_block: Callable[[int, Tensor], None],
        on_pool: Optional[Callable[[Tensor], None]],
        handles: List[Any],
    ) -> None:
        record_eager(self.model, self.attention_modules(), layers, on_block, handles)


def record_eager(
    model: nn.Module,
    modules: List[nn.Module],
    layers: List[int],
    on_block: Callable[[int, Tensor], None],
    handles: List[Any],
) -> None:
    """Record the probabilities of Hugging Face attention ``modules[i]`` (``i`` in
    ``layers``) into ``on_block(i, probs)``: every config of ``model`` is switched to
    the eager implementation (which returns them) for the call; the hook handles
    and the switch go into ``handles``."""
    for cfg in _configs(model):
        handles.append(set_attribute(cfg, "_attn_implementation_internal", "eager"))

    def report(i: int, out: Any) -> None:
        probs = out[1] if isinstance(out, tuple) and len(out) > 1 else None
        if not isinstance(probs, Tensor):
            raise RuntimeError(
                f"record_attention: layer {i}'s attention returned no "
                "probabilities on the eager path"
            )
        on_block(i, probs)

    for i in layers:
        handles.append(
            modules[i].register_forward_hook(lambda m, a, out, i=i: report(i, out))
        )


def mask_blocks(blocks: List[nn.Module], state: MaskState, out: List[Any]) -> None:
    """Add the masking context's additive key mask to the ``attention_mask`` that
    every Hugging Face encoder layer in ``blocks`` receives (positional or keyword,
    combined with a mask the model already passes); append the hook handles."""

    def pre(module, args, kwargs):
        mask = state.additive(args[0].dtype)
        if mask is None:
            return args, kwargs
        if "attention_mask" in kwargs:
            kwargs["attention_mask"] = _combine(kwargs["attention_mask"], mask)
        elif len(args) > 1:
            args = (args[0], _combine(args[1], mask)) + tuple(args[2:])
        else:
            kwargs["attention_mask"] = mask
        return args, kwargs

    for layer in blocks:
        out.append(layer.register_forward_pre_hook(pre, with_kwargs=True))


def _combine(old: Optional[Tensor], mask: Tensor) -> Tensor:
    """Add a key mask to an attention mask the model already passes."""
    if old is None:
        return mask
    if old.dtype == torch.bool:
        old = torch.zeros(old.shape, dtype=mask.dtype, device=old.device).masked_fill(
            ~old, float("-inf")
        )
    return old + mask


__all__ = ["HFViTAdapter"]
