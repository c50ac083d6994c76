"""torchvision ``VisionTransformer`` (``vit_b_16``, ``vit_l_32``, ...).

Layout: ``_process_input`` (``conv_proj``, flatten) → CLS token prepended →
``encoder``: add ``pos_embedding`` → ``encoder.dropout`` → ``encoder.layers`` (each an
``EncoderBlock`` around ``nn.MultiheadAttention``) → ``encoder.ln`` → CLS token →
``heads``. Fixed image size, one prefix token, a CLS-token head.

``EncoderBlock`` calls its ``self_attention(x, x, x, need_weights=False)`` with no
mask, so both masking and recording go through forward pre-hooks on the
``nn.MultiheadAttention`` modules that change the keywords of that one call: a boolean
``key_padding_mask`` (True = ignore) for held-out and padding keys, and
``need_weights=True, average_attn_weights=False`` to get the (B, heads, T, T)
probabilities, which the block discards. Nothing global is switched (PyTorch's MHA fast
path is left to decide for itself), and the hooks are removed after the call. Because
the returned weights are not part of the autograd graph of the output, recording with
grad enabled recomputes each attention output from them (see
:func:`._mha.output_from_probs`).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from ..adapter import ViTAdapter, register_family
from ..lrp_sites import LRPSites, scale_gradient, walk_sites
from ._mha import MultiheadAttentionHooks

#: torchvision modules whose forward only adds, reshapes or concatenates.
_LRP_CONTAINERS = frozenset(
    {"VisionTransformer", "Encoder", "EncoderBlock", "MLPBlock", "Sequential"}
)


@register_family(priority=50)
class TorchvisionViTAdapter(MultiheadAttentionHooks, ViTAdapter):
    """torchvision ``VisionTransformer``."""

    family = "torchvision_vit"
    family_name = "torchvision VisionTransformer"

    @classmethod
    def matches(cls, model: Any) -> bool:
        if not type(model).__module__.startswith("torchvision."):
            return False
        from torchvision.models.vision_transformer import VisionTransformer

        return isinstance(model, VisionTransformer)

    def _validate(self) -> None:
        for i, blk in enumerate(self.model.encoder.layers):
            mha = getattr(blk, "self_attention", None)
            if not (
                isinstance(mha, nn.MultiheadAttention)
                and mha.batch_first
                and mha._qkv_same_embed_dim
                and mha.bias_k is None
                and not mha.add_zero_attn
            ):
                raise self._unsupported(
                    f"encoder layer {i} ({type(blk).__name__}) without a standard "
                    "batch-first nn.MultiheadAttention"
                )

    # ------------------------------------------------------------ geometry
    @property
    def num_prefix_tokens(self) -> int:
        return 1

    @property
    def patch_size(self) -> Tuple[int, int]:
        p = int(self.model.patch_size)
        return (p, p)

    @property
    def image_size(self) -> Tuple[int, int]:
        s = int(self.model.image_size)
        return (s, s)

    @property
    def embed_dim(self) -> int:
        return int(self.model.hidden_dim)

    @property
    def num_classes(self) -> int:
        linear = [m for m in self.model.heads.modules() if isinstance(m, nn.Linear)]
        return int(linear[-1].out_features) if linear else 0

    def _remove_head(self, model: nn.Module) -> None:
        model.heads = nn.Identity()

    def _headless_reason(self) -> str:
        return "its `heads` hold no nn.Linear"

    @property
    def in_chans(self) -> Optional[int]:
        convs = [m for m in self.model.conv_proj.modules() if isinstance(m, nn.Conv2d)]
        return int(convs[0].in_channels) if convs else None

    def _input_module(self) -> nn.Module:
        return self.model.conv_proj

    @property
    def blocks(self) -> List[nn.Module]:
        return list(self.model.encoder.layers)

    def attention_modules(self) -> List[nn.Module]:
        return [blk.self_attention for blk in self.model.encoder.layers]

    # ------------------------------------------------------------ forward parts
    def _embed(self, images: Tensor) -> Tensor:
        m = self.model
        x = m._process_input(images)
        x = torch.cat([m.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return m.encoder.dropout(x + m.encoder.pos_embedding)

    def _tokens_module(self) -> nn.Module:
        return self.model.encoder.dropout

    def _final_norm_module(self) -> nn.Module:
        return self.model.encoder.ln

    def _head_from_normed(self, x: Tensor) -> Tensor:
        return self.model.heads(x[:, 0])

    def _after_blocks(self) -> List[nn.Module]:
        return [self.model.encoder.ln, self.model.heads]

    def _attention_input_of(self, block: nn.Module) -> Optional[nn.Module]:
        return getattr(block, "ln_1", None)

    # ------------------------------------------------------------ masks
    # ------------------------------------------------------------ AttnLRP
    def _lrp_sites(self) -> Tuple[Optional[LRPSites], Optional[str]]:
        """``nn.MultiheadAttention`` projects inside one functional call, so its
        projections keep the plain gradient (no epsilon or gamma) and the attention
        rules go on its query, key and value arguments (the projections are
        linear, so a gradient factor before them equals one after them)."""
        mhas = tuple(self.attention_modules())
        sites, problem = walk_sites(
            self.model, lambda m: type(m).__name__ in _LRP_CONTAINERS, skip=mhas
        )
        if problem is not None:
            return None, problem

        def attention(qk: float, v: float, handles: List[Any]) -> None:
            def pre(module, args, kwargs):
                names = ("query", "key", "value")
                values = list(args) + [kwargs.pop(n) for n in names[len(args) :]]
                q, k, val = _sequence_major(module, values[:3])
                scaled = (
                    scale_gradient(q, qk),
                    scale_gradient(k, qk),
                    scale_gradient(val, v),
                )
                return scaled + tuple(values[3:]), kwargs

            for mha in mhas:
                handles.append(mha.register_forward_pre_hook(pre, with_kwargs=True))

        sites.attention = attention
        return sites, None


def _sequence_major(mha: nn.MultiheadAttention, xs: List[Tensor]) -> List[Tensor]:
    """The same (B, T, E) values, stored sequence-major (each distinct tensor copied
    once).

    A batch-first ``nn.MultiheadAttention`` transposes its inputs to (T, B, E) and
    projects them with ``F.linear``. On the transposed view of a batch-major tensor
    (the LayerNorm output that torchvision's blocks pass) that is a broadcast batched
    matrix product, about 3.4 times slower on CPU than the plain matrix product it
    becomes on sequence-major memory (ViT-B/16, batch 2: 17 ms against 5 ms per
    projection, forward and backward). Once the rules take over the attention's
    inputs, one copy per input buys that back; the values are unchanged.
    """
    if not mha.batch_first:
        return xs
    copies: Dict[int, Tensor] = {}
    for x in xs:
        if id(x) not in copies:
            t = x.transpose(0, 1) if x.dim() == 3 else x
            copies[id(x)] = x if t.is_contiguous() else t.contiguous().transpose(0, 1)
    return [copies[id(x)] for x in xs]


__all__ = ["TorchvisionViTAdapter"]
