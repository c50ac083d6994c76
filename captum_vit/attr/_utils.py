"""Helpers shared by the attribution methods (most defined in ``captum_vit._utils``
and ``captum_vit._guard``): seeds, chunked loops, the layer-capture forward pass
(Grad-CAM, ViT-CX, TIS) and the head's readout of token relevance."""

from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple, TypeVar

import torch
import torch.nn as nn
from torch import Tensor

from .._guard import evaluates_model, model_call, require_autograd  # noqa: F401
from .._utils import (  # noqa: F401
    all_finite,
    TargetType,
    as_target,
    check_choice,
    check_image_batch,
    check_int,
    check_number,
    check_seed,
    format_target,
    pack_output,
    unpack_inputs,
)
from ..vit import AttentionRecorder, ViTAdapter
from ..vit.adapter import installed

_T = TypeVar("_T")


def resolve_seed(seed: Optional[int]) -> int:
    """A validated seed in ``[0, 2**64)``; None draws one from torch's global RNG
    (so ``torch.manual_seed`` reproduces it).

    Args:
        seed: The seed given to a method, or None.

    Returns:
        The seed as a Python int.
    """
    if seed is None:
        return int(torch.randint(0, 2**62, (1,)).item())
    return check_seed("seed", seed)


def chunks(n: int, size: int) -> Iterator[Tuple[int, int]]:
    """The ``(lo, hi)`` bounds of ``range(n)`` cut into pieces of ``size``.

    Args:
        n: Number of items.
        size: Items per piece (the last one may be shorter).

    Returns:
        An iterator of ``(lo, hi)`` pairs.
    """
    for lo in range(0, n, size):
        yield lo, min(n, lo + size)


def _appender(out: List[Any]) -> Callable[[nn.Module, Any, Any], None]:
    """A forward hook that appends the module's output to ``out``."""

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        out.append(output)

    return hook


def capture_layers(
    layers: Sequence[nn.Module], run: Callable[[], _T], name: str = "layer"
) -> Tuple[_T, List[Any]]:
    """Hook ``layers``, call ``run()`` (one forward pass) and return its result with
    the output of each layer; the hooks are removed afterwards, also on error.

    Args:
        layers: The modules whose outputs are wanted.
        run: The forward pass (its grad mode is the caller's).
        name: The argument named in the error message.

    Returns:
        ``(run's result, [output of each layer, in the order of layers])``.

    Raises:
        ValueError: a layer that did not run exactly once.
    """
    seen: List[List[Any]] = [[] for _ in layers]

    def install(handles: List[Any]) -> None:
        for out, layer in zip(seen, layers):
            handles.append(layer.register_forward_hook(_appender(out)))

    with installed(install):  # the package's one hook lifecycle
        result = run()
    for out in seen:
        if len(out) != 1:
            raise ValueError(
                f"{name}: expected the module to run once per forward pass, it ran "
                f"{len(out)} times"
            )
    return result, [out[0] for out in seen]


def head_readout(
    adapter: ViTAdapter,
    rec: AttentionRecorder,
    tokens: Tensor,
    pool_rows: Callable[[Tensor], Tensor],
) -> Tensor:
    """The weights (B, T) with which the head reads the T token rows of a relevance
    matrix, for the B samples of ``tokens`` (any (B, T, ...) tensor).

    Attention-pooled heads read through the pool's recorded attention:
    ``pool_rows`` maps its (B, heads, Q, T') probabilities to (B, Q, T') rows by the
    method's own rule, and :meth:`AttentionRecorder.pool_readout` averages the
    queries. Every other head reads the same rows for every sample,
    :meth:`ViTAdapter.readout_weights`.
    """
    b, t = tokens.shape[0], tokens.shape[1]
    if rec.pool_attention is not None:
        return rec.pool_readout(pool_rows(rec.pool_attention), t)
    return adapter.readout_weights(t - adapter.num_prefix_tokens).expand(b, -1)
