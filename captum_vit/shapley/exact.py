"""Exact Shapley values by enumerating every coalition (d <= 16)."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .._utils import check_int, progress_bar
from .games import Game

__all__ = ["MAX_EXACT_PLAYERS", "all_coalitions", "exact_shapley"]

#: Largest number of players :func:`exact_shapley` enumerates (2**16 coalitions).
MAX_EXACT_PLAYERS = 16


def all_coalitions(num_players: int) -> Tensor:
    """Every subset of ``d`` players as a (2**d, d) boolean matrix.

    Row ``k`` is the binary expansion of ``k``: player ``j`` is in coalition ``k`` iff
    bit ``j`` of ``k`` is set.

    Args:
        num_players: ``1 <= d <= MAX_EXACT_PLAYERS``.

    Returns:
        A (2**d, d) boolean tensor.
    """
    d = _check_d(num_players)
    codes = torch.arange(2**d, dtype=torch.long)
    return ((codes[:, None] >> torch.arange(d)) & 1).bool()


def exact_shapley(
    game: Game,
    num_players: int,
    batch_size: int = 4096,
    show_progress: bool = False,
) -> Tensor:
    r"""Exact Shapley values of a game, by evaluating all ``2**d`` coalitions.

    ``φ_i = Σ_{S ⊆ D \ {i}} |S|! (d − |S| − 1)! / d! · (v(S ∪ {i}) − v(S))``, computed
    in float64 from the values of every coalition (``v(0)`` and ``v(1)`` included).

    Args:
        game: Callable mapping an (n, d) boolean keep matrix to (n, C) values (or (n,)
            for a scalar game), e.g. ``SurrogateGame(surrogate).for_image(x)``.
        num_players: Number of players ``d`` (1 <= d <= 16).
        batch_size: Coalitions per call of ``game``. Coalitions are passed in order of
            their size, so a ``"drop"``-mode surrogate game pads little.
        show_progress: Show a tqdm bar over the calls.

    Returns:
        (d, C) float64 Shapley values ((d,) for a scalar game). They satisfy efficiency:
        ``φ.sum(0) == v(1) − v(0)``.

    Raises:
        ValueError: ``num_players`` outside ``[1, 16]``, or the game returns a wrong
            number of rows or non-finite values.

    Examples::

        >>> weights = torch.arange(4.0)
        >>> exact_shapley(lambda s: s.double() @ weights, 4)    # additive game
        tensor([0., 1., 2., 3.], dtype=torch.float64)
    """
    d = _check_d(num_players)
    batch_size = check_int("batch_size", batch_size, 1)
    masks = all_coalitions(d)
    sizes = masks.sum(dim=1)
    order = torch.argsort(sizes, stable=True)
    values: Optional[Tensor] = None
    scalar = False
    chunks = range(0, masks.shape[0], batch_size)
    for lo in progress_bar(chunks, enabled=show_progress, desc="exact Shapley"):
        idx = order[lo : lo + batch_size]
        out = torch.as_tensor(game(masks[idx]))
        if out.dim() == 1:
            scalar = True
            out = out[:, None]
        if out.dim() != 2 or out.shape[0] != idx.numel():
            raise ValueError(
                f"game: expected ({idx.numel()}, C) values for {idx.numel()} "
                f"coalitions, got shape {tuple(out.shape)}"
            )
        if values is None:
            values = torch.empty(masks.shape[0], out.shape[1], dtype=torch.float64)
        values[idx] = out.detach().to("cpu", torch.float64)
    assert values is not None
    if not bool(torch.isfinite(values).all()):
        raise ValueError("game: returned non-finite values")
    # weight of a coalition of size s not containing i: s! (d - s - 1)! / d!
    w = torch.tensor(
        [
            math.exp(math.lgamma(s + 1) + math.lgamma(d - s) - math.lgamma(d + 1))
            for s in range(d)
        ],
        dtype=torch.float64,
    )
    codes = torch.arange(2**d, dtype=torch.long)
    phi = torch.empty(d, values.shape[1], dtype=torch.float64)
    for i in range(d):
        without = codes[(codes >> i) & 1 == 0]
        diff = values[without | (1 << i)] - values[without]
        phi[i] = (w[sizes[without]][:, None] * diff).sum(dim=0)
    return phi[:, 0] if scalar else phi


def _check_d(num_players: int) -> int:
    if isinstance(num_players, bool) or not isinstance(num_players, int):
        raise TypeError(f"num_players: expected an int, got {type(num_players)}")
    if not 1 <= num_players <= MAX_EXACT_PLAYERS:
        raise ValueError(
            f"num_players: exact enumeration supports 1 <= d <= {MAX_EXACT_PLAYERS} "
            f"(2**d coalitions), got {num_players}; use kernel_shap for larger d"
        )
    return num_players
