"""Hardening of every metric (issue 17), looped over ``captum_vit.metrics.__all__``:
train mode during a call, compiled models, empty batches, NaN / infinite /
out-of-range numbers, integer-like targets, uint8 inputs, inference mode, arguments
that are ignored but still checked, and quiet progress by default."""

from __future__ import annotations

import inspect
from typing import Any, Dict

import numpy as np
import pytest
import torch
from captum.attr import Saliency
from helpers import make_model, model_state
from test_hardening_methods import (
    INT_LIKE_TARGETS,
    SCALAR_TARGETS,
    TARGET,
    _bad_values,
    _numeric_params,
    dropout_model,
    images,
)

from captum_vit import AttentionRollout, GenAtt, metrics

BOXES = torch.tensor([[0, 0, 16, 16], [8, 8, 24, 24]])


def _masks() -> torch.Tensor:
    m = torch.zeros(2, 32, 32, dtype=torch.bool)
    m[:, 4:20, 4:20] = True
    return m


def _attr() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))


def logit_weighted_inputs(model: torch.nn.Module):
    """A plain-function explainer (no attributor to put the model in eval mode):
    the inputs weighted per channel by the first three logits."""

    def explain(inputs: torch.Tensor, target: Any = None) -> torch.Tensor:
        return model(inputs)[:, :3, None, None] * inputs

    return explain


def metric_calls(model: torch.nn.Module, x: torch.Tensor, attr: torch.Tensor):
    """A small valid keyword call of every metric in ``metrics.__all__``:
    ``{name: (function, kwargs)}`` (see :func:`_kind` for the kinds of metric)."""
    common = dict(forward_func=model, inputs=x, attributions=attr)
    curves = torch.rand(2, 5, generator=torch.Generator().manual_seed(2))
    fractions = (0.25, 0.5)
    return {
        "insertion": (metrics.insertion, {**common, "target": TARGET, "n_steps": 4}),
        "deletion": (metrics.deletion, {**common, "target": TARGET, "n_steps": 4}),
        "insertion_deletion_curves": (
            metrics.insertion_deletion_curves,
            {**common, "target": TARGET, "n_steps": 4},
        ),
        "insertion_minus_deletion": (
            metrics.insertion_minus_deletion,
            {**common, "target": TARGET, "n_steps": 4},
        ),
        "aopc": (metrics.aopc, {**common, "target": TARGET, "n_steps": 4}),
        "perturbation_accuracy": (
            metrics.perturbation_accuracy,
            {**common, "labels": TARGET, "n_steps": 4},
        ),
        "faithfulness_correlation": (
            metrics.faithfulness_correlation,
            {**common, "target": TARGET, "n_samples": 8},
        ),
        "sensitivity_n": (
            metrics.sensitivity_n,
            {**common, "target": TARGET, "n": 2, "n_samples": 8},
        ),
        "sensitivity_n_sweep": (
            metrics.sensitivity_n_sweep,
            {**common, "target": TARGET, "fractions": fractions, "n_samples": 4},
        ),
        "road": (metrics.road, {**common, "target": TARGET, "fractions": fractions}),
        "road_curves": (
            metrics.road_curves,
            {**common, "target": TARGET, "fractions": fractions},
        ),
        "model_parameter_randomization": (
            metrics.model_parameter_randomization,
            dict(
                model=model,
                explainer=logit_weighted_inputs(model),
                inputs=x,
                target=TARGET,
                layers=["head", "blocks.1"],
            ),
        ),
        "max_sensitivity": (
            metrics.max_sensitivity,
            dict(
                explainer=Saliency(model), inputs=x, target=TARGET, n_perturb_samples=2
            ),
        ),
        "pointing_game": (metrics.pointing_game, dict(attributions=attr, boxes=BOXES)),
        "segmentation_ap": (
            metrics.segmentation_ap,
            dict(attributions=attr, masks=_masks()),
        ),
        "pixel_accuracy": (
            metrics.pixel_accuracy,
            dict(attributions=attr, masks=_masks()),
        ),
        "mean_iou": (metrics.mean_iou, dict(attributions=attr, masks=_masks())),
        "box_iou": (metrics.box_iou, dict(attributions=attr, boxes=BOXES)),
        "sparseness": (metrics.sparseness, dict(attributions=attr)),
        "effective_complexity": (
            metrics.effective_complexity,
            dict(attributions=attr),
        ),
        "area_under_curve": (
            metrics.area_under_curve,
            dict(fractions=torch.linspace(0, 1, 5), curves=curves),
        ),
        "ssim": (metrics.ssim, dict(x=attr[:, 0], y=attr[:, 1])),
        "infidelity": (
            metrics.infidelity,
            {**common, "target": TARGET, "n_perturb_samples": 2},
        ),
        "energy_pointing_game": (
            metrics.energy_pointing_game,
            dict(attributions=attr, boxes=BOXES),
        ),
        "segmentation_f1": (
            metrics.segmentation_f1,
            dict(attributions=attr, masks=_masks()),
        ),
        "grid_pointing_game": (
            metrics.grid_pointing_game,
            dict(attributions=attr, cells=[0, 3]),
        ),
    }


