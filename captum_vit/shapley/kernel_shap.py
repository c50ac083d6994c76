"""KernelSHAP with paired sampling and convergence detection (Covert & Lee, 2021).

KernelSHAP (Lundberg & Lee, 2017) solves the Shapley value's weighted least-squares
characterisation with sampled coalitions: with ``z ~ p_Sh`` (the Shapley kernel),
``A = E[z zᵀ]`` and ``b = E[z (v(z) − v(0))]`` are estimated by sample means and

    ``φ = A⁻¹ (b − 1 · (1ᵀA⁻¹b − v(1) + v(0)) / (1ᵀA⁻¹1))``

enforces efficiency exactly. *Paired sampling* evaluates every sampled coalition
together with its complement, which cancels much of the variance. *Convergence
detection* follows Covert & Lee: the estimate's standard deviation is estimated from the
spread of independent estimates computed on disjoint batches, scaled to the number of
batches used; sampling stops when, for every checked class, the largest standard
deviation falls below ``threshold`` times the range of the estimated values
(``max_j φ_j − min_j φ_j``).
"""

from __future__ import annotations

from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .._utils import check_int, check_number, progress_bar
from .games import Game
from .sampling import ShapleySampler

__all__ = ["KernelShapResult", "kernel_shap", "solve_constrained"]


class KernelShapResult(NamedTuple):
    """Output of :func:`kernel_shap`.

    Attributes:
        values: (d, C) float64 Shapley value estimates ((d,) for a scalar game).
        std: Estimated standard deviations of ``values`` (same shape).
        num_evals: Game evaluations used, including ``v(0)`` and ``v(1)``.
        converged: Whether the convergence criterion was met before ``max_evals``.
        history: ``(num_evals, values)`` after every batch when ``record_history``
            was set, else an empty list.
    """

    values: Tensor
    std: Tensor
    num_evals: int
    converged: bool
    history: List[Tuple[int, Tensor]]


def solve_constrained(A: Tensor, b: Tensor, total: Tensor) -> Tensor:
    """Solve ``min (φ)ᵀAφ − 2bᵀφ`` subject to ``1ᵀφ = total`` (per column of ``b``).

    Args:
        A: (d, d) symmetric positive (semi-)definite matrix.
        b: (d, C) right-hand sides.
        total: (C,) efficiency targets ``v(1) − v(0)``.

    Returns:
        (d, C) solution; a pseudo-inverse is used while ``A`` is singular.
    """
    ones = torch.ones(A.shape[0], 1, dtype=A.dtype)
    rhs = torch.cat([ones, b], dim=1)
    try:
        sol = torch.linalg.solve(A, rhs)
    except RuntimeError:  # singular A (too few samples yet)
        sol = torch.linalg.pinv(A, hermitian=True) @ rhs
    a_inv_one, a_inv_b = sol[:, :1], sol[:, 1:]
    denom = a_inv_one.sum()
    if float(denom.abs()) < 1e-300:  # guard: A degenerate along 1
        return a_inv_b
    return a_inv_b - a_inv_one * (a_inv_b.sum(dim=0, keepdim=True) - total) / denom


