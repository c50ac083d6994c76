"""Record post-softmax attention probabilities (and their gradients) of every block.

timm builds attention modules with ``fused_attn=True`` by default; the fused kernel
never materialises the probabilities, so hooks on ``attn_drop`` would silently capture
nothing. :func:`record_attention` switches every attention module of the model to the
explicit path for the duration of the ``with`` block and restores each module's own flag
afterwards, also when the body raises.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, List, Optional, Sequence, Union

import torch
import torch.nn as nn
from torch import Tensor

from .adapter import ViTAdapter

_MISSING = object()


class AttentionRecorder:
    """Attention probabilities recorded during a forward pass, indexed by layer.

    Attributes:
        attentions: ``attentions[l]`` is block l's (B, heads, T, T) post-softmax
            attention of the last forward pass (None if the block did not run).
        gradients: ``gradients[l]`` is the gradient of a scalar objective with respect
            to ``attentions[l]``; filled by :meth:`grad`, or by ``.backward()`` when the
            recorder was created with ``with_grad=True``. Indexed by layer, never by the
            order in which backward hooks fire.
    """

    def __init__(self, num_layers: int, with_grad: bool) -> None:
        self.attentions: List[Optional[Tensor]] = [None] * num_layers
        self.gradients: List[Optional[Tensor]] = [None] * num_layers
        self._with_grad = with_grad

    def _hook(self, layer: int, module: nn.Module, args, out: Tensor) -> None:
        self.attentions[layer] = out
        if self._with_grad and out.requires_grad:

            def store(grad: Tensor, layer: int = layer) -> None:
                self.gradients[layer] = grad

            out.register_hook(store)

    def grad(self, objective: Tensor, retain_graph: bool = False) -> List[Tensor]:
        """Gradients of a scalar ``objective`` w.r.t. every recorded attention map.

        Uses ``torch.autograd.grad``, so parameter ``.grad`` fields are left untouched
        and no gradient is propagated below the first block.

        Args:
            objective: Scalar tensor computed from the recorded forward pass.
            retain_graph: Keep the graph for another backward.

        Returns:
            The list of gradients, also stored in :attr:`gradients`.
        """
        missing = [i for i, a in enumerate(self.attentions) if a is None]
        if missing:
            raise RuntimeError(f"no attention recorded for blocks {missing}")
        if not all(a.requires_grad for a in self.attentions):
            raise RuntimeError(
                "recorded attention does not require grad: run the forward with grad "
                "enabled and an input or parameter that requires grad"
            )
        grads = torch.autograd.grad(
            objective, self.attentions, retain_graph=retain_graph
        )
        self.gradients = list(grads)
        return self.gradients


@contextmanager
def record_attention(
    model: Union[nn.Module, ViTAdapter],
    with_grad: bool = False,
    layers: Optional[Sequence[int]] = None,
) -> Iterator[AttentionRecorder]:
    """Record the attention probabilities of every block (or of ``layers``).

    Args:
        model: A supported timm ViT or its adapter.
        with_grad: Also store attention gradients when ``.backward()`` runs inside.
        layers: Block indices to record (default: all).

    Yields:
        An :class:`AttentionRecorder`.

    Examples::

        >>> with record_attention(model) as rec:
        ...     logits = model(images)
        >>> rec.attentions[0].shape   # (B, heads, T, T)
    """
    adapter = ViTAdapter.of(model)
    modules = adapter.attention_modules()
    chosen = range(len(modules)) if layers is None else list(layers)
    recorder = AttentionRecorder(len(modules), with_grad)
    saved = []
    handles = []
    try:
        for i in chosen:
            mod = modules[i]
            saved.append((mod, mod.__dict__.get("fused_attn", _MISSING)))
            if hasattr(mod, "fused_attn"):
                mod.fused_attn = False
            handles.append(
                mod.attn_drop.register_forward_hook(
                    lambda m, a, out, i=i: recorder._hook(i, m, a, out)
                )
            )
        yield recorder
    finally:
        for h in handles:
            h.remove()
        for mod, flag in saved:
            if flag is _MISSING:
                mod.__dict__.pop("fused_attn", None)
            else:
                mod.fused_attn = flag
