"""Complexity of an attribution: sparseness (Gini index) and effective complexity.

Both read the attribution as given, flattened per example; no model is needed.
Nearest-upsampled token maps give the same Gini index as their patch grid (the index
is invariant to repeating every value the same number of times).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._utils import all_finite, check_batch, check_choice, check_number
from . import _core

_NEGATIVES = ("shift", "abs", "clip")


def _flat(attributions: Any) -> Tensor:
    attr = _core.unwrap(attributions, "attributions").detach()
    if attr.dim() < 2:
        raise ValueError(
            f"attributions: expected a batch (B, ...), got shape {tuple(attr.shape)}"
        )
    check_batch("attributions", attr)
    attr = attr.reshape(attr.shape[0], -1).double()
    if not all_finite(attr):
        raise ValueError("attributions: contains NaN or infinite values")
    return attr


def sparseness(attributions: Tensor, *, negatives: str = "shift") -> Tensor:
    """Sparseness: Gini index of the attribution (Chalasani et al., ICML 2020).

    ``G = sum_k (2k - n - 1) a_(k) / (n sum_k a_k)`` over the n values sorted
    ascending (Hurley & Rickard 2009); 0 for a uniform map, ``1 - 1/n`` for a single
    non-zero value. Negative values are first handled by ``negatives``: ``"shift"``
    (default; subtract the minimum when it is negative, as TIS, Englebert et al.
    2023), ``"abs"`` (absolute values, as Quantus) or ``"clip"`` (set to zero).

    Guard: an all-zero map (after the step above) has no concentration to measure
    and scores 0.0.

    Args:
        attributions: (B, ...) attributions (any shape with a batch dimension).
        negatives: ``"shift"``, ``"abs"`` or ``"clip"``.

    Returns:
        (B,) Gini indices in [0, 1).

    Examples::

        >>> from captum_vit.metrics import sparseness
        >>> sparseness(attr)           # higher = more concentrated
    """
    check_choice("negatives", negatives, _NEGATIVES)
    a = _flat(attributions)
    if negatives == "abs":
        a = a.abs()
    elif negatives == "clip":
        a = a.clamp_min(0.0)
    else:
        low = a.min(dim=1, keepdim=True).values
        a = a - low.clamp_max(0.0)
    n = a.shape[1]
    a = torch.sort(a, dim=1).values
    k = torch.arange(1, n + 1, dtype=a.dtype, device=a.device)
    num = ((2 * k - n - 1) * a).sum(dim=1)
    den = n * a.sum(dim=1)
    return torch.where(den > 0, num / den.clamp_min(1e-300), 0.0).float()


def effective_complexity(
    attributions: Tensor, *, eps: float = 1e-5, normalize: bool = False
) -> Tensor:
    """Effective complexity (Nguyen & Martinez 2020): how many attributions exceed
    ``eps`` in absolute value.

    Args:
        attributions: (B, ...) attributions.
        eps: Threshold on ``|a|``.
        normalize: Divide each map by its maximum ``|a|`` first (Quantus's default
            normalisation), making ``eps`` relative; an all-zero map stays zero.

    Returns:
        (B,) counts (float). Lower is simpler.

    Examples::

        >>> from captum_vit.metrics import effective_complexity
        >>> effective_complexity(attr, eps=1e-3, normalize=True)
    """
    eps = check_number("eps", eps, 0.0)
    a = _flat(attributions).abs()
    if normalize:
        top = a.max(dim=1, keepdim=True).values
        a = torch.where(top > 0, a / top.clamp_min(1e-300), 0.0)
    return (a > eps).sum(dim=1).float()
