"""Model parameter randomisation test (Adebayo et al., NeurIPS 2018, "Sanity checks
for saliency maps").

An explanation that reflects what the model learned must change when the model's
weights are replaced by random ones. The cascading test randomises the parameters
from the output down, one group at a time and cumulatively (head, last block, ...,
first block, embedding), recomputes the explanation after every step and compares it
with the original one by the Spearman rank correlation and the structural similarity
(SSIM) of the maps. A method passes when the similarities fall as more of the model
is randomised; a map that stays similar to the original is not explaining the model.

The model is changed in place during the test (explainers hold a reference to it)
and restored bit for bit afterwards, also when the explainer raises.
"""

from __future__ import annotations

import math
from typing import Any, Callable, List, NamedTuple, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .._utils import (
    all_finite,
    check_batch,
    check_choice,
    check_int,
    check_number,
    check_seed,
)
from . import _core

_MODES = ("cascading", "independent")


class RandomizationResult(NamedTuple):
    """Result of :func:`model_parameter_randomization`.

    Attributes:
        layers: The S parameter groups randomised at each step, in order (with
            ``"cascading"`` step s has groups ``layers[:s + 1]`` randomised).
        spearman: (B, S) Spearman rank correlation between the original and the
            randomised map at every step.
        ssim: (B, S) SSIM between the original and the randomised map (both
            min-max normalised to [0, 1]).
    """

    layers: List[str]
    spearman: Tensor
    ssim: Tensor


def _maps(attributions: Any, batch: int, absolute: bool) -> Tensor:
    """(B, H, W) float64 maps: channels summed, optionally absolute values."""
    a = _core.unwrap(attributions, "attributions").detach()
    if a.dim() == 4:
        a = a.sum(dim=1)
    if a.dim() != 3 or a.shape[0] != batch:
        raise ValueError(
            "attributions: expected (B, C, H, W) or (B, H, W) maps for B = "
            f"{batch}, got shape {tuple(a.shape)}"
        )
    a = a.double()
    if not all_finite(a):
        raise ValueError("attributions: contains NaN or infinite values")
    return a.abs() if absolute else a


def _unit(maps: Tensor) -> Tensor:
    """Per-map min-max normalisation to [0, 1]; a constant map becomes zeros."""
    flat = maps.flatten(1)
    lo = flat.min(dim=1).values[:, None, None]
    span = flat.max(dim=1).values[:, None, None] - lo
    return torch.where(span > 0, (maps - lo) / torch.where(span > 0, span, 1.0), 0.0)


