"""Hardening of every attribution method (issue 17), looped over the public registry
(``captum_vit.methods.METHODS``) and the attribution classes exported from
``captum_vit``, so that a method added later is covered without a new test.

Classes of problems: train mode (dropout) during a call, ignored arguments left
unchecked, empty batches, compiled models, NaN / infinite / out-of-range numbers and
integer-like targets, uint8 images, ``torch.inference_mode()`` and progress bars.
"""

from __future__ import annotations

import inspect
import typing
from typing import Any, Callable, Dict, List, Tuple

import numpy as np
import pytest
import torch
from captum.attr import Attribution, FeatureAblation, IntegratedGradients, Saliency
from helpers import make_model, model_state, open_clip_model

import captum_vit
from captum_vit import (
    RISE,
    AttentionRollout,
    AttnLRP,
    GenAtt,
    PLUSWrapper,
    RawAttention,
    SkipPLUSWrapper,
    TokenMask,
    TransformerAttribution,
    TransformerInputSampling,
    ViTAdapter,
    ViTCX,
    ViTGradCAM,
    ViTShapley,
    AttentionFlow,
    ViTReciproCAM,
    LeGrad,
)
from captum_vit import GradSAM, PartialLRP
from captum_vit import BeyondIntuition, TransitionAttentionMaps
from captum_vit import TextRelevance, ZeroShotClassifier
from captum_vit.methods import METHODS
from captum_vit.shapley import ShapleyExplainer

TARGET = [1, 3]


def dropout_model(seed: int = 0) -> torch.nn.Module:
    """A tiny ViT whose every dropout (also patch dropout) is active in train mode."""
    return make_model(
        "cls",
        seed=seed,
        drop_rate=0.3,
        pos_drop_rate=0.3,
        patch_drop_rate=0.25,
        proj_drop_rate=0.3,
        attn_drop_rate=0.3,
        drop_path_rate=0.3,
    ).train()


