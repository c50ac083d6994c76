"""Record post-softmax attention probabilities (and their gradients) of every block.

Fused attention kernels (timm's ``fused_attn``, PyTorch's SDPA in Hugging Face models,
``need_weights=False`` in torchvision) never hand out the probabilities, so hooks would
silently capture nothing. :func:`record_attention` asks the model's adapter to switch
every attention module to its explicit path for the duration of the ``with`` block and
to report the probabilities each block actually uses; each module's own setting is
restored afterwards, also when the body raises.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, List, Optional, Sequence, Union

import torch
import torch.nn as nn
from torch import Tensor

from .adapter import RECORDED_ATTENTION, ViTAdapter


class AttentionRecorder:
    """Attention probabilities recorded during a forward pass, indexed by layer.

    Attributes:
        attentions: ``attentions[l]`` is block l's (B, heads, T, T) post-softmax
            attention of the last forward pass (None if the block did not run).
        gradients: ``gradients[l]`` is the gradient of a scalar objective with respect
            to ``attentions[l]``; filled by :meth:`grad`, or by ``.backward()`` when the
            recorder was created with ``with_grad=True``. Indexed by layer, never by the
            order in which backward hooks fire.
        pool_attention: For attention-pooled heads (timm ``global_pool="map"``,
            SigLIP), the pool's (B, heads, Q, T') probabilities of its Q latent
            queries over the T' tokens it pools (``pool_offset`` prefix tokens
            skipped); None for other heads.
        pool_gradient: Its gradient (like :attr:`gradients`).
        pool_offset: Index of the first token the pool attends to.
    """

    def __init__(self, num_layers: int, with_grad: bool, pool_offset: int = 0) -> None:
        self.attentions: List[Optional[Tensor]] = [None] * num_layers
        self.gradients: List[Optional[Tensor]] = [None] * num_layers
        self.pool_attention: Optional[Tensor] = None
        self.pool_gradient: Optional[Tensor] = None
        self.pool_offset = pool_offset
        self._with_grad = with_grad

    def _hook(self, layer: int, out: Tensor) -> None:
        self.attentions[layer] = out
        if self._with_grad and out.requires_grad:

            def store(grad: Tensor, layer: int = layer) -> None:
                self.gradients[layer] = grad

            out.register_hook(store)

    def _pool_hook(self, out: Tensor) -> None:
        self.pool_attention = out
        if self._with_grad and out.requires_grad:

            def store(grad: Tensor) -> None:
                self.pool_gradient = grad

            out.register_hook(store)

    def pool_readout(self, fused: Tensor, num_tokens: int) -> Tensor:
        """Readout weights (B, T) over the full sequence from the pool's attention.

        Args:
            fused: (B, Q, T') pool attention with the heads already fused (by the
                method's own rule); averaged over the Q latent queries.
            num_tokens: Length T of the full token sequence.

        Returns:
            (B, T): zero on the prefix tokens the pool skips.
        """
        w = fused.mean(dim=1)
        pad = num_tokens - w.shape[-1]
        if pad != self.pool_offset:
            raise RuntimeError(
                f"pool attention covers {w.shape[-1]} tokens of {num_tokens}, expected "
                f"{num_tokens - self.pool_offset}"
            )
        return torch.cat([w.new_zeros(w.shape[0], pad), w], dim=1)

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
        wanted = list(self.attentions)
        if self.pool_attention is not None:
            wanted.append(self.pool_attention)
        if not all(a.requires_grad for a in wanted):
            raise RuntimeError(
                "recorded attention does not require grad: run the forward with grad "
                "enabled and an input or parameter that requires grad"
            )
        grads = list(torch.autograd.grad(objective, wanted, retain_graph=retain_graph))
        if self.pool_attention is not None:
            self.pool_gradient = grads.pop()
        self.gradients = grads
        return self.gradients


@contextmanager
def record_attention(
    model: Union[nn.Module, ViTAdapter],
    with_grad: bool = False,
    layers: Optional[Sequence[int]] = None,
) -> Iterator[AttentionRecorder]:
    """Record the attention probabilities of every block (or of ``layers``).

    On attention-pooled heads the pool's attention is recorded too
    (:attr:`AttentionRecorder.pool_attention`).

    Args:
        model: A supported ViT or its adapter (a family with recorded attention).
        with_grad: Also store attention gradients when ``.backward()`` runs inside.
        layers: Block indices to record (default: all).

    Yields:
        An :class:`AttentionRecorder`.

    Raises:
        TypeError: the family cannot record attention (e.g. Swin's windows).

    Examples::

        >>> with record_attention(model) as rec:
        ...     logits = model(images)
        >>> rec.attentions[0].shape   # (B, heads, T, T)
    """
    adapter = ViTAdapter.of(model)
    adapter.require(RECORDED_ATTENTION, "record_attention")
    chosen = range(adapter.num_layers) if layers is None else list(layers)
    recorder = AttentionRecorder(adapter.num_layers, with_grad, adapter.pool_offset)
    on_pool = recorder._pool_hook if adapter.pool == "map" else None
    with adapter.attention_probes(chosen, recorder._hook, on_pool):
        yield recorder