def ssim(
    x: Tensor,
    y: Tensor,
    data_range: float = 1.0,
    window: int = 11,
    sigma: float = 1.5,
) -> Tensor:
    """Mean structural similarity (Wang et al. 2004) of two batches of maps.

    Gaussian-weighted local means, variances and covariance (window ``window``,
    ``sigma`` 1.5, population statistics, valid positions only; the window shrinks
    to the largest odd size that fits smaller maps), constants
    ``C1 = (0.01 L)²`` and ``C2 = (0.03 L)²`` with ``L = data_range``, averaged over
    the positions.

    Args:
        x: (B, H, W) maps.
        y: (B, H, W) maps.
        data_range: Range L of the values (1 for maps in [0, 1]), > 0.
        window: Window size (an even size is reduced by one), >= 1.
        sigma: Standard deviation of the Gaussian weights, > 0.

    Returns:
        (B,) SSIM values in [-1, 1] (1 for identical maps).

    Raises:
        ValueError: maps of different or wrong shapes, an empty batch, NaN or
            infinite values, out-of-range ``data_range``, ``window`` or ``sigma``.

    Examples::

        >>> ssim(maps, maps)          # ones
    """
    x, y = _core.unwrap(x, "x"), _core.unwrap(y, "y")
    if x.dim() != 3:
        raise ValueError(f"x: expected (B, H, W) maps, got shape {tuple(x.shape)}")
    if y.shape != x.shape:
        raise ValueError(
            f"y: expected the shape of x, {tuple(x.shape)}, got {tuple(y.shape)}"
        )
    for name, t in (("x", x), ("y", y)):
        check_batch(name, t)
        if not all_finite(t):
            raise ValueError(f"{name}: contains NaN or infinite values")
    data_range = check_number("data_range", data_range, 0.0, low_open=True)
    window = check_int("window", window, 1)
    sigma = check_number("sigma", sigma, 0.0, low_open=True)
    x, y = x.double(), y.double()
    size = min(window, x.shape[-2], x.shape[-1])
    size -= 1 - size % 2  # odd
    r = torch.arange(size, dtype=torch.float64, device=x.device) - size // 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    g = g / g.sum()
    k = (g[:, None] * g[None, :])[None, None]

    def filt(t: Tensor) -> Tensor:
        return F.conv2d(t[:, None], k)[:, 0]

    mx, my = filt(x), filt(y)
    vx = filt(x * x) - mx * mx
    vy = filt(y * y) - my * my
    cxy = filt(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / (
        (mx * mx + my * my + c1) * (vx + vy + c2)
    )
    return s.flatten(1).mean(dim=1)


def _randomise(params: List[nn.Parameter], gen: torch.Generator) -> None:
    """Fill each parameter with Gaussian values of its own mean and std."""
    for p in params:
        data = p.detach()
        mean = float(data.double().mean())
        std = float(data.double().std()) if data.numel() > 1 else 0.0
        if not math.isfinite(std):
            std = 0.0
        z = torch.randn(data.shape, generator=gen, dtype=torch.float64)
        data.copy_((mean + std * z).to(dtype=data.dtype, device=data.device))


@_core.evaluates_argument("model")
@_core.evaluates_argument("explainer")
def model_parameter_randomization(
    model: nn.Module,
    explainer: Union[Callable[..., Any], Any],
    inputs: Tensor,
    target: _core.TargetType = None,
    *,
    attributions: Optional[Tensor] = None,
    mode: str = "cascading",
    layers: Optional[Sequence[str]] = None,
    absolute: bool = True,
    seed: int = 0,
    **kwargs: Any,
) -> RandomizationResult:
    """Model parameter randomisation test (Adebayo et al., NeurIPS 2018).

    The parameters of ``model`` are grouped from the output down by its adapter
    (:meth:`captum_vit.vit.ViTAdapter.parameter_groups`: ``"head"``,
    ``"blocks.{L-1}"``, ..., ``"blocks.0"``, ``"embedding"``), on every supported
    family (Swin's patch merging goes with the block after it). In
    ``"cascading"`` mode (the paper's main test) the groups are randomised one after
    the other and cumulatively; in ``"independent"`` mode one group at a time, the
    others original. After each step the explanation of ``inputs`` is recomputed
    and compared with the original one: Spearman rank correlation of the maps
    (absolute values by default, as the paper's "absolute" variant) and SSIM of the
    min-max normalised maps.

    Randomisation: every parameter tensor of a group is refilled with i.i.d.
    Gaussian values of the tensor's own mean and standard deviation (seeded; the
    scale of each layer is kept, so activations stay in range; a constant tensor,
    e.g. a LayerNorm weight still at its initial 1, stays constant). The model is
    changed in place, since the explainer holds it, and restored exactly afterwards
    (parameter values bit for bit; ``requires_grad``, ``.grad`` and train/eval
    modes as found), also when the explainer raises or the call is interrupted.
    The model (and any model the explainer holds) runs in eval mode, and eagerly if
    compiled, for the whole test.

    Args:
        model: The supported ViT the explainer explains (the module it holds); a
            class ``target`` needs a model with a classifier head.
        explainer: An attributor with ``attribute`` (e.g. ``GenAtt(model)``) or a
            callable ``f(inputs, target=..., **kwargs) -> attributions``.
        inputs: (B, C, H, W) images.
        target: Class(es) to explain, passed to the explainer; None lets the
            explainer choose (e.g. the prediction of the *randomised* model, as in
            the paper) — pass the original predictions to keep the class fixed.
        attributions: The original explanation, if already computed (else it is
            computed first).
        mode: ``"cascading"`` (default) or ``"independent"``.
        layers: Names of the groups to randomise, in the order given (default all,
            from the head down).
        absolute: Compare absolute values (default) or signed maps.
        seed: Seed of the random parameters (group g uses stream g).
        **kwargs: More keyword arguments for the explainer (``seed``,
            ``n_steps``, ...).

    Returns:
        A :class:`RandomizationResult` ``(layers, spearman, ssim)``.

    Raises:
        ValueError: unknown group names, bad mode, maps of the wrong shape, an
            empty batch or non-finite inputs, a target out of range.
        TypeError: non-floating-point inputs (e.g. uint8 images), a target that
            is not integer-like, an unsupported model, or a ``target`` for a model
            without classifier head.

    Examples::

        >>> from captum_vit import GenAtt
        >>> from captum_vit.metrics import model_parameter_randomization
        >>> res = model_parameter_randomization(model, GenAtt(model), images,
        ...                                     target=labels)
        >>> res.layers                  # ['head', 'blocks.11', ..., 'embedding']
        >>> res.spearman.mean(0)        # should fall towards 0
    """
    from ..vit import CLASS_HEAD, ViTAdapter

    check_choice("mode", mode, _MODES)
    seed = check_seed("seed", seed)
    inputs = _core.check_inputs(inputs)
    fn = getattr(explainer, "attribute", explainer)
    if not callable(fn):
        raise TypeError(
            "explainer: expected an attributor with .attribute or a callable"
        )
    adapter = ViTAdapter.of(model)
    groups = dict(adapter.parameter_groups())
    names = list(groups) if layers is None else list(layers)
    unknown = [n for n in names if n not in groups]
    if unknown or not names:
        raise ValueError(
            f"layers: unknown or no parameter groups {unknown}; known: {list(groups)}"
        )
    batch = inputs.shape[0]
    if target is not None:
        # checked here, before any parameter changes; passed on as given
        adapter.require(CLASS_HEAD, "model_parameter_randomization(target=...)")
        _core.format_target(target, batch, adapter.num_classes, inputs.device, "target")
        kwargs["target"] = target

    def explain() -> Tensor:
        return _maps(fn(inputs, **kwargs), batch, absolute)

    original = (
        explain() if attributions is None else _maps(attributions, batch, absolute)
    )
    flat_orig, unit_orig = original.flatten(1), _unit(original)
    params = [p for n in names for _, p in groups[n]]
    saved = [p.detach().clone() for p in params]
    # what an explainer might touch on the way: gradients, flags, modes
    every = list(model.parameters())
    flags = [(p, p.requires_grad, p.grad) for p in every]
    modes = [(m, m.training) for m in model.modules()]
    rho, sim = [], []
    try:
        with torch.no_grad():
            for step, name in enumerate(names):
                if mode == "independent" and step > 0:
                    for p, s in zip(params, saved):
                        p.detach().copy_(s)
                gen = _core.generator(seed, list(groups).index(name))
                _randomise([p for _, p in groups[name]], gen)
                with torch.enable_grad():
                    maps = explain()
                if maps.shape != original.shape:
                    raise ValueError(
                        "explainer: the randomised model's maps have shape "
                        f"{tuple(maps.shape)}, the original ones "
                        f"{tuple(original.shape)}"
                    )
                rho.append(_core.spearman(flat_orig, maps.flatten(1)))
                sim.append(ssim(unit_orig, _unit(maps)))
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.detach().copy_(s)
        for p, requires_grad, grad in flags:
            p.requires_grad_(requires_grad)
            p.grad = grad
        for m, training in modes:
            m.training = training
    return RandomizationResult(
        layers=names,
        spearman=torch.stack(rho, dim=1).float(),
        ssim=torch.stack(sim, dim=1).float(),
    )
