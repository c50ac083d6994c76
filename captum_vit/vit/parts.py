"""Named parts of a ViT that some methods and metrics need beyond the forward pass.

Kept next to the adapter (the only code that knows model internals) so that methods
never reach into a model's modules themselves:

- :func:`input_normalization`: the per-channel mean and std of the model's
  preprocessing, where the model records them (timm's ``pretrained_cfg``);
- :func:`attention_input`: the module whose output is the normalised input of a
  block's attention (Grad-CAM's and ViT-CX's default token layer);
- :func:`parameter_groups`: the model's parameters grouped from the output down
  (head, last block, ..., first block, embedding), for cascading randomisation.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch.nn as nn

from .._utils import check_int, check_number
from .adapter import ViTAdapter

Normalization = Tuple[Tuple[float, ...], Tuple[float, ...]]


def _as_floats(value: object, name: str) -> Tuple[float, ...]:
    """Finite numbers (one per channel, or one for all), or an error naming
    ``name``."""
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name}: expected numbers, got {value!r}")
    try:
        items = list(value)  # type: ignore[call-overload]
    except TypeError:
        items = [value]
    out = tuple(check_number(name, v) for v in items)
    if not out:
        raise ValueError(f"{name}: expected one value per channel, got none")
    return out


def input_normalization(
    model: Union[nn.Module, ViTAdapter],
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
) -> Optional[Normalization]:
    """The ``(mean, std)`` with which the model's inputs were normalised.

    An explicit ``mean``/``std`` wins; otherwise they are read from the model's
    ``pretrained_cfg`` (or ``default_cfg``), which ``timm.create_model`` attaches to
    every model it builds, pretrained or not. A model built from its class directly
    (e.g. the embedded default model) carries no such record: pass them explicitly
    (``captum_vit.zoo.MEAN`` / ``STD`` for the default model).

    Args:
        model: A supported ViT or its adapter.
        mean: Per-channel mean in [0, 1] pixel units (or one value for all channels).
        std: Per-channel standard deviation (positive).

    Returns:
        ``(mean, std)`` as tuples of floats, or None when neither is given nor
        recorded by the model.

    Raises:
        ValueError: only one of ``mean``/``std`` given, or a non-positive std.

    Examples::

        >>> input_normalization(timm.create_model("vit_tiny_patch16_224"))
        ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    """
    if (mean is None) != (std is None):
        raise ValueError("input_mean/input_std: give both or neither")
    if mean is None:
        module = model.model if isinstance(model, ViTAdapter) else model
        cfg = getattr(module, "pretrained_cfg", None) or getattr(
            module, "default_cfg", None
        )
        if not isinstance(cfg, dict) or "mean" not in cfg or "std" not in cfg:
            return None
        mean, std = cfg["mean"], cfg["std"]
    m = _as_floats(mean, "input_mean")
    s = _as_floats(std, "input_std")
    if len(m) != len(s):
        raise ValueError(
            f"input_mean/input_std: expected as many means as stds, got {len(m)} and "
            f"{len(s)}"
        )
    if min(s) <= 0:
        raise ValueError(f"input_std: expected positive values, got {s}")
    return m, s


def attention_input(model: Union[nn.Module, ViTAdapter], block: int) -> nn.Module:
    """The module whose output is block ``block``'s normalised attention input.

    For timm ViT and Eva blocks this is ``blocks[block].norm1``: its (B, P + N, D)
    output is what the block's attention sees (ViT-CX's feature layer and the
    "GradCAM (LN)" layer of the ViT Shapley paper's baselines).

    Args:
        model: A supported ViT or its adapter.
        block: Block index (negative counts from the end).

    Returns:
        The module.

    Raises:
        ValueError: ``block`` out of range.
        TypeError: the block has no pre-attention norm.
    """
    adapter = ViTAdapter.of(model)
    n = adapter.num_layers
    blk = adapter.blocks[check_int("block", block, -n, n - 1)]
    norm = getattr(blk, "norm1", None)
    if not isinstance(norm, nn.Module):
        raise TypeError(
            f"block: {type(blk).__name__} has no pre-attention norm (norm1); pass the "
            "token layer explicitly"
        )
    return norm


def parameter_groups(
    model: Union[nn.Module, ViTAdapter],
) -> List[Tuple[str, List[Tuple[str, nn.Parameter]]]]:
    """The model's parameters grouped from the output down.

    Order: ``"head"`` (final norm, pooling norm and classifier heads), then
    ``"blocks.{L-1}"`` down to ``"blocks.0"``, then ``"embedding"`` (patch embedding,
    prefix tokens, position embeddings, pre-norm: everything before the blocks).
    This is the order of the cascading randomisation of Adebayo et al. (2018).
    Groups without parameters are left out.

    Args:
        model: A supported ViT or its adapter.

    Returns:
        ``[(group name, [(parameter name, parameter), ...]), ...]``.

    Examples::

        >>> [name for name, _ in parameter_groups(model)]
        ['head', 'blocks.1', 'blocks.0', 'embedding']
    """
    adapter = ViTAdapter.of(model)
    head: List[Tuple[str, nn.Parameter]] = []
    blocks: List[List[Tuple[str, nn.Parameter]]] = [
        [] for _ in range(adapter.num_layers)
    ]
    embedding: List[Tuple[str, nn.Parameter]] = []
    after = {id(p) for m in adapter._after_blocks() for p in m.parameters()}
    for name, p in adapter.model.named_parameters():
        parts = name.split(".")
        if id(p) in after:
            head.append((name, p))
        elif parts[0] == "blocks":
            blocks[int(parts[1])].append((name, p))
        else:
            embedding.append((name, p))
    groups = [("head", head)]
    groups += [(f"blocks.{i}", blocks[i]) for i in reversed(range(len(blocks)))]
    groups.append(("embedding", embedding))
    return [(name, params) for name, params in groups if params]
