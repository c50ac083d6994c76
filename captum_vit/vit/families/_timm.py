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

from typing import Any, Callable, FrozenSet, List, Optional, Tuple

import torch.nn as nn
from torch import Tensor

from ..adapter import Normalization, ViTAdapter, set_attribute
from ..lrp_sites import LRPSites, qkv_factors, scale_gradient, walk_sites


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

    # ------------------------------------------------------------ AttnLRP
    #: Model, block and attention class names of the family (AttnLRP sites).
    lrp_containers: FrozenSet[str] = frozenset()

    def _lrp_sites(self) -> Tuple[Optional[LRPSites], Optional[str]]:
        problem = None
        if self.pool not in ("token", "avg"):
            problem = f"token or average pooling, not {self.pool!r}"
        return timm_lrp_sites(
            self.model,
            self.blocks,
            self.attention_modules(),
            self.lrp_containers,
            problem,
        )

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


# ------------------------------------------------------------------ AttnLRP sites
#: timm modules whose own forward only adds, averages, reshapes or concatenates what
#: their children compute (or whose attention the hooks below handle).
_LRP_CONTAINERS = frozenset(
    {
        "Sequential",
        "ModuleList",
        "PatchEmbed",
        "Mlp",
        "SwiGLU",
        "GluMlp",
        "SwiGLUPacked",
        # position terms: constants of the input
        "RotaryEmbeddingCat",
        "RelativePositionBias",
    }
)
#: Gated MLPs: their ``drop1`` receives the product ``act(gate) * x``.
_GATED_MLPS = ("SwiGLU", "GluMlp", "SwiGLUPacked")


def timm_lrp_sites(
    model: nn.Module,
    blocks: List[nn.Module],
    attentions: List[nn.Module],
    containers: FrozenSet[str],
    pool_problem: Optional[str],
) -> Tuple[Optional[LRPSites], Optional[str]]:
    """AttnLRP sites of a timm token model (ViT, Eva, BEiT).

    Args:
        model: The model.
        blocks: Its blocks.
        attentions: The attention module of every block.
        containers: The family's model, block and attention class names.
        pool_problem: Why the head's pooling has no rule (None when it has one).
    """
    if pool_problem is not None:
        return None, pool_problem
    for i, attn in enumerate(attentions):
        if getattr(attn, "gate", None) is not None:
            return None, (
                f"attention without an output gate; block {i}'s "
                f"{type(attn).__name__} is gated"
            )
    allowed = _LRP_CONTAINERS | containers
    sites, problem = walk_sites(model, lambda m: type(m).__name__ in allowed)
    if problem is not None:
        return None, problem
    for blk in blocks:
        mlp = getattr(blk, "mlp", None)
        if type(mlp).__name__ in _GATED_MLPS:
            sites.products.append(mlp.drop1)

    def attention(qk: float, v: float, handles: List[Any]) -> None:
        for attn in attentions:
            _timm_attention_hooks(attn, qk, v, handles)

    sites.attention = attention
    return sites, None


def _scale_output(factor: Any) -> Callable[..., Tensor]:
    return lambda module, args, out: scale_gradient(out, factor)


def _timm_attention_hooks(attn: nn.Module, qk: float, v: float, handles: List[Any]):
    """Gradient factors ``qk`` on the query and key, ``v`` on the value of one timm
    attention module.

    A fused ``qkv`` linear called as a module gets per-channel factors on its output
    (the fused kernel stays on); separate ``q_proj``/``k_proj``/``v_proj`` get one
    factor each. When the projection is called functionally (BEiT and Eva with
    ``q_bias``), the attention runs on its explicit path for the call: the attended
    output (the input of ``proj``) gets ``v`` and the probabilities ``qk / v``, so the
    query and key receive ``qk`` in all.
    """
    qkv = getattr(attn, "qkv", None)
    if isinstance(qkv, nn.Linear) and getattr(attn, "q_bias", None) is None:
        factors = qkv_factors(qkv.out_features, qk, v)
        handles.append(qkv.register_forward_hook(_scale_output(factors)))
        return
    names = ("q_proj", "k_proj", "v_proj")
    if qkv is None and all(
        isinstance(getattr(attn, n, None), nn.Linear) for n in names
    ):
        for n, f in zip(names, (qk, qk, v)):
            handles.append(getattr(attn, n).register_forward_hook(_scale_output(f)))
        return
    if hasattr(attn, "fused_attn"):
        handles.append(set_attribute(attn, "fused_attn", False))
    handles.append(attn.attn_drop.register_forward_hook(_scale_output(qk / v)))

    def pre(module, args):
        return (scale_gradient(args[0], v),) + tuple(args[1:])

    handles.append(attn.proj.register_forward_pre_hook(pre))
