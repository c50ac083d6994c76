"""Named explanation methods with uniform construction, for the command line and the
evaluation tables.

Each entry builds, for a model, a function ``explain(inputs, target, seeds=None) ->
attributions`` with Captum's shapes. ``seeds`` (one int per image) seeds the random
choices of methods that make them per image, so an image's map never depends on the
batch or the process it was computed in; seeded methods that are already per-image
reproducible (TIS, ViT-CX, RISE: the same seed for every image) ignore it.

Every method knob lives in one place, :class:`MethodOptions`, with the papers'
defaults (TIS 1024 masks, RISE 4000, Integrated Gradients 20 steps, ...); the command
line's flags, :mod:`captum_vit.explain`, :mod:`captum_vit.evaluate` and the benchmarks
read their defaults from it. Trained parts are apart from the knobs, in
:class:`TrainedParts` (ViT Shapley's explainer and surrogate): methods that need them
(``needs_trained``) raise :class:`MethodUnavailable` when they are not there.
:func:`build_all` builds a list of methods and says which ones the model cannot serve.

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
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch import Tensor

from ._utils import check_count, check_number
from .vit.adapter import MissingCapability

#: ``explain(inputs, target, seeds=None) -> attributions``.
Explain = Callable[..., Tensor]


class MethodUnavailable(RuntimeError):
    """The method cannot run for this model (e.g. no trained explainer)."""


@dataclass(frozen=True)
class MethodOptions:
    """Every knob of the registered methods, with its default (the papers').

    Attributes:
        tis_masks: TIS ``n_masks`` (Englebert et al. 2023: 1024).
        rise_masks: RISE ``n_masks`` (Petsiuk et al. 2018: 4000).
        n_steps: Integrated Gradients steps (IG and SkipPLUS(IG)).
        vitcx_fill: ViT-CX's fill of the masked pixels (``baselines``; the
            measured default, see :class:`captum_vit.attr.ViTCX`).
        rise_fill: RISE's fill of the masked pixels (``baselines``).
        input_mean: The model's input normalisation, for the ``"black"`` fills of
            ViT-CX and RISE (None: their own default).
        input_std: See ``input_mean``.
        seed: Seed of the random baseline's stream when it is called without
            per-image seeds.
        show_progress: tqdm bars inside the methods that have them (False unless
            the caller asks, as in Captum).
        attnlrp_lin_gamma: AttnLRP / CP-LRP ``lin_gamma`` (0: the epsilon rule; the
            paper tunes γ per ViT, see :class:`captum_vit.attr.AttnLRP`).
        attnlrp_conv_gamma: AttnLRP / CP-LRP ``conv_gamma`` (0: epsilon rule).

    Raises:
        ValueError: a count below 1 (naming the option).
    """

    tis_masks: int = 1024
    rise_masks: int = 4000
    n_steps: int = 20
    vitcx_fill: str = "mean"
    rise_fill: str = "zero"
    input_mean: Optional[Sequence[float]] = None
    input_std: Optional[Sequence[float]] = None
    seed: int = 0
    show_progress: bool = False
    attnlrp_lin_gamma: float = 0.0
    attnlrp_conv_gamma: float = 0.0

    def __post_init__(self) -> None:
        for name in ("tis_masks", "rise_masks", "n_steps"):
            check_count(name, getattr(self, name))
        for name in ("attnlrp_lin_gamma", "attnlrp_conv_gamma"):
            check_number(name, getattr(self, name), 0.0)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "MethodOptions":
        """The knobs of a string-keyed mapping (the builders' former ``extras``
        dict); trained parts (:data:`TRAINED_KEYS`) are left for
        :meth:`TrainedParts.from_mapping`.

        Raises:
            TypeError: keys that are neither knobs nor trained parts.
        """
        knobs = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(knobs) - set(TRAINED_KEYS))
        if unknown:
            raise TypeError(
                f"unknown method option(s) {unknown}; known: {', '.join(knobs)} "
                f"(trained parts: {', '.join(TRAINED_KEYS)})"
            )
        return cls(**{k: v for k, v in values.items() if k in knobs})


#: The paper defaults, in one place (``DEFAULT_OPTIONS.tis_masks`` is 1024, ...).
DEFAULT_OPTIONS = MethodOptions()

#: Names of the trained parts in a loaded model's ``extras``.
TRAINED_KEYS = ("shapley_explainer", "shapley_surrogate")


@dataclass(frozen=True)
class TrainedParts:
    """Trained models some methods need, apart from the knobs.

    Attributes:
        shapley_explainer: ViT Shapley's amortised explainer for the model.
        shapley_surrogate: The classifier fine-tuned to missing patches (ViT
            Shapley's surrogate; also an evaluator of the removal metrics).
    """

    shapley_explainer: Optional[nn.Module] = None
    shapley_surrogate: Optional[nn.Module] = None

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "TrainedParts":
        """The trained parts of a string-keyed mapping (a
        :class:`captum_vit.models.LoadedModel`'s ``extras``); other keys are
        ignored."""
        return cls(**{k: values[k] for k in TRAINED_KEYS if k in values})


@dataclass(frozen=True)
class Method:
    """A named method: how to build it and how to read its maps."""

    name: str
    #: ``build(model, options)`` (and ``trained`` for ``needs_trained``
    #: methods) -> ``explain``. The registered methods' ``build`` also accepts
    #: ``build(model)`` (the defaults) and, as before, one string-keyed mapping
    #: of knobs and trained parts, ``build(model, loaded.extras)``.
    build: Callable[..., Explain]
    signed: bool
    description: str
    options: Dict[str, Any] = field(default_factory=dict)
    #: Differentiates the model (cannot run inside ``torch.inference_mode()``).
    needs_grad: bool = False
    #: Whether the method evaluates the model on perturbed inputs (its forward
    #: passes run under ``--amp`` autocast).
    perturbation: bool = False
    #: Reads trained parts (:class:`TrainedParts`): ``build(model, options,
    #: trained)``.
    needs_trained: bool = False

    def explainer(
        self,
        model: nn.Module,
        options: MethodOptions = DEFAULT_OPTIONS,
        trained: Optional[TrainedParts] = None,
    ) -> Explain:
        """``explain`` for ``model`` with the knobs ``options``; ``trained`` goes
        only to methods that read trained parts.

        Raises:
            MethodUnavailable: the method needs trained parts that are not there.
        """
        if self.needs_trained:
            return self.build(model, options, trained or TrainedParts())
        return self.build(model, options)


def build_all(
    methods: Sequence[Method],
    model: nn.Module,
    options: MethodOptions = DEFAULT_OPTIONS,
    trained: Optional[TrainedParts] = None,
) -> Tuple[Dict[str, Explain], Dict[str, str]]:
    """Build every method for ``model`` (the one build-and-skip path of explain,
    evaluate and the command line).

    Args:
        methods: The methods, in order.
        model: The classifier.
        options: The knobs.
        trained: The model's trained parts (ViT Shapley's pair), if any.

    Returns:
        ``(built, unavailable)``: ``{name: explain}``, and ``{name: reason}`` (one
        line) of the methods the model cannot serve (:class:`MethodUnavailable`,
        or a capability it lacks: ``MissingCapability``).
    """
    built: Dict[str, Explain] = {}
    unavailable: Dict[str, str] = {}
    for method in methods:
        try:
            built[method.name] = method.explainer(model, options, trained)
        except (MethodUnavailable, MissingCapability) as exc:
            unavailable[method.name] = " ".join(str(exc).split())
    return built, unavailable


def _rollout(model: nn.Module, options: MethodOptions) -> Explain:
    from .attr import AttentionRollout

    m = AttentionRollout(model)
    return lambda x, t, seeds=None: m.attribute(x, target=t)  # target validated only


def _genatt(model: nn.Module, options: MethodOptions) -> Explain:
    from .attr import GenAtt

    m = GenAtt(model)
    return lambda x, t, seeds=None: m.attribute(x, target=t)


def _tam(model: nn.Module, options: MethodOptions) -> Explain:
    from .attr import TransitionAttentionMaps

    m = TransitionAttentionMaps(model, steps=options.n_steps)
    return lambda x, t, seeds=None: m.attribute(x, target=t)


def _beyond_intuition(mode: str) -> Callable[[nn.Module, MethodOptions], Explain]:
    def build(model: nn.Module, options: MethodOptions) -> Explain:
        from .attr import BeyondIntuition

        m = BeyondIntuition(model, mode=mode, steps=options.n_steps)
        return lambda x, t, seeds=None: m.attribute(x, target=t)

    return build


def _normalization(options: MethodOptions) -> Dict[str, Any]:
    """The model's input normalisation from ``options`` (for the "black" fill)."""
    return dict(input_mean=options.input_mean, input_std=options.input_std)


def _vitcx(model: nn.Module, options: MethodOptions) -> Explain:
    from .attr import ViTCX

    m = ViTCX(model, **_normalization(options))
    fill = options.vitcx_fill
    sp = options.show_progress
    return lambda x, t, seeds=None: m.attribute(
        x, target=t, seed=0, baselines=fill, show_progress=sp
    )


def _tis(model: nn.Module, options: MethodOptions) -> Explain:
    from .attr import TransformerInputSampling

    m = TransformerInputSampling(model, n_masks=options.tis_masks)
    sp = options.show_progress
    return lambda x, t, seeds=None: m.attribute(x, target=t, seed=0, show_progress=sp)


def _transformer_attribution(model: nn.Module, options: MethodOptions) -> Explain:
    from .attr import TransformerAttribution

    m = TransformerAttribution(model)
    return lambda x, t, seeds=None: m.attribute(x, target=t)


def _raw_attention(model: nn.Module, options: MethodOptions) -> Explain:
    from .attr import RawAttention

    m = RawAttention(model)
    return lambda x, t, seeds=None: m.attribute(x, target=t)  # target validated only


def _rise(model: nn.Module, options: MethodOptions) -> Explain:
    from .attr import RISE

    m = RISE(model, n_masks=options.rise_masks, **_normalization(options))
    fill = options.rise_fill
    sp = options.show_progress
    return lambda x, t, seeds=None: m.attribute(
        x, target=t, seed=0, baselines=fill, show_progress=sp
    )


def _gradcam(model: nn.Module, options: MethodOptions) -> Explain:
    from .attr import ViTGradCAM

    m = ViTGradCAM(model)
    return lambda x, t, seeds=None: m.attribute(x, target=t)


def _gradsam(model: nn.Module, options: MethodOptions) -> Explain:
    from .attr import GradSAM

    m = GradSAM(model)
    return lambda x, t, seeds=None: m.attribute(x, target=t)


def _partial_lrp(model: nn.Module, options: MethodOptions) -> Explain:
    from .attr import PartialLRP

    m = PartialLRP(model)
    return lambda x, t, seeds=None: m.attribute(x, target=t)


def _gradcam_attention(model: nn.Module, options: MethodOptions) -> Explain:
    from .attr import ViTGradCAM

    m = ViTGradCAM(model, on="attention")
    return lambda x, t, seeds=None: m.attribute(x, target=t)


def _ig(model: nn.Module, options: MethodOptions) -> Explain:
    from captum.attr import IntegratedGradients

    m = IntegratedGradients(model)
    steps = options.n_steps
    return lambda x, t, seeds=None: m.attribute(
        x, target=t, n_steps=steps, internal_batch_size=64
    )


def _ixg(model: nn.Module, options: MethodOptions) -> Explain:
    from captum.attr import InputXGradient

    m = InputXGradient(model)
    # inputs that already require grad spare Captum's "set automatically" warning
    return lambda x, t, seeds=None: m.attribute(
        x.detach().requires_grad_(True), target=t
    )


def _skipplus_ig(model: nn.Module, options: MethodOptions) -> Explain:
    from captum.attr import IntegratedGradients

    from .attr import SkipPLUSWrapper

    m = SkipPLUSWrapper(IntegratedGradients(model))
    steps = options.n_steps
    return lambda x, t, seeds=None: m.attribute(
        x, target=t, n_steps=steps, internal_batch_size=64
    )


def _skipplus_ixg(model: nn.Module, options: MethodOptions) -> Explain:
    from captum.attr import InputXGradient

    from .attr import SkipPLUSWrapper

    m = SkipPLUSWrapper(InputXGradient(model))
    return lambda x, t, seeds=None: m.attribute(x, target=t)


def _leave_one_out(model: nn.Module, options: MethodOptions) -> Explain:
    """Captum FeatureAblation with one feature per patch (leave-one-out)."""
    from captum.attr import FeatureAblation

    from .vit import ViTAdapter

    adapter = ViTAdapter(model)
    m = FeatureAblation(model)
    sp = options.show_progress

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


def _vit_shapley(
    model: nn.Module, options: MethodOptions, trained: TrainedParts
) -> Explain:
    explainer = trained.shapley_explainer
    if explainer is None:
        raise MethodUnavailable(
            "vit-shapley needs a ViT Shapley explainer trained for this model; one is "
            "shipped only for the embedded default model with its shipped weights "
            "(train one with `captum-vit train-shapley --out RUN`, then pass "
            "--shapley RUN)"
        )
    from .attr import ViTShapley

    m = ViTShapley(explainer, trained.shapley_surrogate)
    return lambda x, t, seeds=None: m.attribute(x, target=t)


def _reciprocam(model: nn.Module, options: MethodOptions) -> Explain:
    from .attr import ViTReciproCAM

    m = ViTReciproCAM(model)
    sp = options.show_progress
    return lambda x, t, seeds=None: m.attribute(x, target=t, show_progress=sp)


def _legrad(model: nn.Module, options: MethodOptions) -> Explain:
    from .attr import LeGrad

    m = LeGrad(model)
    return lambda x, t, seeds=None: m.attribute(x, target=t)


def _random(model: nn.Module, options: MethodOptions) -> Explain:
    """Random patch scores: the floor any method should beat.

    With ``seeds`` every image draws its scores from its own seed (the same map for
    the same image in any batch or process); without, successive calls continue one
    stream seeded with ``options.seed``.
    """
    from .vit import ViTAdapter, tokens_to_pixels

    adapter = ViTAdapter(model)
    gen = torch.Generator().manual_seed(int(options.seed))

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


def _attnlrp(variant: str) -> Callable[[nn.Module, MethodOptions], Explain]:
    def build(model: nn.Module, options: MethodOptions) -> Explain:
        from .attr import AttnLRP

        m = AttnLRP(
            model,
            variant=variant,
            lin_gamma=options.attnlrp_lin_gamma,
            conv_gamma=options.attnlrp_conv_gamma,
        )
        return lambda x, t, seeds=None: m.attribute(x, target=t)

    return build


def _guarded(method: Method) -> Method:
    """``method`` whose built functions validate their arguments and run the model in
    eval mode and eagerly for the call (see the module docstring)."""
    from ._guard import model_call, require_autograd
    from ._utils import format_target, unpack_inputs
    from .vit import ViTAdapter

    def guarded_build(
        model: nn.Module,
        options: Union[MethodOptions, Mapping[str, Any], None] = None,
        trained: Optional[TrainedParts] = None,
    ) -> Explain:
        if isinstance(options, Mapping):  # knobs and trained parts in one mapping
            if trained is None:
                trained = TrainedParts.from_mapping(options)
            options = MethodOptions.from_mapping(options)
        explain = method.explainer(
            model, DEFAULT_OPTIONS if options is None else options, trained
        )
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


def _attention_flow(model: nn.Module, options: MethodOptions) -> Explain:
    from .attr import AttentionFlow

    m = AttentionFlow(model)
    return lambda x, t, seeds=None: m.attribute(x, target=t)  # target validated only


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
        Method(
            "vit-shapley",
            _vit_shapley,
            True,
            "ViT Shapley (Covert et al. 2023)",
            needs_trained=True,
        ),
        Method(
            "ig",
            _ig,
            True,
            f"Integrated Gradients, {DEFAULT_OPTIONS.n_steps} steps",
            needs_grad=True,
        ),
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
        Method(
            "attention-flow",
            _attention_flow,
            False,
            "Attention flow (Abnar & Zuidema 2020)",
        ),
        Method(
            "gradsam",
            _gradsam,
            False,
            "Grad-SAM (Barkan et al. 2021)",
            needs_grad=True,
        ),
        Method(
            "partial-lrp",
            _partial_lrp,
            False,
            "Partial LRP, last block's attention (Voita et al. 2019)",
        ),
        Method(
            "gradcam-attention",
            _gradcam_attention,
            False,
            "Grad-CAM on the last block's attention (Chefer et al. 2021)",
            needs_grad=True,
        ),
        Method(
            "tam",
            _tam,
            False,
            "Transition Attention Maps (Yuan et al. 2021), n_steps points",
            needs_grad=True,
        ),
        Method(
            "beyond-intuition-head",
            _beyond_intuition("head"),
            False,
            "Beyond Intuition, head-wise (Chen et al. 2023), n_steps points",
            needs_grad=True,
        ),
        Method(
            "beyond-intuition-token",
            _beyond_intuition("token"),
            False,
            "Beyond Intuition, token-wise (Chen et al. 2023), n_steps points",
            needs_grad=True,
        ),
        Method(
            "attnlrp",
            _attnlrp("attnlrp"),
            True,
            "AttnLRP (Achtibat et al. 2024)",
            needs_grad=True,
        ),
        Method(
            "cp-lrp",
            _attnlrp("cp-lrp"),
            True,
            "CP-LRP (Ali et al. 2022)",
            needs_grad=True,
        ),
        Method(
            "vit-reciprocam",
            _reciprocam,
            False,  # a logit level per patch (no zero point), shown min-max
            "ViT-ReciproCAM (Byun & Lee 2023)",
            perturbation=True,
        ),
        Method(
            "legrad", _legrad, False, "LeGrad (Bousselham et al. 2025)", needs_grad=True
        ),
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
