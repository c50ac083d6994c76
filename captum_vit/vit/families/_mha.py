"""Masking and attention recording for families whose blocks call a batch-first
``torch.nn.MultiheadAttention`` on the whole token sequence (torchvision's ViT,
OpenCLIP's image tower).

Both go through forward pre-hooks on the attention modules: masking adds a
``key_padding_mask`` for the held-out keys, recording asks for the per-head weights
(``need_weights=True, average_attn_weights=False``) for the call only.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from ..adapter import MaskState


class MultiheadAttentionHooks:
    """Mixin of a :class:`~captum_vit.vit.adapter.ViTAdapter` whose
    ``attention_modules()`` are batch-first ``nn.MultiheadAttention`` modules that
    attend over every token of the sequence."""

    def attention_modules(self) -> List[nn.Module]:  # pragma: no cover - adapter
        raise NotImplementedError

    def _block_hooks(self, state: MaskState, out: List[Any]) -> None:
        def pre(module, args, kwargs):
            if state.valid is not None:
                kwargs["key_padding_mask"] = ~state.valid
            return args, kwargs

        for mha in self.attention_modules():
            out.append(mha.register_forward_pre_hook(pre, with_kwargs=True))

    def _attention_hooks(
        self,
        layers: List[int],
        on_block: Callable[[int, Tensor], None],
        on_pool: Optional[Callable[[Tensor], None]],
        handles: List[Any],
    ) -> None:
        modules = self.attention_modules()
        record_weights([(i, modules[i]) for i in layers], on_block, handles)


def record_weights(
    modules: Sequence[Tuple[int, nn.Module]],
    on_block: Callable[[int, Tensor], None],
    handles: List[Any],
) -> None:
    """Hook ``(index, nn.MultiheadAttention)`` pairs so that each call reports its
    (B, heads, T, T) probabilities to ``on_block(index, probs)``; with grad enabled
    the output is recomputed from them (:func:`output_from_probs`) so that they are
    part of the graph. The hook handles are appended to ``handles``."""

    def pre(module, args, kwargs):
        kwargs["need_weights"] = True
        kwargs["average_attn_weights"] = False
        return args, kwargs

    def post(i: int, mha: nn.MultiheadAttention, args, out):
        probs = out[1]
        on_block(i, probs)
        if not torch.is_grad_enabled():  # no gradient wanted: keep the output
            return None
        return output_from_probs(mha, args[0], probs), probs

    for i, mha in modules:
        handles.append(mha.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(
            mha.register_forward_hook(lambda m, a, out, i=i: post(i, m, a, out))
        )


def output_from_probs(mha: nn.MultiheadAttention, x: Tensor, probs: Tensor) -> Tensor:
    """Self-attention output computed from the reported probabilities.

    ``nn.MultiheadAttention`` returns its weights as a view taken after the values
    were attended, so the output does not depend on the returned tensor and no
    gradient reaches it. Recording therefore replaces the output by the same
    computation from the returned probabilities (value projection, ``probs @ v``,
    output projection), which makes them part of the graph.
    """
    b, t, e = x.shape
    heads = mha.num_heads
    bias = None if mha.in_proj_bias is None else mha.in_proj_bias[2 * e :]
    v = nn.functional.linear(x, mha.in_proj_weight[2 * e :], bias)
    v = v.reshape(b, t, heads, e // heads).transpose(1, 2)  # (B, heads, T, hd)
    y = (probs @ v).transpose(1, 2).reshape(b, t, e)
    return mha.out_proj(y)
