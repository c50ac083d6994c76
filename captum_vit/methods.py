"""Named explanation methods with uniform construction, for the command line and the
evaluation tables.

Each entry builds, for a model, a function ``explain(inputs, target, seeds=None) ->
attributions`` with Captum's shapes. ``seeds`` (one int per image) seeds the random
choices of methods that make them per image, so an image's map never depends on the
batch or the process it was computed in; seeded methods that are already per-image
reproducible (TIS, ViT-CX, RISE: the same seed for every image) ignore it. Methods that
need extra trained parts (ViT Shapley's explainer) raise :class:`MethodUnavailable`
when those parts are not there.

Builders read options from ``extras``: ``tis_masks``, ``rise_masks``, ``n_steps``,
``vitcx_fill``, ``rise_fill``, ``input_mean``/``input_std``, ``show_progress`` (tqdm
bars inside the methods that have them; False unless the caller asks, as in Captum),
and the trained parts (``shapley_explainer``, ``shapley_surrogate``).

Every built function runs under the same guard (:func:`_guarded`), whatever the method:
the inputs are validated (floating point, finite, at least one image, the model's
layout and dtype: ``ViTAdapter.check_images``), so is the target
(also by methods that ignore it), the model runs in eval mode and eagerly for the call
(modes restored afterwards), and methods with ``needs_grad`` refuse to run inside
``torch.inference_mode()`` with a message saying so.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn
from torch import Tensor

#: ``explain(inputs, target, seeds=None) -> attributions``.
Explain = Callable[..., Tensor]


class MethodUnavailable(RuntimeError):
    """The method cannot run for this model (e.g. no trained explainer)."""


@dataclass(frozen=True)
class Method:
    """A named method: how to build it and how to read its maps."""

    name: str
    build: Callable[[nn.Module, Dict[str, Any]], Explain]
    signed: bool
    description: str
    options: Dict[str, Any] = field(default_factory=dict)
    #: Differentiates the model (cannot run inside ``torch.inference_mode()``).
    needs_grad: bool = False
    #: Whether the method evaluates the model on perturbed inputs (its forward
    #: passes run under ``--amp`` autocast).
    perturbation: bool = False


def _progress(extras: Dict[str, Any]) -> bool:
    return bool(extras.get("show_progress", False))


def _rollout(model: nn.Module, extras: Dict[str, Any]) -> Explain:
    from .attr import AttentionRollout

    m = AttentionRollout(model)
    return lambda x, t, seeds=None: m.attribute(x, target=t)  # target validated only


def _genatt(model: nn.Module, extras: Dict[str, Any]) -> Explain:
    from .attr import GenAtt

    m = GenAtt(model)
    return lambda x, t, seeds=None: m.attribute(x, target=t)


def _normalization(extras: Dict[str, Any]) -> Dict[str, Any]:
    """The model's input normalisation from ``extras`` (for the "black" fill)."""
    return dict(input_mean=extras.get("input_mean"), input_std=extras.get("input_std"))


def _vitcx(model: nn.Module, extras: Dict[str, Any]) -> Explain:
    from .attr import ViTCX

    m = ViTCX(model, **_normalization(extras))
    fill = extras.get("vitcx_fill", "mean")  # the measured default, see ViTCX
    sp = _progress(extras)
    return lambda x, t, seeds=None: m.attribute(
        x, target=t, seed=0, baselines=fill, show_progress=sp
    )


def _tis(model: nn.Module, extras: Dict[str, Any]) -> Explain:
    from .attr import TransformerInputSampling

    m = TransformerInputSampling(model, n_masks=extras.get("tis_masks", 1024))
    sp = _progress(extras)
    return lambda x, t, seeds=None: m.attribute(x, target=t, seed=0, show_progress=sp)


def _transformer_attribution(model: nn.Module, extras: Dict[str, Any]) -> Explain:
    from .attr import TransformerAttribution

    m = TransformerAttribution(model)
    return lambda x, t, seeds=None: m.attribute(x, target=t)


def _raw_attention(model: nn.Module, extras: Dict[str, Any]) -> Explain:
    from .attr import RawAttention

    m = RawAttention(model)
    return lambda x, t, seeds=None: m.attribute(x, target=t)  # target validated only


def _rise(model: nn.Module, extras: Dict[str, Any]) -> Explain:
    from .attr import RISE

    # extras["rise_masks"]: fewer masks for quick runs (the paper uses 4000)
    m = RISE(model, n_masks=extras.get("rise_masks", 4000), **_normalization(extras))
    fill = extras.get("rise_fill", "zero")
    sp = _progress(extras)
    return lambda x, t, seeds=None: m.attribute(
        x, target=t, seed=0, baselines=fill, show_progress=sp
    )


