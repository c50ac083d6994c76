"""ROAD: RemOve And Debias (Rong, Leemann, Borisov, Kasneci & Kasneci, ICML 2022).

Features are removed in the order of the attribution, most relevant first (MoRF) or
least relevant first (LeRF), and the removed pixels are filled by noisy linear
imputation from the kept ones (:mod:`._imputation`), which hides *where* pixels were
removed better than a constant and needs no retraining. The score of the target is
read at each fraction of removed features. A faithful map makes the MoRF curve fall
fast and the LeRF curve stay high.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Sequence

import torch
from torch import Tensor

from .._utils import check_choice, check_subset
from . import _core
from ._core import TargetType
from ._docs import fill_doc
from ._imputation import NoisyLinearImputation
from ._perturbation import _curves

_ROAD_MODES = ("morf", "lerf")
_SUMMARIES = ("morf", "lerf", "lerf-morf")
_ROAD_SCORES = ("probability", "logit", "accuracy")
_DEFAULT_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


class RoadCurves(NamedTuple):
    """Curves returned by :func:`road_curves`.

    Attributes:
        fractions: (S,) fraction of features removed at each point.
        morf: (B, S) target score with the most relevant features removed first, or
            None if not requested.
        lerf: (B, S) target score with the least relevant features removed first, or
            None if not requested.
    """

    fractions: Tensor
    morf: Optional[Tensor]
    lerf: Optional[Tensor]


def _pixel_mask(inputs: Tensor) -> Tensor:
    _, _, h, w = inputs.shape
    return torch.arange(h * w, device=inputs.device).reshape(1, 1, h, w)


@_core.evaluates_argument("forward_func")
@fill_doc
def road_curves(
    forward_func: Callable,
    inputs: Tensor,
    attributions: Tensor,
    target: TargetType = None,
    additional_forward_args: Any = None,
    *,
    modes: Sequence[str] = _ROAD_MODES,
    fractions: Sequence[float] = _DEFAULT_FRACTIONS,
    noise: float = 0.01,
    pixels: bool = False,
    feature_mask: Optional[Tensor] = None,
    score: str = "probability",
    attribution_reduction: str = "sum",
    tie_break: str = "random",
    max_examples_per_batch: Optional[int] = None,
    seed: int = 0,
    show_progress: bool = False,
) -> RoadCurves:
    """MoRF and LeRF curves under noisy linear imputation (ROAD, Rong et al. 2022).

    At each fraction f the ``round(f · F)`` most (MoRF) or least (LeRF) relevant
    features are removed, their pixels imputed from the kept pixels (weighted mean
    of the 8 neighbours, 1/6 for horizontal and vertical, 1/12 for diagonal ones,
    solved jointly; plus Gaussian noise of std ``noise``), and the target's score is
    recorded. Feature units: the model's patches (default for every supported ViT
    family, Swin's 4×4-pixel patch grid included), or single pixels (the paper's
    setting; ``pixels=True``, and always for other models without a
    ``feature_mask``), or a ``feature_mask`` whose ids
    are shared by the channels of a pixel. Runs under ``torch.no_grad()``; each
    perturbed image costs one sparse solve on the CPU.

    Rong et al. report accuracy: pass the labels as ``target`` with
    ``score="accuracy"`` (top-1 correctness per sample and point).

    Args:
        {forward_func}
        {inputs}
        {attributions}
        {target}
        {additional_forward_args}
        modes: Curves to compute, any of ``"morf"`` and ``"lerf"``.
        fractions: Increasing fractions of removed features (default 10 % ... 90 %,
            at least two).
        noise: Standard deviation of the imputation noise in the model's input
            space (0.01 as Rong et al.'s code).
        pixels: Rank and remove single pixels instead of a ViT's patches.
        {feature_mask}
        score: ``"probability"`` (default), ``"logit"`` or ``"accuracy"``.
        {attribution_reduction}
        {tie_break}
        {max_examples_per_batch}
        {seed}
        {show_progress}

    Returns:
        A :class:`RoadCurves` ``(fractions, morf, lerf)``.

    Examples::

        >>> from captum_vit.metrics import road_curves
        >>> c = road_curves(model, images, attr, labels, score="accuracy")
        >>> c.morf.mean(0), c.lerf.mean(0)       # accuracy per fraction
    """
    modes = check_subset("modes", modes, _ROAD_MODES)
    check_choice("score", score, _ROAD_SCORES)
    imputation = NoisyLinearImputation(noise)
    inputs = _core.check_inputs(inputs)
    if inputs.dim() != 4:
        raise ValueError(
            f"inputs: ROAD needs (B, C, H, W) images, got {tuple(inputs.shape)}"
        )
    if feature_mask is None and (pixels or _core.vit_adapter(forward_func) is None):
        feature_mask = _pixel_mask(inputs)
    elif feature_mask is not None and pixels:
        raise ValueError("pixels: give either pixels=True or a feature_mask")
    kind = "accuracy" if score == "accuracy" else None
    setup = _core.prepare(
        forward_func,
        inputs,
        attributions,
        target,
        additional_forward_args,
        feature_mask=feature_mask,
        removal=imputation,
        score="probability" if kind else score,
        attribution_reduction=attribution_reduction,
        max_examples_per_batch=max_examples_per_batch,
        seed=seed,
        show_progress=show_progress,
        metric="ROAD",
    )
    counts, x = _core.curve_points(setup.num_features, None, fractions)
    out = {}
    for mode in modes:
        out[mode] = _curves(
            setup,
            counts,
            ("deletion",),
            descending=mode == "morf",
            tie_break=tie_break,
            seed=seed,
            kind=kind,
        )["deletion"]
    return RoadCurves(fractions=x, morf=out.get("morf"), lerf=out.get("lerf"))


@_core.evaluates_argument("forward_func")
@fill_doc
def road(
    forward_func: Callable,
    inputs: Tensor,
    attributions: Tensor,
    target: TargetType = None,
    additional_forward_args: Any = None,
    *,
    mode: str = "morf",
    fractions: Sequence[float] = _DEFAULT_FRACTIONS,
    noise: float = 0.01,
    pixels: bool = False,
    feature_mask: Optional[Tensor] = None,
    score: str = "probability",
    attribution_reduction: str = "sum",
    tie_break: str = "random",
    max_examples_per_batch: Optional[int] = None,
    seed: int = 0,
    show_progress: bool = False,
) -> Tensor:
    """ROAD (Rong et al., ICML 2022): mean score over the removal fractions.

    ``mode="morf"``: the mean of the MoRF curve of :func:`road_curves` (lower is
    better); ``"lerf"``: of the LeRF curve (higher is better); ``"lerf-morf"``: LeRF
    minus MoRF (higher is better, one number rewarding both). See
    :func:`road_curves` for the protocol and the arguments.

    Args:
        {forward_func}
        {inputs}
        {attributions}
        {target}
        {additional_forward_args}
        mode: ``"morf"`` (default), ``"lerf"`` or ``"lerf-morf"``.
        fractions: Increasing fractions of removed features (default 10 % ... 90 %).
        noise: Standard deviation of the imputation noise (0.01).
        pixels: Rank and remove single pixels instead of a ViT's patches.
        {feature_mask}
        score: ``"probability"`` (default), ``"logit"`` or ``"accuracy"``.
        {attribution_reduction}
        {tie_break}
        {max_examples_per_batch}
        {seed}
        {show_progress}

    Returns:
        (B,) mean scores.

    Examples::

        >>> from captum_vit.metrics import road
        >>> road(model, images, attr, labels, mode="morf", score="accuracy")
    """
    check_choice("mode", mode, _SUMMARIES)
    modes = _ROAD_MODES if mode == "lerf-morf" else (mode,)
    kwargs = dict(locals())
    kwargs.pop("mode")
    curves = road_curves(**kwargs)
    if mode == "morf":
        return curves.morf.mean(dim=1)
    if mode == "lerf":
        return curves.lerf.mean(dim=1)
    return curves.lerf.mean(dim=1) - curves.morf.mean(dim=1)
