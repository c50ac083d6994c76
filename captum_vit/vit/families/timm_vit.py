"""timm ``VisionTransformer``: CLS, distilled DeiT, registers, pooled and SigLIP heads.

Layout (timm >= 1.0): ``patch_embed`` → ``_pos_embed`` (prefix tokens, position
embedding) → ``patch_drop`` → ``norm_pre`` → ``blocks`` → ``norm`` → ``forward_head``.
Blocks take ``attn_mask`` (boolean, True = attend), so held-out patches are masked as
keys directly; dropping gathers the kept tokens at ``norm_pre``'s output.

Attention pooling (``global_pool="map"``, SigLIP): the head's ``AttentionPoolLatent``
lets a learned latent query attend to the final tokens. Masking passes an additive key
mask to the pool as well, so held-out patches take no part in the pooling either (timm's
``pool()`` does not forward a mask itself). The pool's attention is the readout of
rollout and GenAtt: recording it replaces the pool's output, for the call, by the same
computation written out on the explicit path (latent query, keys, softmax, values,
projection, MLP), whose probabilities are reported and differentiable.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import torch.nn as nn
from torch import Tensor

from ..adapter import LRP_RULES, VALUE_PROJECTION, MaskState, register_family
from ._timm import TimmTokenAdapter

_POOLS = ("token", "avg", "max", "avgmax")


def _timm_classes():
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer


@register_family(priority=30)
class TimmViTAdapter(TimmTokenAdapter):
    """timm ``VisionTransformer`` and ``VisionTransformerDistilled``."""

    family = "timm_vit"
    family_name = "timm VisionTransformer"
    lrp_containers = frozenset(
        {
            "VisionTransformer",
            "VisionTransformerDistilled",
            "Block",
            "ResPostBlock",
            "Attention",
        }
    )

    @classmethod
    def matches(cls, model: Any) -> bool:
        try:
            vit = _timm_classes()
        except ImportError:  # pragma: no cover - timm is a hard dependency
            return False
        return isinstance(model, vit)

    def _validate(self) -> None:
        m = self.model
        if getattr(m, "attn_pool", None) is not None:
            from timm.layers import AttentionPoolLatent

            if not isinstance(m.attn_pool, AttentionPoolLatent):
                raise self._unsupported(
                    f"attention pooling {type(m.attn_pool).__name__} (global_pool="
                    f"{m.global_pool!r})"
                )
        elif m.global_pool not in _POOLS:
            raise self._unsupported(
                f"global_pool={m.global_pool!r} (expected one of {_POOLS} or 'map', "
                "i.e. a pooled head)"
            )
        super()._validate()

    @property
    def pool(self) -> str:
        if getattr(self.model, "attn_pool", None) is not None:
            return "map"
        return str(self.model.global_pool)

    # ------------------------------------------------------------ LRP rules
    def _has_lrp_rules(self) -> bool:
        return self._lrp_problem() is None

    def missing_reason(self, capability: str) -> str:
        if capability == LRP_RULES:
            problem = self._lrp_problem()
            if problem is not None:
                return f"does not have for this model: it needs {problem}"
        return super().missing_reason(capability)

    def _lrp_problem(self) -> Optional[str]:
        """What keeps :mod:`captum_vit.vit.lrp`'s rules from serving this model (None
        when they serve it): standard pre-norm ``Block`` s (``Attention`` without a
        gate, ``Mlp`` with linear ``fc1``/``fc2``), ``token`` or ``avg`` pooling and
        linear heads (a headless model is left to the class-head check)."""
        from timm.layers import Attention, Mlp
        from timm.models.vision_transformer import Block

        m = self.model
        for i, blk in enumerate(m.blocks):
            # read the children from ``_modules``: this check runs on every call of
            # an LRP method, and ``nn.Module.__getattr__`` is slow
            attn, mlp = blk._modules.get("attn"), blk._modules.get("mlp")
            ok = (
                type(blk) is Block
                and type(attn) is Attention
                and getattr(attn, "gate", None) is None
                and type(mlp) is Mlp
                and isinstance(mlp._modules.get("fc1"), nn.Linear)
                and isinstance(mlp._modules.get("fc2"), nn.Linear)
                and isinstance(attn._modules.get("qkv"), nn.Linear)
                and isinstance(attn._modules.get("proj"), nn.Linear)
            )
            if not ok:
                return (
                    f"standard pre-norm blocks; block {i} is a {type(blk).__name__} "
                    f"with {type(attn).__name__} attention and "
                    f"{type(mlp).__name__} MLP"
                )
        if self.pool not in ("token", "avg"):
            return f"token or avg pooling, not {self.pool!r}"
        if self.num_classes > 0:
            if not isinstance(m.head, nn.Linear):
                return "a linear classifier head"
            dist = getattr(m, "head_dist", None)
            if getattr(m, "dist_token", None) is not None and not isinstance(
                dist, nn.Linear
            ):
                return "a linear distillation head"
        return None

    # ------------------------------------------------------ projected values
    def _walked_capabilities(self) -> Dict[str, Callable[[], bool]]:
        return {
            **super()._walked_capabilities(),
            VALUE_PROJECTION: self._values_readable,
        }

    def _values_readable(self) -> bool:
        """Whether every block's attention is a timm ``Attention`` whose values can
        be read from one linear ``qkv`` and projected by a linear ``proj`` with
        nothing in between (no scale norm, no gate)."""
        from timm.layers import Attention

        return all(
            type(blk.attn) is Attention
            and isinstance(blk.attn.qkv, nn.Linear)
            and isinstance(blk.attn.proj, nn.Linear)
            and isinstance(blk.attn.norm, nn.Identity)
            and getattr(blk.attn, "gate", None) is None
            for blk in self.model.blocks
        )

    def _value_hooks(
        self,
        layers: List[int],
        on_block: Callable[[int, Tensor, Tensor], None],
        out: List[Any],
    ) -> None:
        for i in layers:
            blk = self.model.blocks[i]
            seen: List[Tensor] = []

            def pre(module, args, seen=seen):
                seen[:] = [args[0]]

            def qkv(module, args, output, i=i, attn=blk.attn, seen=seen):
                # timm's qkv output is laid out as (3, heads, head_dim): the values
                # are its last third, already concatenated over the heads
                width = attn.num_heads * attn.head_dim
                values = output[..., 2 * width :] @ attn.proj.weight.t()
                on_block(i, seen[0], values)

            out.append(blk.register_forward_pre_hook(pre))
            out.append(blk.attn.qkv.register_forward_hook(qkv))

    @property
    def pool_include_prefix(self) -> bool:
        return bool(getattr(self.model, "pool_include_prefix", False))

    @property
    def pool_offset(self) -> int:
        return 0 if self.pool_include_prefix else self.num_prefix_tokens

    @property
    def readout_prefix_weights(self) -> Tuple[float, ...]:
        if getattr(self.model, "dist_token", None) is not None:
            return (0.5, 0.5)  # eval-mode output: the mean of the two heads
        return (1.0,)

    def _embed(self, images: Tensor) -> Tensor:
        m = self.model
        x = m.patch_drop(m._pos_embed(m.patch_embed(images)))
        return m.norm_pre(x)

    def _tokens_module(self) -> nn.Module:
        return self.model.norm_pre

    # ----------------------------------------------------------------- masks
    def _block_hooks(self, state: MaskState, out: List[Any]) -> None:
        def pre(module, args, kwargs):
            if state.valid is not None:
                kwargs["attn_mask"] = state.valid[:, None, None, :]
            return args, kwargs

        for blk in self.model.blocks:
            out.append(blk.register_forward_pre_hook(pre, with_kwargs=True))

    def _pool_hooks(self, state: MaskState, out: List[Any]) -> None:
        pool = getattr(self.model, "attn_pool", None)
        if pool is None:
            return

        def pre(module, args, kwargs):
            mask = state.additive(args[0].dtype)
            if mask is not None:
                kwargs["attn_mask"] = mask[..., self.pool_offset :]
            return args, kwargs

        out.append(pool.register_forward_pre_hook(pre, with_kwargs=True))

    # ------------------------------------------------------------- attention
    def _attention_hooks(
        self,
        layers: List[int],
        on_block: Callable[[int, Tensor], None],
        on_pool: Optional[Callable[[Tensor], None]],
        handles: List[Any],
    ) -> None:
        super()._attention_hooks(layers, on_block, on_pool, handles)
        pool = getattr(self.model, "attn_pool", None)
        if pool is None or on_pool is None:
            return

        def replace(module, args, kwargs, output):
            return _explicit_latent_pool(
                module, args[0], kwargs.get("attn_mask"), on_pool
            )

        handles.append(pool.register_forward_hook(replace, with_kwargs=True))


def _explicit_latent_pool(
    pool: nn.Module,
    x: Tensor,
    attn_mask: Optional[Tensor],
    on_probs: Callable[[Tensor], None],
) -> Tensor:
    """``AttentionPoolLatent``'s output on the explicit path, reporting its (B, heads,
    Q, T) attention probabilities: latent queries attend to the tokens ``x``, the
    attended values are projected, a residual MLP follows, then the latent outputs are
    reduced as the pool's ``pool`` setting says."""
    b, n, _ = x.shape
    heads, head_dim = pool.num_heads, pool.head_dim
    width = heads * head_dim
    if pool.pos_embed is not None:
        x = x + pool.pos_embed.unsqueeze(0).to(x.dtype)
    latent = pool.latent.expand(b, -1, -1)
    q = pool.q(latent).reshape(b, pool.latent_len, heads, head_dim).transpose(1, 2)
    kv = pool.kv(x).reshape(b, n, 2, heads, head_dim).permute(2, 0, 3, 1, 4)
    k, v = kv.unbind(0)
    q, k = pool.q_norm(q), pool.k_norm(k)
    scores = (q * pool.scale) @ k.transpose(-2, -1)
    if attn_mask is not None:
        scores = scores + attn_mask
    probs = scores.softmax(dim=-1)
    on_probs(probs)
    y = (probs @ v).transpose(1, 2).reshape(b, pool.latent_len, width)
    y = pool.proj_drop(pool.proj(y))
    if pool.mlp is not None:
        y = y + pool.mlp(pool.norm(y))
    if pool.pool == "token":
        return y[:, 0]
    if pool.pool == "avg":
        return y.mean(1)
    return y


__all__ = ["TimmViTAdapter"]