def _kind(kwargs: Dict[str, Any]) -> str:
    """ "model" (takes ``forward_func`` or ``model``), "explainer" (takes only an
    attributor) or "free" (no model)."""
    if "forward_func" in kwargs or "model" in kwargs:
        return "model"
    if "explainer" in kwargs:
        return "explainer"
    return "free"


def _as_tensor(out: Any) -> torch.Tensor:
    """One tensor from a metric's result (curves are a named tuple)."""
    if isinstance(out, tuple):
        return torch.cat([o.flatten() for o in out if isinstance(o, torch.Tensor)])
    return out


def _equal(a: Any, b: Any) -> bool:
    return torch.equal(_as_tensor(a), _as_tensor(b))


def test_every_metric_is_covered():
    names = {n for n in metrics.__all__ if inspect.isfunction(getattr(metrics, n))}
    calls = metric_calls(make_model("cls"), images(), _attr())
    assert names == set(calls), "add the new metric to metric_calls"
    for name, (fn, kwargs) in calls.items():
        out = fn(**kwargs)
        assert _as_tensor(out).numel() > 0, name


# ----------------------------------------------------------------------- 1. train mode
def test_model_metrics_run_in_eval_mode():
    model = dropout_model()
    before = model_state(model)
    x, attr = images(), _attr()
    for name, (fn, kwargs) in metric_calls(model, x, attr).items():
        if _kind(kwargs) == "free":
            continue
        first, second = fn(**kwargs), fn(**kwargs)
        assert model_state(model) == before, name
        assert _equal(first, second), name
        model.eval()
        try:
            assert _equal(first, fn(**kwargs)), name
        finally:
            model.train()
    # also with a pixel baseline instead of token removal
    kw = dict(target=TARGET, n_steps=4, removal="blur")
    ref = metrics.insertion(model, x, attr, **kw)
    assert torch.equal(ref, metrics.insertion(model, x, attr, **kw))
    assert model_state(model) == before


# ----------------------------------------------------------------- 7. compiled models
def test_metrics_accept_compiled_models():
    model = make_model("cls")
    x, attr = images(), _attr()
    wrapped = torch.compile(model, backend="aot_eager")
    refs = {
        name: fn(**kwargs)
        for name, (fn, kwargs) in metric_calls(model, x, attr).items()
        if _kind(kwargs) != "free"
    }
    # a wrapper is recognised as the ViT it wraps (token removal, not a pixel fill)
    for name, (fn, kwargs) in metric_calls(wrapped, x, attr).items():
        if name in refs:
            assert _equal(fn(**kwargs), refs[name]), name
    model.compile(backend="aot_eager")  # in place: hooks must still see every forward
    before = model_state(model)
    for name, (fn, kwargs) in metric_calls(model, x, attr).items():
        if name in refs:
            assert _equal(fn(**kwargs), refs[name]), name
    assert model_state(model) == before and model._compiled_call_impl is not None


# ------------------------------------------------------------------- 5. empty batches
def test_empty_batches_are_errors_in_every_metric():
    model = make_model("cls")
    x, attr = images()[:0], _attr()[:0]
    for name, (fn, kwargs) in metric_calls(model, x, attr).items():
        kwargs = dict(kwargs)
        for key in ("target", "labels"):
            if key in kwargs:
                kwargs[key] = []
        for key in ("boxes", "masks"):
            if key in kwargs:
                kwargs[key] = kwargs[key][:0]
        if name == "area_under_curve":
            kwargs["curves"] = kwargs["curves"][:0]
            where = "curves"
        elif name == "ssim":
            kwargs["x"], kwargs["y"] = kwargs["x"][:0], kwargs["y"][:0]
            where = "x"
        else:
            where = "inputs" if _kind(kwargs) != "free" else "attributions"
        with pytest.raises(ValueError, match=f"^{where}: .*empty batch"):
            fn(**kwargs)