def images(b: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def explainer_for(model: torch.nn.Module) -> ShapleyExplainer:
    """An untrained explainer, the same for the same model (seeded initialisation)."""
    torch.manual_seed(0)
    return ShapleyExplainer.from_surrogate(model)


# Every attribution class exported from captum_vit: how to build it on a model, and the
# extra keywords of a small attribute() call. A new public class fails
# test_every_public_class_is_covered until it has an entry here.
CLASSES: Dict[str, Tuple[Callable[[torch.nn.Module], Attribution], Dict[str, Any]]] = {
    "AttentionRollout": (lambda m: AttentionRollout(m), {}),
    "GenAtt": (lambda m: GenAtt(m), {}),
    "ViTCX": (lambda m: ViTCX(m), {"seed": 0}),
    "TransformerInputSampling": (
        lambda m: TransformerInputSampling(m, n_masks=8),
        {"seed": 0},
    ),
    "PLUSWrapper": (lambda m: PLUSWrapper(IntegratedGradients(m)), {"n_steps": 4}),
    "SkipPLUSWrapper": (lambda m: SkipPLUSWrapper(GenAtt(m)), {}),
    "ViTShapley": (lambda m: ViTShapley(explainer_for(m)), {}),
    "TransformerAttribution": (lambda m: TransformerAttribution(m), {}),
    "RawAttention": (lambda m: RawAttention(m), {}),
    "RISE": (lambda m: RISE(m, n_masks=8), {"seed": 0}),
    "ViTGradCAM": (lambda m: ViTGradCAM(m), {}),
    "AttentionFlow": (lambda m: AttentionFlow(m), {}),
    "GradSAM": (lambda m: GradSAM(m), {}),
    "PartialLRP": (lambda m: PartialLRP(m), {}),
    "TransitionAttentionMaps": (lambda m: TransitionAttentionMaps(m, steps=3), {}),
    "BeyondIntuition": (lambda m: BeyondIntuition(m, mode="token", steps=3), {}),
    "AttnLRP": (lambda m: AttnLRP(m), {}),
    "ViTReciproCAM": (lambda m: ViTReciproCAM(m), {}),
    "LeGrad": (lambda m: LeGrad(m), {}),
}
# Public classes that are not attribution methods (no attribute() call).
NOT_METHODS = {"TokenMask", "ViTAdapter", "ZeroShotClassifier", "TextRelevance"}


def public_attribution_classes() -> List[str]:
    return sorted(
        name
        for name in captum_vit.__all__
        if inspect.isclass(getattr(captum_vit, name))
        and issubclass(getattr(captum_vit, name), Attribution)
    )


def extras_for(model: torch.nn.Module) -> Dict[str, Any]:
    """Small settings and an (untrained) ViT Shapley explainer for the registry."""
    return {
        "tis_masks": 8,
        "rise_masks": 8,
        "n_steps": 4,
        "shapley_explainer": explainer_for(model),
        "shapley_surrogate": model,
    }


def run_registry(name: str, model, extras, x, target) -> torch.Tensor:
    # a fresh build per call: the random baseline's generator advances per call
    return METHODS[name].build(model, extras)(x, target)


def run_class(name: str, model, x, target, **kw) -> torch.Tensor:
    make, kwargs = CLASSES[name]
    return make(model).attribute(x, target=target, **{**kwargs, **kw})


def test_every_public_class_is_covered():
    classes = public_attribution_classes()
    assert set(classes) == set(CLASSES), "add the new public class to CLASSES"
    others = {
        n for n in captum_vit.__all__ if inspect.isclass(getattr(captum_vit, n))
    } - set(classes)
    assert others == NOT_METHODS


# ----------------------------------------------------------------------- 1. train mode
@pytest.mark.parametrize("name", list(METHODS))
def test_registry_method_runs_in_eval_mode(name):
    model = dropout_model()
    extras = extras_for(model)
    before = model_state(model)
    x, t = images(), torch.tensor(TARGET)
    first = run_registry(name, model, extras, x, t)
    second = run_registry(name, model, extras, x, t)
    assert model_state(model) == before  # still in train mode, nothing else changed
    assert torch.equal(first, second)
    model.eval()
    extras["shapley_explainer"].eval()
    assert torch.equal(first, run_registry(name, model, extras, x, t))


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_class_runs_in_eval_mode(name):
    model = dropout_model()
    make, kwargs = CLASSES[name]
    method = make(model)
    modules = [model] + ([method.explainer] if isinstance(method, ViTShapley) else [])
    before = [model_state(m) for m in modules]
    x = images()
    first = method.attribute(x, target=TARGET, **kwargs)
    second = method.attribute(x, target=TARGET, **kwargs)
    assert [model_state(m) for m in modules] == before
    assert torch.equal(first, second)
    for m in modules:
        m.eval()
    assert torch.equal(first, method.attribute(x, target=TARGET, **kwargs))


def test_mode_restored_when_the_call_raises():
    model = dropout_model()
    model.blocks[0].eval()  # a mixed train/eval model comes back exactly as it was
    before = model_state(model)

    def boom(module, args, out):
        raise RuntimeError("boom")

    handle = model.blocks[1].register_forward_hook(boom)
    try:
        for name in sorted(CLASSES):
            with pytest.raises(RuntimeError, match="boom"):
                run_class(name, model, images(), TARGET)
    finally:
        handle.remove()
    assert model_state(model) == before


def test_nested_guards_walk_once_unless_the_model_went_back_to_train_mode(
    monkeypatch,
):
    """An attributor called through the registry (or inside a metric) is guarded
    twice; the inner guard reuses the outer one's walk, but a model put back in
    train mode inside the outer guard is put in eval mode again."""
    import captum_vit._guard as guard

    walks = []
    real_walk = guard._walk
    monkeypatch.setattr(
        guard, "_walk", lambda modules: walks.append(modules) or real_walk(modules)
    )
    model = dropout_model()
    before = model_state(model)
    with guard.eval_mode(model):
        assert not any(m.training for m in model.modules())
        with guard.eval_mode(model), guard.eval_mode(model.blocks[0]):
            assert not any(m.training for m in model.modules())
        assert len(walks) == 1
        model.train()  # e.g. a callback inside the call
        with guard.eval_mode(model):
            assert not any(m.training for m in model.modules())
        assert len(walks) == 2
        assert all(m.training for m in model.modules())  # the inner one restored
    assert model_state(model) == before
    assert guard._HELD.ids is None
    # the registry's guard and the class's: one walk per call
    walks.clear()
    build = METHODS["rollout"].build(model, extras_for(model))
    build(images(), torch.tensor(TARGET))
    assert len(walks) == 1


def test_all_finite_takes_one_reduction_and_never_misses():
    from captum_vit._utils import all_finite

    big = torch.full((4, 3), 3e38)  # finite, but its float32 sum overflows
    assert all_finite(big) and all_finite(torch.zeros(0)) and all_finite(torch.ones(3))
    assert all_finite(torch.arange(3)) and all_finite(big.double())
    for bad in (float("nan"), float("inf"), -float("inf")):
        for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
            x = torch.ones(2, 5, dtype=dtype)
            x[1, 3] = bad
            assert not all_finite(x), (bad, dtype)
    both = torch.tensor([float("inf"), -float("inf")])  # sum NaN
    assert not all_finite(both)


# -------------------------------------------------------- 3. ignored arguments checked
@pytest.mark.parametrize("name", list(METHODS))
def test_registry_checks_target(name):
    model = make_model("cls")
    build = METHODS[name].build(model, extras_for(model))
    with pytest.raises(ValueError, match="^target"):
        build(images(), torch.tensor([1, 99]))


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_class_checks_target(name):
    model = make_model("cls")
    for bad, error in ((99, ValueError), (-1, ValueError), ([1], ValueError)):
        with pytest.raises(error, match="^target"):
            run_class(name, model, images(), bad)
    with pytest.raises(TypeError, match="^target"):
        run_class(name, model, images(), 1.0)


# ------------------------------------------------------------------- 5. empty batches
def test_empty_batches_are_errors_everywhere():
    model = make_model("cls")
    empty = images()[:0]
    for name in METHODS:
        explain = METHODS[name].build(model, extras_for(model))
        with pytest.raises(ValueError, match="^inputs: .*empty batch"):
            explain(empty, torch.zeros(0, dtype=torch.long))
    for name in sorted(CLASSES):
        for target in (None, []):
            with pytest.raises(ValueError, match="^inputs: .*empty batch"):
                run_class(name, model, empty, target)
    # the other public entry points that take images
    vitcx, tis = ViTCX(model), TransformerInputSampling(model, n_masks=4)
    vs = ViTShapley(ShapleyExplainer.from_surrogate(model))
    calls = [
        lambda: vitcx.features(empty),
        lambda: vitcx.masks(empty),
        lambda: vitcx.scores(empty, [], []),
        lambda: tis.activations(empty),
        lambda: tis.masks(empty, seed=0),
        lambda: tis.scores(empty, [], []),
        lambda: vs.shapley_values(empty),
        lambda: vs.attribute_all_classes(empty),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="^inputs: .*empty batch"):
            call()


# ----------------------------------------------------------------- 7. compiled models
def test_genatt_on_a_model_compiled_in_place():
    model = make_model("cls")
    x = images()
    ref = GenAtt(model).attribute(x, target=TARGET)
    refs = {name: run_class(name, model, x, TARGET) for name in sorted(CLASSES)}
    # aot_eager reproduces the failure of the default backend without a C compiler
    model.compile(backend="aot_eager")
    compiled_call = model._compiled_call_impl
    before = model_state(model)
    assert torch.equal(GenAtt(model).attribute(x, target=TARGET), ref)
    assert torch.equal(
        AttentionRollout(model).attribute(x),
        AttentionRollout(make_model("cls")).attribute(x),
    )
    # every class: hooks (LRP, Grad-CAM, attention) still see every forward
    for name in sorted(CLASSES):
        assert torch.equal(run_class(name, model, x, TARGET), refs[name]), name
    assert model._compiled_call_impl is compiled_call  # still compiled afterwards
    assert model_state(model) == before


def test_every_method_accepts_torch_compile_wrapper():
    model = make_model("cls")
    compiled = torch.compile(model, backend="aot_eager")
    x, t = images(), torch.tensor(TARGET)
    assert ViTAdapter(compiled).model is model
    assert TokenMask(compiled).model is model
    extras = extras_for(model)
    for name in METHODS:
        ref = run_registry(name, model, extras, x, t)
        assert torch.equal(run_registry(name, compiled, extras, x, t), ref), name
    for name in sorted(CLASSES):
        assert torch.equal(
            run_class(name, compiled, x, TARGET), run_class(name, model, x, TARGET)
        ), name


# --------------------------------------------- 8. numbers and integer-like targets
def _numeric_params(fn: Callable) -> List[Tuple[str, bool]]:
    """(name, integer-only) of every parameter annotated with int and/or float."""
    fn = inspect.unwrap(fn)
    hints = typing.get_type_hints(fn)
    out = []
    for name in inspect.signature(fn).parameters:
        hint = hints.get(name)
        args = (
            typing.get_args(hint)
            if typing.get_origin(hint) is typing.Union
            else (hint,)
        )
        if int in args or float in args:
            out.append((name, float not in args))
    return out


def _bad_values(integer: bool, negative: Any = -1) -> List[Any]:
    bad = [float("nan"), float("inf"), -float("inf"), np.float64("nan")]
    return bad + ([negative, 1.5] if integer else [])


# block indices where negative values count from the end (Python indexing): the
# out-of-range negative value used instead of -1 (the tiny model has 2 blocks)
NEGATIVE_INDEX = {("RawAttention", "layer"): -3, ("ViTGradCAM", "block"): -3}
NEGATIVE_INDEX.update({("ViTReciproCAM", "layer"): -3, ("LeGrad", "layer_index"): -3})
NEGATIVE_INDEX[("TextRelevance", "start_layer")] = -2  # its text tower has 1 block


# the smallest valid construction of every public class, for the constructor check
CONSTRUCT: Dict[str, Callable[..., Any]] = {
    "AttentionRollout": lambda m, **kw: AttentionRollout(m, **kw),
    "GenAtt": lambda m, **kw: GenAtt(m, **kw),
    "ViTCX": lambda m, **kw: ViTCX(m, **kw),
    "TransformerInputSampling": lambda m, **kw: TransformerInputSampling(m, **kw),
    "PLUSWrapper": lambda m, **kw: PLUSWrapper(Saliency(m), **kw),
    "SkipPLUSWrapper": lambda m, **kw: SkipPLUSWrapper(Saliency(m), **kw),
    "ViTShapley": lambda m, **kw: ViTShapley(explainer_for(m), **kw),
    "TransformerAttribution": lambda m, **kw: TransformerAttribution(m, **kw),
    "RawAttention": lambda m, **kw: RawAttention(m, **kw),
    "RISE": lambda m, **kw: RISE(m, **kw),
    "ViTGradCAM": lambda m, **kw: ViTGradCAM(m, **kw),
    "TokenMask": lambda m, **kw: TokenMask(m, **kw),
    "ViTAdapter": lambda m, **kw: ViTAdapter(m, **kw),
    "AttentionFlow": lambda m, **kw: AttentionFlow(m, **kw),
    "GradSAM": lambda m, **kw: GradSAM(m, **kw),
    "PartialLRP": lambda m, **kw: PartialLRP(m, **kw),
    "TransitionAttentionMaps": lambda m, **kw: TransitionAttentionMaps(m, **kw),
    "BeyondIntuition": lambda m, **kw: BeyondIntuition(m, **kw),
    "AttnLRP": lambda m, **kw: AttnLRP(m, **kw),
    "ViTReciproCAM": lambda m, **kw: ViTReciproCAM(m, **kw),
    "LeGrad": lambda m, **kw: LeGrad(m, **kw),
    # the image-text wrappers take an image-text model, not the classifier
    "ZeroShotClassifier": lambda m, **kw: ZeroShotClassifier(
        open_clip_model(), token_ids=torch.randint(3, 50, (3, 8)), **kw
    ),
    "TextRelevance": lambda m, **kw: TextRelevance(open_clip_model(), **kw),
}


def test_every_numeric_argument_rejects_nan_inf_and_out_of_range():
    model = make_model("cls")
    classes = [n for n in captum_vit.__all__ if inspect.isclass(getattr(captum_vit, n))]
    assert set(classes) == set(CONSTRUCT)
    checked = []
    for name in classes:
        cls = getattr(captum_vit, name)
        for param, integer in _numeric_params(cls.__init__):
            negative = NEGATIVE_INDEX.get((name, param), -1)
            for bad in _bad_values(integer, negative):
                with pytest.raises((TypeError, ValueError), match=f"^{param}:"):
                    CONSTRUCT[name](model, **{param: bad})
                checked.append((name, param))
        if name not in CLASSES:
            continue
        method = CLASSES[name][0](model)
        for param, integer in _numeric_params(cls.attribute):
            for bad in _bad_values(integer):
                kw = {**CLASSES[name][1], "target": TARGET, param: bad}
                with pytest.raises((TypeError, ValueError), match=f"^{param}:"):
                    method.attribute(images(), **kw)
                checked.append((name, param))
    names = {f"{c}.{p}" for c, p in checked}
    # the checker really found the numeric arguments
    assert {
        "AttentionRollout.discard_ratio",
        "AttentionRollout.start_layer",
        "ViTCX.distance_threshold",
        "ViTCX.noise_std",
        "ViTCX.seed",
        "ViTCX.perturbations_per_eval",
        "TransformerInputSampling.n_masks",
        "TransformerInputSampling.tokens_ratio",
        "TransformerInputSampling.kmeans_iters",
        "TransformerInputSampling.seed",
        "ViTCX.baselines",
        "GenAtt.target",
        "ViTShapley.target",
        "PLUSWrapper.target",
        "TransformerAttribution.start_layer",
        "TransformerAttribution.target",
        "RawAttention.layer",
        "RawAttention.target",
        "RISE.n_masks",
        "RISE.grid_size",
        "RISE.p",
        "RISE.target",
        "RISE.seed",
        "RISE.perturbations_per_eval",
        "RISE.baselines",
        "ViTGradCAM.block",
        "ViTGradCAM.target",
        "AttnLRP.epsilon",
        "AttnLRP.lin_gamma",
        "AttnLRP.conv_gamma",
        "AttnLRP.target",
        "ViTReciproCAM.layer",
        "ViTReciproCAM.perturbations_per_eval",
        "ViTReciproCAM.target",
        "LeGrad.layer_index",
        "LeGrad.target",
    } <= names


@pytest.mark.parametrize(
    "make",
    [
        lambda m: AttentionRollout(m, discard_ratio=1.0),
        lambda m: AttentionRollout(m, discard_ratio=-0.1),
        lambda m: AttentionRollout(m, start_layer=2),  # the tiny model has 2 blocks
        lambda m: ViTCX(m, distance_threshold=-0.1),
        lambda m: ViTCX(m, distance_threshold=2.5),  # a cosine distance is <= 2
        lambda m: ViTCX(m, noise_std=-0.1),
        lambda m: TransformerInputSampling(m, tokens_ratio=0.0),
        lambda m: TransformerInputSampling(m, tokens_ratio=1.5),
        lambda m: TransformerInputSampling(m, n_masks=np.int64(0)),
        lambda m: ShapleyExplainer.from_surrogate(m, mlp_ratio=float("inf")),
        lambda m: ShapleyExplainer.from_surrogate(m, mlp_ratio=0.0),
        lambda m: ShapleyExplainer.from_surrogate(m, num_heads=2.5),
        lambda m: ShapleyExplainer.from_surrogate(m, num_heads=float("nan")),
        lambda m: TransformerAttribution(m, start_layer=2),
        lambda m: TransformerAttribution(m, start_layer=-1),
        lambda m: RawAttention(m, layer=2),
        lambda m: RawAttention(m, layer=-3),
        lambda m: ViTGradCAM(m, block=2),
        lambda m: ViTGradCAM(m, block=np.float64(-1.0)),
        lambda m: RISE(m, p=0.0),
        lambda m: RISE(m, p=1.5),
        lambda m: RISE(m, n_masks=np.int64(0)),
        lambda m: RISE(m, grid_size=0),
        lambda m: RISE(m, input_mean=[float("nan")] * 3, input_std=[0.5] * 3),
        lambda m: ViTCX(m, input_mean=[0.5] * 3, input_std=[float("inf")] * 3),
        lambda m: TransitionAttentionMaps(m, steps=0),
        lambda m: TransitionAttentionMaps(m, start_layer=2),
        lambda m: BeyondIntuition(m, steps=np.int64(0)),
        lambda m: BeyondIntuition(m, mode="token", start_layer=2),
        lambda m: BeyondIntuition(m, mode="both"),
    ],
)
def test_out_of_range_constructor_arguments(make):
    with pytest.raises((TypeError, ValueError)) as err:
        make(make_model("cls"))
    assert (
        str(err.value).split(":")[0]
        in (
            "discard_ratio start_layer distance_threshold noise_std tokens_ratio "
            "n_masks mlp_ratio num_heads layer block p grid_size input_mean "
            "input_std steps mode"
        ).split()
    )


def test_out_of_range_call_arguments():
    model = make_model("cls")
    x = images()
    vitcx, tis = ViTCX(model), TransformerInputSampling(model, n_masks=4)
    rise = RISE(model, n_masks=4)
    bad_calls = {
        "seed": [
            lambda: rise.attribute(x, seed=-1),
            lambda: rise.attribute(x, seed=2**64),
            lambda: rise.masks((32, 32), seed=float("nan")),
            lambda: vitcx.attribute(x, seed=-1),
            lambda: vitcx.attribute(x, seed=2**64),
            lambda: tis.attribute(x, seed=1.0),
            lambda: tis.masks(x, seed=-5),
            lambda: tis.masks_from_activations(torch.randn(16, 8), seed=-1),
            lambda: vitcx.scores(x, vitcx.masks(x), TARGET, seed=float("nan")),
        ],
        "perturbations_per_eval": [
            lambda: vitcx.scores(x, vitcx.masks(x), TARGET, perturbations_per_eval=0),
            lambda: tis.scores(x, tis.masks(x, seed=0), TARGET, 2.5),
            lambda: rise.attribute(x, seed=0, perturbations_per_eval=0),
        ],
        "image_size": [
            lambda: rise.masks((0, 32), seed=0),
            lambda: rise.grids((32, float("inf")), seed=0),
        ],
        "baselines": [
            lambda: PLUSWrapper(IntegratedGradients(model)).attribute(
                x, target=1, baselines=float("nan")
            ),
            lambda: PLUSWrapper(IntegratedGradients(model)).attribute(
                x, target=1, baselines=torch.full_like(x, float("inf"))
            ),
            lambda: rise.attribute(x, seed=0, baselines=float("nan")),
            lambda: rise.attribute(x, seed=0, baselines=-float("inf")),
            lambda: rise.attribute(x, seed=0, baselines=x[:1] * float("nan")),
            lambda: vitcx.attribute(x, seed=0, baselines=np.float32("inf")),
        ],
        "inputs": [lambda: GenAtt(model).attribute(x * float("nan"))],
    }
    for name, calls in bad_calls.items():
        for call in calls:
            with pytest.raises((TypeError, ValueError), match=f"^{name}:"):
                call()
    # integer-like numbers are accepted where an int is expected
    tis_np = TransformerInputSampling(
        model, n_masks=np.int64(4), kmeans_iters=np.int32(100)
    )
    assert torch.equal(
        tis_np.attribute(x, seed=np.int64(0), perturbations_per_eval=np.int16(64)),
        tis.attribute(x, seed=0),
    )
    rise_np = RISE(model, n_masks=np.int64(4), grid_size=np.int32(7), p=np.float32(0.5))
    assert torch.equal(
        rise_np.attribute(x, seed=np.uint8(3), perturbations_per_eval=np.int64(3)),
        rise.attribute(x, seed=3),
    )
    assert torch.equal(
        RawAttention(model, layer=np.int64(-1)).attribute(x),
        RawAttention(model).attribute(x),
    )
    assert torch.equal(
        ViTGradCAM(model, block=torch.tensor(1)).attribute(x, target=TARGET),
        ViTGradCAM(model).attribute(x, target=TARGET),
    )


INT_LIKE_TARGETS = [
    np.array([1, 3]),
    np.array([1, 3], dtype=np.uint8),
    [np.int64(1), np.int32(3)],
    [torch.tensor(1), np.array(3)],
    (1, 3),
    torch.tensor([1, 3], dtype=torch.int8),
    torch.tensor([1, 3], dtype=torch.uint8),
    torch.tensor([1, 3], dtype=torch.int16),
    torch.tensor([1, 3], dtype=torch.int32),
]
SCALAR_TARGETS = [
    np.int64(3),
    np.uint8(3),
    np.array(3),
    torch.tensor(3, dtype=torch.uint8),
]


def test_every_method_takes_integer_like_targets():
    model = make_model("cls")
    x = images()
    extras = extras_for(model)
    for name in METHODS:
        ref = run_registry(name, model, extras, x, torch.tensor(TARGET))
        for t in INT_LIKE_TARGETS:
            assert torch.equal(run_registry(name, model, extras, x, t), ref), (name, t)
    for name in sorted(CLASSES):
        ref = run_class(name, model, x, TARGET)
        for t in INT_LIKE_TARGETS:
            assert torch.equal(run_class(name, model, x, t), ref), (name, t)
        ref = run_class(name, model, x, 3)
        for t in SCALAR_TARGETS:
            assert torch.equal(run_class(name, model, x, t), ref), (name, t)
    for bad in (np.array([1.0, 3.0]), np.array([True, False]), [1, 3.0], "1"):
        with pytest.raises(TypeError, match="^target"):
            GenAtt(model).attribute(x, target=bad)


# ---------------------------------------------------- 9. uint8 images, inference_mode
def test_uint8_images_name_inputs_and_say_how_to_convert():
    model = make_model("cls")
    x = (images().clamp(-1, 1) * 127 + 128).to(torch.uint8)
    extras = extras_for(model)
    for name in METHODS:
        with pytest.raises(TypeError, match="^inputs: .*float.*normalise"):
            METHODS[name].build(model, extras)(x, torch.tensor(TARGET))
    for name in sorted(CLASSES):
        with pytest.raises(TypeError, match="^inputs: .*float.*normalise"):
            run_class(name, model, x, TARGET)


def test_inference_mode_runs_or_says_autograd_is_needed():
    model = make_model("cls")
    x, t = images(), torch.tensor(TARGET)
    extras = extras_for(model)
    message = "needs autograd .* inference_mode"
    for name, method in METHODS.items():
        ref = run_registry(name, model, extras, x, t)
        with torch.inference_mode():
            if method.needs_grad:
                with pytest.raises(RuntimeError, match=message):
                    run_registry(name, model, extras, x, t)
                continue
            out = run_registry(name, model, extras, x, t)
        assert torch.equal(out, ref), name
    assert {n for n, m in METHODS.items() if m.needs_grad} >= {
        "genatt",
        "transformer-attribution",
        "gradcam",
        "ig",
        "ixg",
        "skipplus-ig",
        "skipplus-ixg",
        "gradsam",
        "gradcam-attention",
        "attnlrp",
        "cp-lrp",
    }
    gradient = {
        "GenAtt": lambda m: GenAtt(m),
        "PLUS(IG)": lambda m: PLUSWrapper(IntegratedGradients(m)),
        "SkipPLUS(GenAtt)": lambda m: SkipPLUSWrapper(GenAtt(m)),
        "TransformerAttribution": lambda m: TransformerAttribution(m),
        "ViTGradCAM": lambda m: ViTGradCAM(m),
        "GradSAM": lambda m: GradSAM(m),
        "ViTGradCAM(attention)": lambda m: ViTGradCAM(m, on="attention"),
        "TAM": lambda m: TransitionAttentionMaps(m, steps=2),
        "BeyondIntuition": lambda m: BeyondIntuition(m, steps=2),
        "AttnLRP": lambda m: AttnLRP(m),
        "AttnLRP(cp-lrp)": lambda m: AttnLRP(m, variant="cp-lrp"),
        "LeGrad": lambda m: LeGrad(m),
    }
    for name, make in gradient.items():
        with torch.inference_mode(), pytest.raises(RuntimeError, match=message):
            make(model).attribute(x, target=TARGET)
        # no_grad around the call is fine: the method enables grad itself
        with torch.no_grad():
            out = make(model).attribute(x, target=TARGET)
        assert torch.equal(out, make(model).attribute(x, target=TARGET)), name
    perturbation = {
        "AttentionRollout": lambda m: AttentionRollout(m),
        "ViTCX": lambda m: ViTCX(m),
        "TIS": lambda m: TransformerInputSampling(m, n_masks=8),
        "PLUS(FeatureAblation)": lambda m: PLUSWrapper(FeatureAblation(m)),
        "SkipPLUS(rollout)": lambda m: SkipPLUSWrapper(AttentionRollout(m)),
        "ViTShapley": lambda m: ViTShapley(extras["shapley_explainer"]),
        "RawAttention": lambda m: RawAttention(m),
        "RISE": lambda m: RISE(m, n_masks=8),
        "AttentionFlow": lambda m: AttentionFlow(m),
        "PartialLRP": lambda m: PartialLRP(m),
        "ViTReciproCAM": lambda m: ViTReciproCAM(m),
    }
    for name, make in perturbation.items():
        kw = {"seed": 0} if name in ("ViTCX", "TIS", "RISE") else {}
        ref = make(model).attribute(x, target=TARGET, **kw)
        with torch.inference_mode():
            out = make(model).attribute(x, target=TARGET, **kw)
        assert torch.equal(out, ref), name


# --------------------------------------------------------------- 6. dtype and device
def test_explainer_follows_the_surrogates_dtype_and_device():
    model = make_model("cls").double()
    explainer = ShapleyExplainer.from_surrogate(model)
    dtypes = {p.dtype for p in explainer.parameters()}
    dtypes |= {b.dtype for b in explainer.buffers() if b.is_floating_point()}
    assert dtypes == {torch.float64}
    x = images().double()
    assert explainer(x).dtype == torch.float64
    vs = ViTShapley(explainer)
    attr = vs.attribute(x, target=TARGET)
    phi = vs.shapley_values(x)
    v1 = torch.softmax(model(x).float(), -1).double()
    v0 = vs.game.empty_value(x).double()
    torch.testing.assert_close(phi.sum(1).double(), v1 - v0, atol=1e-6, rtol=0)
    assert attr.dtype == torch.float64
    # device: a model on the meta device gives an explainer entirely on it
    meta = ShapleyExplainer.from_surrogate(make_model("cls").to("meta"))
    assert {p.device.type for p in meta.parameters()} == {"meta"}


# -------------------------------------------------------------------- 11. progress
def test_progress_bars_cover_clustering_and_kmeans(capsys):
    model = make_model("cls")
    x = images()
    ViTCX(model).attribute(x, seed=0)
    TransformerInputSampling(model, n_masks=4).attribute(x, seed=0)
    assert capsys.readouterr().err == ""  # silent by default, as Captum
    ViTCX(model).attribute(x, seed=0, show_progress=True)
    err = capsys.readouterr().err
    assert "ViT-CX clustering" in err and "2/2" in err
    TransformerInputSampling(model, n_masks=4).attribute(x, seed=0, show_progress=True)
    err = capsys.readouterr().err
    assert "TIS k-means" in err and "2/2" in err
    RISE(model, n_masks=4).attribute(x, seed=0, perturbations_per_eval=2)
    assert capsys.readouterr().err == ""
    RISE(model, n_masks=4).attribute(
        x, seed=0, perturbations_per_eval=2, show_progress=True
    )
    err = capsys.readouterr().err
    assert "RISE" in err and "8/8" in err  # 4 masks x 2 images


def test_show_progress_defaults_to_false_everywhere():
    found = []
    for name in sorted(CLASSES):
        cls = getattr(captum_vit, name)
        for attr in dir(cls):
            fn = getattr(cls, attr)
            if attr.startswith("_") or not callable(fn):
                continue
            try:
                params = inspect.signature(fn).parameters
            except (TypeError, ValueError):
                continue
            if "show_progress" in params:
                assert params["show_progress"].default is False, (name, attr)
                found.append((name, attr))
    assert {
        ("ViTCX", "masks"),
        ("TransformerInputSampling", "masks"),
        ("RISE", "attribute"),
    } <= set(found)