def _gradcam(model: nn.Module, extras: Dict[str, Any]) -> Explain:
    from .attr import ViTGradCAM

    m = ViTGradCAM(model)
    return lambda x, t, seeds=None: m.attribute(x, target=t)


def _ig(model: nn.Module, extras: Dict[str, Any]) -> Explain:
    from captum.attr import IntegratedGradients

    m = IntegratedGradients(model)
    steps = extras.get("n_steps", 20)
    return lambda x, t, seeds=None: m.attribute(
        x, target=t, n_steps=steps, internal_batch_size=64
    )


def _ixg(model: nn.Module, extras: Dict[str, Any]) -> Explain:
    from captum.attr import InputXGradient

    m = InputXGradient(model)
    # inputs that already require grad spare Captum's "set automatically" warning
    return lambda x, t, seeds=None: m.attribute(
        x.detach().requires_grad_(True), target=t
    )


def _skipplus_ig(model: nn.Module, extras: Dict[str, Any]) -> Explain:
    from captum.attr import IntegratedGradients

    from .attr import SkipPLUSWrapper

    m = SkipPLUSWrapper(IntegratedGradients(model))
    steps = extras.get("n_steps", 20)
    return lambda x, t, seeds=None: m.attribute(
        x, target=t, n_steps=steps, internal_batch_size=64
    )


def _skipplus_ixg(model: nn.Module, extras: Dict[str, Any]) -> Explain:
    from captum.attr import InputXGradient

    from .attr import SkipPLUSWrapper

    m = SkipPLUSWrapper(InputXGradient(model))
    return lambda x, t, seeds=None: m.attribute(x, target=t)


def _leave_one_out(model: nn.Module, extras: Dict[str, Any]) -> Explain:
    """Captum FeatureAblation with one feature per patch (leave-one-out)."""
    from captum.attr import FeatureAblation

    from .vit import ViTAdapter

    adapter = ViTAdapter(model)
    m = FeatureAblation(model)
    sp = _progress(extras)

    def explain(x: Tensor, t: Tensor, seeds: Optional[Sequence[int]] = None) -> Tensor:
        gh, gw = adapter.check_images(x)
        ph, pw = adapter.patch_size
        ids = torch.arange(gh * gw, device=x.device).reshape(1, 1, gh, gw)
        mask = ids.repeat_interleave(ph, 2).repeat_interleave(pw, 3)
        mask = mask[..., : x.shape[-2], : x.shape[-1]].expand_as(x[:1]).contiguous()
        return m.attribute(
            x,
            target=t,
            feature_mask=mask,
            perturbations_per_eval=64,
            show_progress=sp,
        )

    return explain


def _vit_shapley(model: nn.Module, extras: Dict[str, Any]) -> Explain:
    explainer = extras.get("shapley_explainer")
    if explainer is None:
        raise MethodUnavailable(
            "vit-shapley needs a ViT Shapley explainer trained for this model; one is "
            "shipped only for the embedded default model with its shipped weights "
            "(train one with `captum-vit train-shapley --out RUN`, then pass "
            "--shapley RUN)"
        )
    from .attr import ViTShapley

    m = ViTShapley(explainer, extras.get("shapley_surrogate"))
    return lambda x, t, seeds=None: m.attribute(x, target=t)


def _random(model: nn.Module, extras: Dict[str, Any]) -> Explain:
    """Random patch scores: the floor any method should beat.

    With ``seeds`` every image draws its scores from its own seed (the same map for
    the same image in any batch or process); without, successive calls continue one
    stream seeded with ``extras["seed"]``.
    """
    from .vit import ViTAdapter, tokens_to_pixels

    adapter = ViTAdapter(model)
    gen = torch.Generator().manual_seed(int(extras.get("seed", 0)))

    def explain(x: Tensor, t: Tensor, seeds: Optional[Sequence[int]] = None) -> Tensor:
        grid = adapter.check_images(x)
        n = grid[0] * grid[1]
        if seeds is None:
            scores = torch.rand(x.shape[0], n, generator=gen)
        else:
            if len(seeds) != x.shape[0]:
                raise ValueError(
                    f"seeds: expected {x.shape[0]} per-image seeds, got {len(seeds)}"
                )
            scores = (
                torch.stack(
                    [
                        torch.rand(n, generator=torch.Generator().manual_seed(int(s)))
                        for s in seeds
                    ]
                )
                if len(seeds)
                else torch.zeros(0, n)
            )
        return tokens_to_pixels(scores.to(x.device), grid, x)

    return explain