# --------------------------------------------- 8. numbers and integer-like targets
def test_every_numeric_metric_argument_rejects_nan_inf_and_out_of_range():
    model = make_model("cls")
    checked = set()
    allow_inf = {("max_sensitivity", "norm_ord")}  # p = inf is the max norm
    for name, (fn, kwargs) in metric_calls(model, images(), _attr()).items():
        for param, integer in _numeric_params(fn):
            for bad in _bad_values(integer):
                if (name, param) in allow_inf and np.isinf(bad):
                    continue
                with pytest.raises((TypeError, ValueError), match=f"^{param}:"):
                    fn(**{**kwargs, param: bad})
                checked.add(f"{name}.{param}")
    assert {
        "insertion.target",
        "insertion.n_steps",
        "insertion.seed",
        "insertion.removal",
        "insertion.max_examples_per_batch",
        "perturbation_accuracy.labels",
        "faithfulness_correlation.n_samples",
        "faithfulness_correlation.subset_size",
        "sensitivity_n.n",
        "max_sensitivity.perturb_radius",
        "max_sensitivity.n_perturb_samples",
        "max_sensitivity.norm_ord",
        "pointing_game.tolerance",
        "pointing_game.max_box_fraction",
        "pixel_accuracy.threshold",
        "box_iou.threshold",
        "effective_complexity.eps",
        "insertion_minus_deletion.n_steps",
        "insertion_minus_deletion.removal",
        "aopc.n_steps",
        "aopc.seed",
        "sensitivity_n_sweep.n_samples",
        "sensitivity_n_sweep.target",
        "road.noise",
        "road.seed",
        "road.max_examples_per_batch",
        "road_curves.noise",
        "road_curves.target",
        "model_parameter_randomization.target",
        "model_parameter_randomization.seed",
        "ssim.data_range",
        "ssim.window",
        "ssim.sigma",
        "infidelity.n_perturb_samples",
        "infidelity.square_size",
        "infidelity.noise_std",
        "energy_pointing_game.threshold",
        "segmentation_f1.threshold",
        "grid_pointing_game.grid",
    } <= checked


def test_out_of_range_metric_arguments():
    model = make_model("cls")
    x, attr = images(), _attr()
    calls = metric_calls(model, x, attr)

    def call(name: str, **kw: Any) -> Any:
        fn, kwargs = calls[name]
        return fn(**{**kwargs, **kw})

    nan = float("nan")
    bad = {
        "tolerance": [lambda: call("pointing_game", tolerance=-1)],
        "max_box_fraction": [
            lambda: call("pointing_game", max_box_fraction=0.0),
            lambda: call("pointing_game", max_box_fraction=1.5),
        ],
        "threshold": [
            lambda: call("pixel_accuracy", threshold=1.5),
            lambda: call("mean_iou", threshold=-0.1),
            lambda: call("box_iou", threshold=2.0),
        ],
        "eps": [lambda: call("effective_complexity", eps=-1)],
        "perturb_radius": [lambda: call("max_sensitivity", perturb_radius=-0.1)],
        "norm_ord": [lambda: call("max_sensitivity", norm_ord="l2")],
        "fractions": [
            lambda: call("insertion", n_steps=None, fractions=[0.0, nan]),
            lambda: call("insertion", n_steps=None, fractions=[0.0, 2.0]),
            lambda: call(
                "area_under_curve", fractions=torch.tensor([0, nan, 0.5, 0.7, 1])
            ),
            lambda: call("road", fractions=[0.1, nan]),
            lambda: call("road_curves", fractions=[0.5, 0.2]),
            lambda: call("sensitivity_n_sweep", fractions=[nan]),
            lambda: call("sensitivity_n_sweep", fractions=["a"]),
            lambda: call("sensitivity_n_sweep", fractions=[0.0, 0.5]),
        ],
        "curves": [
            lambda: call("area_under_curve", curves=torch.full((2, 5), float("inf")))
        ],
        "image_size": [
            lambda: call(
                "pointing_game", attributions=attr[:, 0, :8, :8], image_size=(0, 32)
            ),
            lambda: call(
                "pointing_game", attributions=attr[:, 0, :8, :8], image_size=(nan, 32)
            ),
        ],
        "boxes": [
            lambda: call("pointing_game", boxes=torch.tensor([[0, 0, nan, 8.0]] * 2))
        ],
        "removal": [
            lambda: call("insertion", removal=torch.full_like(x, nan)),
            lambda: call("insertion", removal=lambda z: z * nan),
        ],
        "inputs": [
            lambda: call("deletion", inputs=x * nan),
            lambda: call("road", inputs=x * nan),
            lambda: call("model_parameter_randomization", inputs=x * nan),
        ],
        "noise": [
            lambda: call("road", noise=-0.1),
            lambda: metrics.NoisyLinearImputation(noise=nan),
            lambda: metrics.NoisyLinearImputation(noise=float("inf")),
            lambda: metrics.NoisyLinearImputation(noise="0.1"),
        ],
        "target": [
            lambda: call("model_parameter_randomization", target=[1, 99]),
            lambda: call("model_parameter_randomization", target=[1.0, 3.0]),
        ],
        "x": [lambda: call("ssim", x=attr[:, 0] * nan)],
        "y": [lambda: call("ssim", y=attr[:, 1:3])],
        "data_range": [lambda: call("ssim", data_range=0.0)],
        "sigma": [lambda: call("ssim", sigma=-1.0)],
        "window": [lambda: call("ssim", window=0)],
        # ignored arguments are checked all the same
        "subset_size": [
            lambda: call(
                "faithfulness_correlation",
                subsets=torch.rand(4, 16, generator=torch.Generator().manual_seed(0))
                < 0.5,
                subset_size=0,
            )
        ],
        "interpolate_mode": [
            lambda: call("pointing_game", interpolate_mode="bogus"),  # no resampling
            lambda: call("segmentation_ap", interpolate_mode="area"),
        ],
    }
    for name, fns in bad.items():
        for fn in fns:
            with pytest.raises((TypeError, ValueError), match=f"^{name}"):
                fn()
    # numbers that are valid: inf as a p-norm order, negative fills, numpy ints
    assert call("max_sensitivity", norm_ord=float("inf")).shape == (2,)
    assert call("insertion", removal=-1.5).shape == (2,)
    torch.testing.assert_close(
        call("sensitivity_n", n=np.int64(2), n_samples=np.int32(8)),
        call("sensitivity_n"),
    )


