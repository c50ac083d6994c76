"""Method options in one place (issue 27 point 2): MethodOptions holds every knob with
its default once; the command line, explain and evaluate read it; trained parts stay
apart; one build-and-skip path; stored settings keep their keys."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch
from helpers import images, make_model

import captum_vit.cli as cli_module
from captum_vit.cli import build_parser
from captum_vit.evaluate import EvalConfig
from captum_vit.explain import _other_knobs, run_explain
from captum_vit.methods import (
    DEFAULT_OPTIONS,
    METHODS,
    MethodOptions,
    MethodUnavailable,
    TrainedParts,
    build_all,
    resolve_methods,
)
from captum_vit.shapley import ShapleyExplainer

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_paper_defaults_are_read_from_one_place():
    assert (DEFAULT_OPTIONS.tis_masks, DEFAULT_OPTIONS.rise_masks) == (1024, 4000)
    assert DEFAULT_OPTIONS.n_steps == 20 and not DEFAULT_OPTIONS.show_progress
    parser = build_parser()
    for command in ("explain", "evaluate"):
        args = parser.parse_args([command])
        assert (args.tis_masks, args.rise_masks, args.ig_steps) == (
            DEFAULT_OPTIONS.tis_masks,
            DEFAULT_OPTIONS.rise_masks,
            DEFAULT_OPTIONS.n_steps,
        )
    cfg = EvalConfig()
    assert cfg.method_options() == DEFAULT_OPTIONS
    assert inspect.signature(run_explain).parameters["options"].default is (
        DEFAULT_OPTIONS
    )


def test_options_are_frozen_and_checked():
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_OPTIONS.tis_masks = 8  # type: ignore[misc]
    for name in ("tis_masks", "rise_masks", "n_steps"):
        with pytest.raises(ValueError, match=f"^{name}: "):
            MethodOptions(**{name: 0})


def test_stored_settings_keep_their_keys():
    """Folders of earlier runs resume: evaluate stores EvalConfig's flat fields,
    explain the three counts and nothing more with the default knobs."""
    fields = set(dataclasses.asdict(EvalConfig()))
    assert {"tis_masks", "rise_masks", "n_steps"} <= fields
    assert not any(
        isinstance(v, dict) for v in dataclasses.asdict(EvalConfig()).values()
    )
    assert _other_knobs(DEFAULT_OPTIONS) == {}
    assert _other_knobs(MethodOptions(vitcx_fill="zero", tis_masks=8)) == {
        "vitcx_fill": "zero"
    }


def test_a_mapping_of_knobs_and_trained_parts_builds_the_same_maps():
    model = make_model("cls")
    x, target = images("cls"), torch.tensor([1, 2])
    typed = METHODS["tis"].explainer(model, MethodOptions(tis_masks=4))
    mapped = METHODS["tis"].build(model, {"tis_masks": 4})
    assert torch.equal(typed(x, target), mapped(x, target))
    with pytest.raises(TypeError, match=r"unknown method option\(s\) \['tis_mask'\]"):
        METHODS["tis"].build(model, {"tis_mask": 4})


def test_trained_parts_stay_apart_from_the_knobs():
    model = make_model("cls")
    x, target = images("cls"), torch.tensor([1, 2])
    with pytest.raises(MethodUnavailable, match="train-shapley"):
        METHODS["vit-shapley"].explainer(model, DEFAULT_OPTIONS)
    torch.manual_seed(0)
    parts = TrainedParts(ShapleyExplainer.from_surrogate(model), model)
    typed = METHODS["vit-shapley"].explainer(model, DEFAULT_OPTIONS, parts)
    mapped = METHODS["vit-shapley"].build(
        model,
        {"shapley_explainer": parts.shapley_explainer, "shapley_surrogate": model},
    )
    assert torch.equal(typed(x, target), mapped(x, target))


def test_one_build_and_skip_path():
    model = make_model("cls")
    methods = resolve_methods(["rollout", "vit-shapley", "random"])
    built, unavailable = build_all(methods, model, MethodOptions(tis_masks=4))
    assert list(built) == ["rollout", "random"]
    assert list(unavailable) == ["vit-shapley"]
    assert "\n" not in unavailable["vit-shapley"]
    source = inspect.getsource(cli_module)
    for name in ("build_all", "build_available", ".build(", "timed_explain"):
        assert name not in source, name