def _guarded(method: Method) -> Method:
    """``method`` whose built functions validate their arguments and run the model in
    eval mode and eagerly for the call (see the module docstring)."""
    from ._guard import model_call, require_autograd
    from ._utils import format_target, unpack_inputs
    from .vit import ViTAdapter

    build = method.build

    def guarded_build(model: nn.Module, extras: Dict[str, Any]) -> Explain:
        explain = build(model, extras)
        adapter = ViTAdapter(model)
        num_classes = adapter.num_classes

        def run(x: Tensor, t: Tensor, seeds: Optional[Sequence[int]] = None) -> Tensor:
            images, _ = unpack_inputs(x)
            adapter.check_images(images)  # layout and dtype, also for Captum's
            if t is not None:
                t = format_target(t, images.shape[0], num_classes).to(images.device)
            with model_call(model):
                if method.needs_grad:
                    require_autograd(method.name)
                return explain(images, t, seeds)

        return run

    return dataclasses.replace(method, build=guarded_build)


METHODS: Dict[str, Method] = {
    m.name: _guarded(m)
    for m in [
        Method("rollout", _rollout, False, "Attention rollout (Abnar & Zuidema 2020)"),
        Method(
            "genatt", _genatt, False, "GenAtt (Chefer et al. 2021)", needs_grad=True
        ),
        Method("vitcx", _vitcx, False, "ViT-CX (Xie et al. 2023)", perturbation=True),
        Method(
            "tis",
            _tis,
            False,
            "Transformer Input Sampling (Englebert 2023)",
            perturbation=True,
        ),
        Method(
            "transformer-attribution",
            _transformer_attribution,
            False,
            "Transformer Attribution, LRP (Chefer et al. 2021)",
            needs_grad=True,
        ),
        Method("raw-attention", _raw_attention, False, "Last block's attention"),
        Method("rise", _rise, False, "RISE (Petsiuk et al. 2018)", perturbation=True),
        Method(
            "gradcam",
            _gradcam,
            False,
            "Grad-CAM on the last block's tokens",
            needs_grad=True,
        ),
        Method("vit-shapley", _vit_shapley, True, "ViT Shapley (Covert et al. 2023)"),
        Method("ig", _ig, True, "Integrated Gradients, 20 steps", needs_grad=True),
        Method(
            "skipplus-ig",
            _skipplus_ig,
            True,
            "SkipPLUS(IG) (Mehri et al. 2024)",
            needs_grad=True,
        ),
        Method("ixg", _ixg, True, "Input x Gradient", needs_grad=True),
        Method("skipplus-ixg", _skipplus_ixg, True, "SkipPLUS(IxG)", needs_grad=True),
        Method(
            "leave-one-out",
            _leave_one_out,
            True,
            "FeatureAblation per patch",
            perturbation=True,
        ),
        Method("random", _random, False, "Random patch scores (baseline)"),
    ]
}


def default_model_extras(device: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """Trained parts shipped for the embedded default model (its ViT Shapley
    explainer and surrogate) on ``device``, or ``{}`` on an install without them.

    They belong to the default model's *shipped* weights: pass them only with that
    model (``captum_vit.models.load_model("default")`` does so). When the installed
    default classifier has another architecture than the shipped pair (it was
    retrained), this warns and returns ``{}``: the model still loads, so that
    ``captum-vit train-shapley`` can make a new pair, and ``vit-shapley`` says it
    is unavailable.
    """
    import warnings

    from . import zoo

    try:
        explainer, surrogate = zoo.load_default_explainer(device)
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        warnings.warn(str(exc), UserWarning, stacklevel=2)
        return {}
    return {"shapley_explainer": explainer, "shapley_surrogate": surrogate}


#: Methods that ``captum-vit explain`` leaves out of its quick preview (no
#: ``--method``): each costs thousands of forward passes per image (RISE: 4000
#: masks, ten times any other method on the embedded model).
PREVIEW_SKIPPED = ("rise",)


def preview_methods() -> List[Method]:
    """What ``captum-vit explain`` runs without ``--method``: the seed methods and
    the cheap baselines, every method but :data:`PREVIEW_SKIPPED`."""
    return [m for m in METHODS.values() if m.name not in PREVIEW_SKIPPED]


def method_names() -> List[str]:
    """All registered method names, in table order."""
    return list(METHODS)


def resolve_methods(names: Optional[List[str]]) -> List[Method]:
    """Look up method names (``None`` or a list containing ``"all"`` = every method;
    repeated names count once, in the order first given).

    Raises:
        ValueError: naming the unknown method(s) and the known ones.
    """
    names = list(names or ["all"])
    unknown = [n for n in names if n not in METHODS and n != "all"]
    if unknown:
        raise ValueError(
            f"unknown method(s) {unknown}; known: {', '.join(METHODS)} (or 'all')"
        )
    if "all" in names:
        return list(METHODS.values())
    return [METHODS[n] for n in dict.fromkeys(names)]