def kernel_shap(
    game: Game,
    num_players: int,
    batch_size: int = 512,
    paired: bool = True,
    threshold: float = 0.1,
    max_evals: int = 1_000_000,
    min_batches: int = 5,
    converge_on: Optional[Sequence[int]] = None,
    record_history: bool = False,
    seed: int = 0,
    show_progress: bool = False,
    callback: Optional[Callable[[int, Tensor], bool]] = None,
) -> KernelShapResult:
    """Estimate Shapley values with KernelSHAP until convergence.

    Args:
        game: Callable mapping an (n, d) boolean keep matrix to (n, C) values (or
            (n,)), e.g. ``SurrogateGame(surrogate).for_image(x)``.
        num_players: Number of players ``d >= 2``.
        batch_size: Coalitions per game call (even when ``paired``): each batch also
            yields one independent estimate for the variance.
        paired: Paired sampling: each coalition is evaluated with its complement.
        threshold: Stop when ``max_j std_j < threshold · (max_j φ_j − min_j φ_j)`` for
            every class in ``converge_on`` (0 disables the check). Covert et al. use
            0.1–0.2 for images.
        max_evals: Evaluation budget; sampling stops there, converged or not.
        min_batches: Smallest number of batches before convergence can be declared
            (the variance estimate needs a few independent estimates).
        converge_on: Class indices whose convergence is checked (default all).
        record_history: Keep ``(num_evals, values)`` after every batch.
        seed: Seed of the coalition sampler.
        show_progress: Show a tqdm bar of the convergence ratio.
        callback: Called after every batch as ``callback(num_evals, values)``
            (values (d, C) float64); returning True stops sampling (the result then
            has ``converged=False`` unless the criterion was met too).

    Returns:
        A :class:`KernelShapResult`.

    Raises:
        ValueError: bad sizes, a game that returns a wrong shape or non-finite values.

    Examples::

        >>> game = SurrogateGame(surrogate).for_image(images[0])
        >>> res = kernel_shap(game, 64, threshold=0.05)
        >>> res.values.shape, res.converged
        (torch.Size([64, 10]), True)
    """
    if isinstance(num_players, bool) or not isinstance(num_players, int):
        raise TypeError(f"num_players: expected an int, got {type(num_players)}")
    if num_players < 2:
        raise ValueError(f"num_players: expected >= 2, got {num_players}")
    d = num_players
    batch_size = check_int("batch_size", batch_size, 2)
    if paired and batch_size % 2:
        raise ValueError(f"batch_size: must be even with paired=True, got {batch_size}")
    threshold = check_number("threshold", threshold, 0.0)
    max_evals = check_int("max_evals", max_evals, 2 + batch_size)
    min_batches = check_int("min_batches", min_batches, 2)
    sampler = ShapleySampler(d)
    gen = torch.Generator().manual_seed(int(seed))

    scalar = []

    def evaluate(keep: Tensor) -> Tensor:
        out = torch.as_tensor(game(keep)).detach().to("cpu", torch.float64)
        if not scalar:
            scalar.append(out.dim() == 1)
        if out.dim() == 1:
            out = out[:, None]
        if out.dim() != 2 or out.shape[0] != keep.shape[0]:
            raise ValueError(
                f"game: expected ({keep.shape[0]}, C) values, got {tuple(out.shape)}"
            )
        if not bool(torch.isfinite(out).all()):
            raise ValueError("game: returned non-finite values")
        return out

    empty = torch.zeros(d, dtype=torch.bool)
    ends = evaluate(torch.stack([empty, ~empty]))
    v0, v1 = ends[0], ends[1]
    total = v1 - v0
    num_classes = v0.numel()
    classes = list(range(num_classes)) if converge_on is None else list(converge_on)
    if not classes or any(not 0 <= int(c) < num_classes for c in classes):
        raise ValueError(f"converge_on: expected class indices in [0, {num_classes})")
    evals = 2
    n = 0
    A = torch.zeros(d, d, dtype=torch.float64)
    b = torch.zeros(d, num_classes, dtype=torch.float64)
    estimates: List[Tensor] = []
    history: List[Tuple[int, Tensor]] = []
    values = torch.zeros(d, num_classes, dtype=torch.float64)
    std = torch.full_like(values, float("inf"))
    converged = False
    bar = progress_bar(total=max_evals, enabled=show_progress, desc="KernelSHAP")
    bar.update(evals)
    while evals + batch_size <= max_evals:
        s = sampler.sample(batch_size, paired=paired, generator=gen)
        z = s.to(torch.float64)
        v = evaluate(s) - v0
        evals += batch_size
        bar.update(batch_size)
        a_batch = z.T @ z / batch_size
        b_batch = z.T @ v / batch_size
        estimates.append(solve_constrained(a_batch, b_batch, total))
        n += batch_size
        A += (a_batch - A) * (batch_size / n)
        b += (b_batch - b) * (batch_size / n)
        values = solve_constrained(A, b, total)
        if record_history:
            history.append((evals, values.clone()))
        stop = bool(callback(evals, values)) if callback is not None else False
        if len(estimates) >= min_batches:
            stacked = torch.stack(estimates)
            std = (stacked.var(dim=0) / len(estimates)).sqrt()
            ratio = _ratio(values[:, classes], std[:, classes])
            bar.set_postfix(ratio=f"{ratio:.3f}")
            if threshold > 0 and ratio < threshold:
                converged = True
                break
        if stop:
            break
    bar.close()
    if scalar[0]:
        history = [(k, h[:, 0]) for k, h in history]
        return KernelShapResult(values[:, 0], std[:, 0], evals, converged, history)
    return KernelShapResult(values, std, evals, converged, history)


def _ratio(values: Tensor, std: Tensor) -> float:
    """max over classes of max_j std_j / (max_j φ_j − min_j φ_j), zero range guarded."""
    span = values.amax(dim=0) - values.amin(dim=0)
    top = std.amax(dim=0)
    ratio = torch.where(
        span > 0, top / span.clamp_min(1e-300), torch.where(top > 0, torch.inf, 0.0)
    )
    return float(ratio.max())
