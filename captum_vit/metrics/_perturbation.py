"""Perturbation curves: insertion, deletion, AOPC and accuracy-based curves.

All of them are one call of :func:`_curves`: rank the features by attribution, keep
the top-k (insertion) or all but the top-k (deletion) features at each step, evaluate
the perturbed inputs with the shared engine in :mod:`._core`.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, NamedTuple, Optional, Sequence

import torch
from torch import Tensor

from .._utils import all_finite, check_batch, check_choice, check_subset
from . import _core
from ._core import BaselineType, TargetType
from ._docs import fill_doc

_DIRECTIONS = ("insertion", "deletion")


class PerturbationCurves(NamedTuple):
    """Curves returned by :func:`insertion_deletion_curves`.

    Attributes:
        fractions: (S,) fraction of features inserted / deleted at each point, from 0
            to 1 (the x-axis).
        insertion: (B, S) target score while inserting the most important features
            first (starting from everything removed), or None if not requested.
        deletion: (B, S) target score while deleting the most important features
            first (starting from the full input), or None if not requested.
    """

    fractions: Tensor
    insertion: Optional[Tensor]
    deletion: Optional[Tensor]


def _curves(
    setup: _core.Setup,
    counts: Tensor,
    directions: Sequence[str],
    *,
    descending: bool = True,
    tie_break: str = "random",
    seed: int = 0,
    kind: Optional[str] = None,
) -> Dict[str, Tensor]:
    """Curves (B, S) per direction; ``counts`` are features moved at each point."""
    num, b = setup.num_features, setup.batch
    device = setup.inputs.device
    ranks = _core.feature_ranks(setup.attributions, seed, tie_break, descending)
    s = counts.numel()
    counts = counts.to(device)
    # rows: direction-major, then sample, then step
    d = len(directions)
    is_ins = torch.tensor(
        [name == "insertion" for name in directions], device=device
    ).repeat_interleave(b * s)
    sample = torch.arange(b, device=device).repeat_interleave(s).repeat(d)
    moved = counts.repeat(b * d)
    kept = torch.where(is_ins, moved, num - moved)

    def make_keep(rows: Tensor) -> Tensor:
        r = ranks[sample[rows]]
        k = moved[rows, None]
        return torch.where(is_ins[rows, None], r < k, r >= k)

    desc = "+".join(directions)
    scores = _core.evaluate(setup, sample, kept, make_keep, desc=desc, kind=kind)
    scores = scores.view(d, b, s)
    return {name: scores[i] for i, name in enumerate(directions)}


@_core.evaluates_argument("forward_func")
@fill_doc
def insertion_deletion_curves(
    forward_func: Callable,
    inputs: Tensor,
    attributions: Tensor,
    target: TargetType = None,
    additional_forward_args: Any = None,
    *,
    modes: Sequence[str] = ("insertion", "deletion"),
    n_steps: Optional[int] = None,
    fractions: Optional[Sequence[float]] = None,
    feature_mask: Optional[Tensor] = None,
    removal: BaselineType = None,
    score: str = "probability",
    attribution_reduction: str = "sum",
    tie_break: str = "random",
    max_examples_per_batch: Optional[int] = None,
    seed: int = 0,
    show_progress: bool = False,
) -> PerturbationCurves:
    """Insertion and deletion curves (Petsiuk et al., RISE, BMVC 2018).

    Features are inserted into an empty input (insertion) or deleted from the full
    input (deletion) from most to least important; the target's score is recorded at
    ``S = n_steps + 1`` points, including both ends. Ties in the attributions are
    broken reproducibly (``tie_break``). With token removal on a ViT this is the
    "true token masking" protocol of ViT Shapley (Covert et al. 2023) and SkipPLUS
    (Mehri et al. 2024); pixel baselines follow RISE and TIS (Englebert et al. 2023).
    Runs under ``torch.no_grad()``.

    Args:
        {forward_func}
        {inputs}
        {attributions}
        {target}
        {additional_forward_args}
        modes: Curves to compute, any of ``"insertion"`` and ``"deletion"``. Both
            in one call share their all-removed and full-input points.
        n_steps: Number of steps; point j moves ``round(j * F / n_steps)`` features.
            Default ``min(F, 224)`` (one feature per step up to 224 features).
        fractions: Alternatively, increasing fractions of features in [0, 1] at which
            to record the curve (e.g. ``[0, 0.1, ..., 0.9]``).
        {feature_mask}
        {removal}
        {score}
        {attribution_reduction}
        {tie_break}
        {max_examples_per_batch}
        {seed}
        {show_progress}

    Returns:
        A :class:`PerturbationCurves` ``(fractions, insertion, deletion)`` with the
        (S,) x-axis and (B, S) curves (None for modes not requested).

    Examples::

        >>> from captum_vit.metrics import insertion_deletion_curves
        >>> curves = insertion_deletion_curves(model, images, attr, target=labels)
        >>> curves.deletion.shape     # (B, 197) for ViT-B/16 at 224
    """
    modes = check_subset("modes", modes, _DIRECTIONS)
    kwargs = dict(locals())
    _, x, curves = _run(kwargs, modes, metric="insertion_deletion_curves")
    return PerturbationCurves(
        fractions=x,
        insertion=curves.get("insertion"),
        deletion=curves.get("deletion"),
    )


def _run(
    kw: Dict[str, Any],
    directions: Sequence[str],
    *,
    descending: bool = True,
    kind: Optional[str] = None,
    target_name: str = "target",
    metric: str = "this metric",
):
    """Prepare a call from its keyword arguments and compute the curves
    (``metric`` names the caller in capability errors)."""
    setup = _core.prepare_call(kw, metric, target_name)
    counts, x = _core.curve_points(setup.num_features, kw["n_steps"], kw["fractions"])
    curves = _curves(
        setup,
        counts,
        directions,
        descending=descending,
        tie_break=kw["tie_break"],
        seed=kw["seed"],
        kind=kind,
    )
    return setup, x, curves


def area_under_curve(
    fractions: Tensor, curves: Tensor, area: str = "trapezoid"
) -> Tensor:
    """Area under perturbation curves.

    Args:
        fractions: (S,) x-axis (fractions of features moved, in [0, 1]).
        curves: (B, S) curves.
        area: ``"trapezoid"`` (trapezoidal rule over ``fractions``; with the default
            steps the x-axis is [0, 1], as in RISE) or ``"mean"`` (the mean of the S
            curve values, the ViT Shapley paper's metric).

    Returns:
        (B,) areas.

    Raises:
        ValueError: shapes that do not match, an empty batch, NaN or infinite values,
            fractions outside [0, 1].

    Examples::

        >>> c = insertion_deletion_curves(model, images, attr)
        >>> area_under_curve(c.fractions, c.insertion)
    """
    x = _core.unwrap(fractions, "fractions")
    y = _core.unwrap(curves, "curves")
    if x.dim() != 1 or x.numel() < 2:
        raise ValueError(
            f"fractions: expected an (S,) x-axis with S >= 2, got {tuple(x.shape)}"
        )
    if y.dim() != 2 or y.shape[1] != x.numel():
        raise ValueError(
            f"curves: expected (B, S) = (B, {x.numel()}) curves, got {tuple(y.shape)}"
        )
    check_batch("curves", y)
    if not all_finite(x) or not bool(((x >= 0) & (x <= 1)).all()):
        raise ValueError("fractions: expected finite values in [0, 1]")
    if not all_finite(y):
        raise ValueError("curves: contains NaN or infinite values")
    return _core.area(x, y, area)


def _single_curve_area(mode: str, kwargs: Dict[str, Any]) -> Tensor:
    _, x, curves = _run(kwargs, (mode,), metric=mode)
    return _core.area(x, curves[mode], kwargs["area"])


@_core.evaluates_argument("forward_func")
@fill_doc
def insertion(
    forward_func: Callable,
    inputs: Tensor,
    attributions: Tensor,
    target: TargetType = None,
    additional_forward_args: Any = None,
    *,
    area: str = "trapezoid",
    n_steps: Optional[int] = None,
    fractions: Optional[Sequence[float]] = None,
    feature_mask: Optional[Tensor] = None,
    removal: BaselineType = None,
    score: str = "probability",
    attribution_reduction: str = "sum",
    tie_break: str = "random",
    max_examples_per_batch: Optional[int] = None,
    seed: int = 0,
    show_progress: bool = False,
) -> Tensor:
    """Insertion score (Petsiuk et al. 2018): area under the insertion curve.

    Higher is better. See :func:`insertion_deletion_curves` for the protocol.

    Args:
        {forward_func}
        {inputs}
        {attributions}
        {target}
        {additional_forward_args}
        area: ``"trapezoid"`` (area on a [0, 1] x-axis, RISE) or ``"mean"`` (mean of
            the curve points, ViT Shapley, Covert et al. 2023).
        n_steps: Number of steps (default ``min(F, 224)``).
        fractions: Alternatively, the fractions of features at which to evaluate.
        {feature_mask}
        {removal}
        {score}
        {attribution_reduction}
        {tie_break}
        {max_examples_per_batch}
        {seed}
        {show_progress}

    Returns:
        (B,) insertion areas.

    Examples::

        >>> from captum_vit.metrics import insertion
        >>> insertion(model, images, attr, target=3)              # token removal
        >>> insertion(model, images, attr, removal="blur")        # RISE/TIS baseline
    """
    return _single_curve_area("insertion", dict(locals()))


@_core.evaluates_argument("forward_func")
@fill_doc
def deletion(
    forward_func: Callable,
    inputs: Tensor,
    attributions: Tensor,
    target: TargetType = None,
    additional_forward_args: Any = None,
    *,
    area: str = "trapezoid",
    n_steps: Optional[int] = None,
    fractions: Optional[Sequence[float]] = None,
    feature_mask: Optional[Tensor] = None,
    removal: BaselineType = None,
    score: str = "probability",
    attribution_reduction: str = "sum",
    tie_break: str = "random",
    max_examples_per_batch: Optional[int] = None,
    seed: int = 0,
    show_progress: bool = False,
) -> Tensor:
    """Deletion score (Petsiuk et al. 2018): area under the deletion curve.

    Lower is better. See :func:`insertion_deletion_curves` for the protocol.

    Args:
        {forward_func}
        {inputs}
        {attributions}
        {target}
        {additional_forward_args}
        area: ``"trapezoid"`` (area on a [0, 1] x-axis, RISE) or ``"mean"`` (mean of
            the curve points, ViT Shapley, Covert et al. 2023).
        n_steps: Number of steps (default ``min(F, 224)``).
        fractions: Alternatively, the fractions of features at which to evaluate.
        {feature_mask}
        {removal}
        {score}
        {attribution_reduction}
        {tie_break}
        {max_examples_per_batch}
        {seed}
        {show_progress}

    Returns:
        (B,) deletion areas.

    Examples::

        >>> from captum_vit.metrics import deletion
        >>> deletion(cnn, images, attr, feature_mask=superpixels, removal="mean")
    """
    return _single_curve_area("deletion", dict(locals()))


@_core.evaluates_argument("forward_func")
@fill_doc
def insertion_minus_deletion(
    forward_func: Callable,
    inputs: Tensor,
    attributions: Tensor,
    target: TargetType = None,
    additional_forward_args: Any = None,
    *,
    area: str = "trapezoid",
    n_steps: Optional[int] = None,
    fractions: Optional[Sequence[float]] = None,
    feature_mask: Optional[Tensor] = None,
    removal: BaselineType = None,
    score: str = "probability",
    attribution_reduction: str = "sum",
    tie_break: str = "random",
    max_examples_per_batch: Optional[int] = None,
    seed: int = 0,
    show_progress: bool = False,
) -> Tensor:
    """Insertion − deletion (Transformer Input Sampling, Englebert et al. 2023).

    The area under the insertion curve minus the area under the deletion curve,
    both from one call (they share the all-removed and full-input points), with the
    same features, ranking and removal. Higher is better; a map that ranks the
    features at random scores about 0.

    Args:
        {forward_func}
        {inputs}
        {attributions}
        {target}
        {additional_forward_args}
        area: ``"trapezoid"`` (default) or ``"mean"`` of the curve points.
        n_steps: Number of steps (default ``min(F, 224)``).
        fractions: Alternatively, the fractions of features at which to evaluate.
        {feature_mask}
        {removal}
        {score}
        {attribution_reduction}
        {tie_break}
        {max_examples_per_batch}
        {seed}
        {show_progress}

    Returns:
        (B,) differences of areas.

    Examples::

        >>> from captum_vit.metrics import insertion_minus_deletion
        >>> insertion_minus_deletion(model, images, attr, removal="blur")   # TIS
    """
    _, x, curves = _run(dict(locals()), _DIRECTIONS, metric="insertion_minus_deletion")
    return _core.area(x, curves["insertion"], area) - _core.area(
        x, curves["deletion"], area
    )


_AOPC_MODES = ("deletion", "insertion", "positive", "negative")
_AOPC_SCORES = ("probability", "logit", "accuracy")


@_core.evaluates_argument("forward_func")
@fill_doc
def aopc(
    forward_func: Callable,
    inputs: Tensor,
    attributions: Tensor,
    target: TargetType = None,
    additional_forward_args: Any = None,
    *,
    mode: str = "deletion",
    n_steps: Optional[int] = None,
    fractions: Optional[Sequence[float]] = None,
    feature_mask: Optional[Tensor] = None,
    removal: BaselineType = None,
    score: str = "probability",
    attribution_reduction: str = "sum",
    tie_break: str = "random",
    max_examples_per_batch: Optional[int] = None,
    seed: int = 0,
    show_progress: bool = False,
) -> Tensor:
    """Area over the perturbation curve (Samek et al. 2017; SkipPLUS, Mehri et al.
    2024).

    ``AOPC = mean_k [p(x) - p(x_k)]`` over the curve points k (including k = 0),
    where ``x_k`` is the input with the top-k features deleted (``mode="deletion"``
    or ``"positive"``, higher is better), with the k *least* relevant features
    deleted (``"negative"``, Chefer et al.'s negative perturbation, lower is
    better), or with only the top-k features inserted (``"insertion"``, lower is
    better; SkipPLUS reports ``100 - x`` in percent).

    With ``score="accuracy"`` the curve is the top-1 correctness (1.0 when the
    perturbed input is classified as ``target``, else 0.0): the accuracy-based
    AOPC, ``acc(x) - mean_k acc(x_k)`` per sample, whose mean over a dataset is the
    drop of the dataset's accuracy curve (SkipPLUS "deletion/insertion accuracy",
    Chefer et al.'s positive/negative perturbation tests up to the constant
    ``acc(x)``). Pass the ground-truth labels as ``target`` for accuracy; with
    ``target=None`` it measures how often the prediction survives.

    Args:
        {forward_func}
        {inputs}
        {attributions}
        {target}
        {additional_forward_args}
        mode: ``"deletion"`` (default; ``"positive"`` is the same),
            ``"negative"`` or ``"insertion"``.
        n_steps: Number of steps (default ``min(F, 224)``).
        fractions: Alternatively, the fractions of features at which to evaluate.
        {feature_mask}
        {removal}
        score: ``"probability"`` (default), ``"logit"`` or ``"accuracy"`` (top-1
            correctness against ``target``).
        {attribution_reduction}
        {tie_break}
        {max_examples_per_batch}
        {seed}
        {show_progress}

    Returns:
        (B,) AOPC values, in score units.

    Examples::

        >>> from captum_vit.metrics import aopc
        >>> aopc(model, images, attr, n_steps=10)    # 0%, 10%, ..., 100% of patches
        >>> aopc(model, images, attr, labels, mode="negative", score="accuracy",
        ...      fractions=[i / 10 for i in range(10)])
    """
    check_choice("mode", mode, _AOPC_MODES)
    check_choice("score", score, _AOPC_SCORES)
    kwargs = dict(locals())
    kind = None
    if score == "accuracy":
        kwargs["score"], kind = "probability", "accuracy"
    direction = "insertion" if mode == "insertion" else "deletion"
    setup, _, curves = _run(
        kwargs, (direction,), descending=mode != "negative", kind=kind, metric="aopc"
    )
    clean = setup.scores(setup.clean_outputs, setup.target, kind)
    return (clean[:, None] - curves[direction]).mean(dim=-1)


_ACC_MODES = ("positive", "negative", "deletion", "insertion")


@_core.evaluates_argument("forward_func")
@fill_doc
def perturbation_accuracy(
    forward_func: Callable,
    inputs: Tensor,
    attributions: Tensor,
    labels: TargetType,
    additional_forward_args: Any = None,
    *,
    mode: str = "positive",
    n_steps: Optional[int] = None,
    fractions: Optional[Sequence[float]] = None,
    area: str = "trapezoid",
    return_curves: bool = False,
    feature_mask: Optional[Tensor] = None,
    removal: BaselineType = None,
    attribution_reduction: str = "sum",
    tie_break: str = "random",
    max_examples_per_batch: Optional[int] = None,
    seed: int = 0,
    show_progress: bool = False,
) -> Any:
    """Accuracy-based perturbation tests, scored per sample.

    The curve of a sample is its top-1 correctness (1.0 when the perturbed input is
    classified as its label, else 0.0) while features are removed or inserted; the
    area of that 0/1 curve is returned per sample, so ``result.mean()`` over a
    dataset is the area under the dataset's accuracy curve (area is linear).

    Modes:
        - ``"positive"`` (= ``"deletion"``): remove the most relevant features first;
          a sharp accuracy drop is good (lower is better). Chefer et al., CVPR 2021,
          "positive perturbation"; SkipPLUS "deletion accuracy" (reported as
          ``100 - x``).
        - ``"negative"``: remove the least relevant features first; accuracy should
          stay (higher is better). Chefer et al. 2021.
        - ``"insertion"``: insert the most relevant features first into an empty
          input (higher is better). SkipPLUS "insertion accuracy".

    Chefer et al. remove 0%, 10%, ..., 90% of the tokens: pass
    ``fractions=[0.0, 0.1, ..., 0.9]`` (the default is ``n_steps=10``, 0% to 100%).

    Args:
        {forward_func}
        {inputs}
        {attributions}
        labels: The ground-truth class of every sample (an int, a list or a 1-D
            tensor). Required: accuracy needs labels. The attributions should explain
            the class of interest (label or prediction, as in the protocol).
        {additional_forward_args}
        mode: ``"positive"``, ``"negative"``, ``"deletion"`` or ``"insertion"``.
        n_steps: Number of steps (default 10 when ``fractions`` is not given).
        fractions: Alternatively, the fractions of features at which to evaluate.
        area: ``"trapezoid"`` (default) or ``"mean"`` of the curve points.
        return_curves: Also return the x-axis and the (B, S) 0/1 curves.
        {feature_mask}
        {removal}
        {attribution_reduction}
        {tie_break}
        {max_examples_per_batch}
        {seed}
        {show_progress}

    Returns:
        (B,) per-sample areas of the correctness curve; with ``return_curves`` a
        tuple ``(areas, fractions, curves)``.

    Examples::

        >>> from captum_vit.metrics import perturbation_accuracy
        >>> pos = perturbation_accuracy(model, images, attr, labels,
        ...                             fractions=[i / 10 for i in range(10)])
        >>> pos.mean()        # area under the positive-perturbation accuracy curve
    """
    check_choice("mode", mode, _ACC_MODES)
    if labels is None:
        raise ValueError(
            "labels: accuracy-based perturbation needs the ground-truth labels"
        )
    if fractions is None and n_steps is None:
        n_steps = 10
    kwargs = dict(locals())
    kwargs["target"] = labels
    direction = "insertion" if mode == "insertion" else "deletion"
    _, x, curves = _run(
        kwargs,
        (direction,),
        descending=mode != "negative",
        kind="accuracy",
        target_name="labels",
        metric="perturbation_accuracy",
    )
    curves = curves[direction]
    areas = _core.area(x, curves, area)
    if return_curves:
        return areas, x, curves
    return areas