def test_metrics_take_integer_like_targets():
    model = make_model("cls")
    calls = metric_calls(model, images(), _attr())
    for name in (
        "insertion",
        "perturbation_accuracy",
        "max_sensitivity",
        "road",
        "model_parameter_randomization",
    ):
        fn, kwargs = calls[name]
        key = "labels" if "labels" in kwargs else "target"
        ref = fn(**kwargs)
        for t in INT_LIKE_TARGETS:
            assert _equal(fn(**{**kwargs, key: t}), ref), (name, t)
        ref = fn(**{**kwargs, key: 3})
        for t in SCALAR_TARGETS:
            assert _equal(fn(**{**kwargs, key: t}), ref), (name, t)


# ---------------------------------------------------- 9. uint8 inputs, inference_mode
def test_uint8_inputs_name_inputs_and_say_how_to_convert():
    model = make_model("cls")
    x = (images().clamp(-1, 1) * 127 + 128).to(torch.uint8)
    for name, (fn, kwargs) in metric_calls(model, x, _attr()).items():
        if _kind(kwargs) == "free":
            continue
        with pytest.raises(TypeError, match="^inputs: .*float.*normalise"):
            fn(**kwargs)


def test_metrics_run_in_inference_mode():
    model = make_model("cls")
    x, attr = images(), _attr()
    message = "needs autograd .* inference_mode"
    for name, (fn, kwargs) in metric_calls(model, x, attr).items():
        if name == "max_sensitivity":  # with Saliency, a gradient method
            with torch.inference_mode(), pytest.raises(RuntimeError, match=message):
                fn(**kwargs)
            continue
        ref = fn(**kwargs)
        with torch.inference_mode():
            out = fn(**kwargs)
        assert _equal(out, ref), name
    with torch.inference_mode(), pytest.raises(RuntimeError, match=message):
        metrics.max_sensitivity(GenAtt(model), x, target=TARGET, n_perturb_samples=2)
    # a perturbation explainer runs in inference mode
    explainer = AttentionRollout(model)
    ref = metrics.max_sensitivity(explainer, x, n_perturb_samples=2)
    with torch.inference_mode():
        out = metrics.max_sensitivity(explainer, x, n_perturb_samples=2)
    assert torch.equal(out, ref)


def test_metric_progress_is_off_by_default():
    found = 0
    for name in metrics.__all__:
        fn = getattr(metrics, name)
        if (
            inspect.isfunction(fn)
            and "show_progress" in inspect.signature(fn).parameters
        ):
            assert inspect.signature(fn).parameters["show_progress"].default is False
            found += 1
    assert found >= 7
