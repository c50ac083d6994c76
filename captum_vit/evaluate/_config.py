"""The evaluation's settings and metric catalogue: the table's columns and what each
measures (:data:`METRICS`, :data:`COLUMN_DEFINITIONS`), the protocol presets
(:data:`PROTOCOLS`) and their cost, :class:`EvalConfig`, and the check of a protocol
against a model and its data (:func:`check_protocol`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import torch

from .._utils import check_count
from ..methods import DEFAULT_OPTIONS, MethodOptions, TrainedParts

if TYPE_CHECKING:
    from ..data import ItemDataset

#: Columns of the table: (key, header, better).
METRICS: List[Tuple[str, str, str]] = [
    ("insertion", "Insertion AUC", "higher"),
    ("deletion", "Deletion AUC", "lower"),
    ("ins_minus_del", "Insertion − Deletion", "higher"),
    ("aopc", "AOPC", "higher"),
    ("aopc_acc_positive", "AOPC acc. (positive)", "higher"),
    ("aopc_acc_negative", "AOPC acc. (negative)", "lower"),
    ("faithfulness", "Faithfulness corr.", "higher"),
    ("sensitivity_n", "Sensitivity-n", "higher"),
    ("insertion_nontarget", "Insertion (non-target)", "higher"),
    ("deletion_nontarget", "Deletion (non-target)", "lower"),
    ("road_morf", "ROAD MoRF", "lower"),
    ("road_lerf", "ROAD LeRF", "higher"),
    ("pointing", "Pointing (main)", "higher"),
    ("pointing_distractor", "Pointing (distractor)", "higher"),
    ("randomization_spearman", "Randomisation Spearman", "lower"),
    ("randomization_ssim", "Randomisation SSIM", "lower"),
    ("infidelity", "Infidelity", "lower"),
    ("energy_pointing", "Energy pointing", "higher"),
    ("segmentation_f1", "Segmentation F1", "higher"),
    ("grid_pointing", "Grid pointing", "higher"),
    ("seconds", "s / image", "lower"),
]

#: What each column measures (written under the table; ``{...}`` are the run's
#: settings).
COLUMN_DEFINITIONS: Dict[str, str] = {
    "n": "images scored (unreadable images are skipped and listed in the records)",
    "insertion": (
        "area under the explained class's softmax probability as patches are put "
        "back into an emptied image, most attributed first (higher: the top patches "
        "carry the evidence)"
    ),
    "deletion": (
        "area under the probability as patches are removed, most attributed first "
        "(lower: removing the top patches destroys the prediction soonest)"
    ),
    "ins_minus_del": (
        "insertion AUC minus deletion AUC of the same image (Englebert et al. 2023, "
        "TIS; about 0 for a map that ranks patches at random)"
    ),
    "aopc": (
        "average drop of the probability below its value on the full image along "
        "the deletion curve (higher is better)"
    ),
    "aopc_acc_positive": (
        "accuracy-based AOPC of positive perturbation (SkipPLUS, Mehri et al. 2024; "
        "Chefer et al. 2021): top-1 correctness on the full image minus its mean "
        "while the most attributed patches are removed, at {acc_fractions} of the "
        "patches; correctness is against {acc_target} (higher: removing the top "
        "patches flips the prediction)"
    ),
    "aopc_acc_negative": (
        "the same with the least attributed patches removed first (negative "
        "perturbation; lower: the prediction survives removing what the map calls "
        "unimportant)"
    ),
    "faithfulness": (
        "Pearson correlation, over {faith_samples} random patch subsets (sizes "
        "uniform in 0..F), between the subset's summed attribution and the "
        "probability drop when it is removed (Bhatt et al. 2020; ViT Shapley's "
        "Faith.)"
    ),
    "sensitivity_n": (
        "the same correlation for subsets of exactly n patches (Ancona et al. "
        "2018), {sensitivity_samples} subsets per n, averaged over the sweep n = "
        "{sensitivity_sizes} patches; the curve over n is in `sensitivity_n.npz` "
        "and `sensitivity_n.png`"
    ),
    "insertion_nontarget": (
        "insertion AUC when a class other than the explained one is explained and "
        "its probability is read (ViT Shapley, Covert et al. 2023, Table 2): "
        "{non_target}; higher: the map finds evidence for that class too"
    ),
    "deletion_nontarget": (
        "deletion AUC of the same non-target explanation (lower is better)"
    ),
    "road_morf": (
        "ROAD (Rong et al. 2022): mean probability of the explained class while "
        "10 %, 20 %, ..., 90 % of the {road_units} are removed, most attributed "
        "first, their pixels filled by noisy linear imputation (noise 0.01) and "
        "scored by the classifier (lower is better)"
    ),
    "road_lerf": (
        "the same with the least attributed {road_units} removed first (higher is "
        "better)"
    ),
    "pointing": (
        "share of images where the map points inside the ground truth of the "
        "explained object: {pointing_rule}; images without boxes or masks are left "
        "out"
    ),
    "pointing_distractor": (
        "the same when explaining the distractor's class, scored against the "
        "distractor's box: high only for class-specific maps"
    ),
    "randomization_spearman": (
        "model-parameter randomisation sanity check (Adebayo et al. 2018; ViT-CX "
        "App. B): the classifier's parameter groups are randomised cumulatively "
        "from the head down ({rand_layers}), the image re-explained after each "
        "step for the same class, and the Spearman rank correlation of the "
        "absolute maps with the original one is averaged over the steps (lower: "
        "the map depends on what the model learned). Run on {rand_images}; methods "
        "that do not read the classifier's weights (random; ViT Shapley's "
        "amortised explainer) stay at 1 by construction; the curve per step is in "
        "`randomization.npz`"
    ),
    "randomization_ssim": (
        "the same with the structural similarity (SSIM) of the min-max normalised "
        "maps"
    ),
    "infidelity": (
        "infidelity (Yeh et al. 2019), computed by Captum's `infidelity`: the mean "
        "squared error between the map's prediction of an output change (its sum "
        "over the perturbed patches times the perturbation) and the change of the "
        "explained class's probability, over {infidelity_rule}; the map is first "
        "rescaled by the factor that minimises the error (Captum's normalize), so "
        "maps on any scale compare (lower is better)"
    ),
    "energy_pointing": (
        "energy-based pointing game (Wang et al. 2020, Score-CAM; used by TAM): the "
        "share of the map's positive part that lies inside the explained object's "
        "ground truth (higher is better); images without boxes or masks are left "
        "out"
    ),
    "segmentation_f1": (
        "F1 of the map as a foreground segmentation, min-max normalised and "
        "binarised at its mean, against the explained object's ground truth (its "
        "mean over images is the mF1 of Chen et al. 2023, whose script binarises "
        "the same way; higher is better); images without boxes or masks are left "
        "out"
    ),
    "grid_pointing": (
        "grid pointing game (Böhle et al. 2021; Rao et al. 2022): each image is "
        "put in one cell of {grid_rule}, the grid is explained for the image's "
        "label, and the column is the fraction of the map's positive part inside "
        "the image's cell (1: all evidence on the explained image; about {grid_chance} "
        "for a map that ignores the class)"
    ),
    "seconds": (
        "wall-clock seconds per image of the explanation alone (not the metrics), "
        "on this run's machine and device; timed per chunk, so its interval is over "
        "chunks"
    ),
}

#: Values of the protocol options (see :class:`EvalConfig`).
EVALUATORS = ("classifier", "surrogate")
POINTING_RULES = ("first", "random", "any")
NON_TARGETS = ("auto", "distractor", "random", "all", "off")
ROAD_UNITS = ("patches", "pixels", "off")
#: Perturbations of the infidelity column (``"off"``: no column).
INFIDELITY = ("square", "noise", "off")
#: Removed fractions of ROAD's curves (Rong et al.: 10 %, ..., 90 %).
ROAD_FRACTIONS = tuple(i / 10 for i in range(1, 10))

#: The protocol presets (``captum-vit evaluate --protocol``, also
#: ``benchmarks/quality.py --protocol``): values of :class:`EvalConfig` fields.
#: ``curve_steps="patches"`` is one patch per step (the model's number of patches);
#: ``evaluator="auto"`` is the ViT Shapley surrogate with token removal and the
#: classifier with pixel removals (as TIS does). Explicit options override them.
#:
#: - ``quick`` (the default, and :class:`EvalConfig`'s defaults): few random subsets
#:   and curve points, no ROAD; about 100 perturbed forward passes per image and
#:   method, seconds for a ViT-S/16 image and method on a CPU.
#: - ``standard``: the defaults before 0.1.0's presets (RESULTS.md §1's tables):
#:   about 470 passes and 18 ROAD solves per image and method.
#: - ``paper-cpu``: the papers' protocol with fewer random subsets (faithfulness
#:   200, sensitivity-n 13 × 100) and one non-target class.
#: - ``paper``: the papers' settings (ViT Shapley App. G and Table 2, Zhang et al.
#:   2018, Rong et al. 2022 on patches, Adebayo et al. 2018 on 20 images), meant
#:   for a GPU.
#:
#: Every preset has the infidelity column with square removal, 16, 64, 100 and 1000
#: perturbations per image; the grid pointing game is opt-in (``grid_pointing``).
PROTOCOLS: Dict[str, Dict[str, Any]] = {
    "quick": dict(
        evaluator="classifier",
        curve_steps=8,
        faith_samples=16,
        sensitivity_sizes=3,
        sensitivity_samples=8,
        non_target="auto",
        pointing="first",
        road="off",
        randomization=0,
        metric_batch=64,
        infidelity="square",
        infidelity_samples=8,
    ),
    "standard": dict(
        evaluator="classifier",
        curve_steps=16,
        faith_samples=64,
        sensitivity_sizes=9,
        sensitivity_samples=32,
        non_target="auto",
        pointing="first",
        road="patches",
        randomization=0,
        metric_batch=64,
        infidelity="square",
        infidelity_samples=64,
    ),
    "paper-cpu": dict(
        evaluator="auto",
        curve_steps="patches",
        faith_samples=200,
        sensitivity_sizes=13,
        sensitivity_samples=100,
        non_target="auto",
        pointing="first",
        road="patches",
        randomization=20,
        metric_batch=64,
        infidelity="square",
        infidelity_samples=100,
    ),
    "paper": dict(
        evaluator="auto",
        curve_steps="patches",
        faith_samples=1000,
        sensitivity_sizes=13,
        sensitivity_samples=1000,
        non_target="all",
        pointing="first",
        road="patches",
        randomization=20,
        metric_batch=1024,
        infidelity="square",
        infidelity_samples=1000,
    ),
}


def protocol_settings(
    name: str, patches: int, removal: str = "tokens", images: Optional[int] = None
) -> Dict[str, Any]:
    """The :class:`EvalConfig` values of the preset ``name`` for a model with
    ``patches`` patches, the removal ``removal`` and (if given) ``images`` images
    (the randomisation check is capped at the number of images).

    Raises:
        ValueError: an unknown preset (naming ``--protocol``).
    """
    if name not in PROTOCOLS:
        raise ValueError(
            f"--protocol: expected one of {', '.join(PROTOCOLS)}, got {name!r}"
        )
    out = dict(PROTOCOLS[name])
    if out["curve_steps"] == "patches":
        out["curve_steps"] = int(patches)
    if out["evaluator"] == "auto":
        out["evaluator"] = "surrogate" if removal == "tokens" else "classifier"
    if images is not None:
        out["randomization"] = min(out["randomization"], int(images))
    return out


#: Settings added after records were first written, with the value that stands for
#: their absence: a run with that value stores no such key, so folders of earlier
#: versions resume (with ``--infidelity off``; the gallery's size is the default).
ADDED_SETTINGS: Dict[str, Any] = {
    "infidelity": "off",
    "grid_pointing": 0,
    "gallery": 8,
}


def stored_settings(cfg: "EvalConfig") -> Dict[str, Any]:
    """``cfg`` as the records store it: :data:`ADDED_SETTINGS` left out where they
    have their absent value (and the infidelity's sample count with it)."""
    out = asdict(cfg)
    for key, absent in ADDED_SETTINGS.items():
        if out[key] == absent:
            del out[key]
    if "infidelity" not in out:
        del out["infidelity_samples"]
    return out


def protocol_of(cfg: "EvalConfig", patches: int) -> Optional[str]:
    """The preset whose values ``cfg`` has (the first, in :data:`PROTOCOLS`
    order), or None for settings of no preset. A preset with its infidelity column
    switched off (``--infidelity off``) still counts as that preset."""
    for name in PROTOCOLS:
        values = protocol_settings(name, patches, cfg.removal, cfg.n)
        if cfg.infidelity == "off":
            values = {
                k: v
                for k, v in values.items()
                if k not in ("infidelity", "infidelity_samples")
            }
        if all(getattr(cfg, k) == v for k, v in values.items()):
            return name
    return None


def forward_passes(
    cfg: "EvalConfig", num_classes: int, distractor: bool
) -> Dict[str, int]:
    """Perturbed forward passes per image and method of each metric (the cost of
    a run beyond the explanations), and the extra explanations per image.

    Args:
        cfg: The run's settings.
        num_classes: The model's classes (``non_target="all"``).
        distractor: Whether the data has a distractor (its pointing column, and
            ``non_target="auto"``).

    Returns:
        ``{"insertion/deletion", "AOPC", "faithfulness", "sensitivity-n",
        "non-target", "ROAD", "infidelity", "explanations"}``; ``"ROAD"`` also costs
        one sparse solve per pass; the grid pointing game costs one explanation.
    """
    s = cfg.curve_steps
    mode = cfg.non_target
    if mode == "auto":
        mode = "distractor" if distractor else "random"
    classes = {"off": 0, "all": num_classes - 1}.get(mode, 1)
    return {
        "insertion/deletion": 2 * (s + 1),
        "AOPC": 2 * s,
        "faithfulness": cfg.faith_samples,
        "sensitivity-n": cfg.sensitivity_sizes * cfg.sensitivity_samples,
        "non-target": classes * 2 * (s + 1),
        "ROAD": 0 if cfg.road == "off" else 2 * len(ROAD_FRACTIONS),
        "infidelity": 0 if cfg.infidelity == "off" else cfg.infidelity_samples,
        "explanations": 1
        + classes
        + int(distractor and mode != "distractor")
        + int(cfg.grid_pointing > 0),
    }


def cost_line(
    cfg: "EvalConfig",
    protocol: Optional[str],
    num_classes: int,
    distractor: bool,
    pending: int,
) -> str:
    """One line: the run's protocol and its estimated cost (perturbed forward
    passes per image and method, and for the ``pending`` (method, image) pairs)."""
    cost = forward_passes(cfg, num_classes, distractor)
    passes = sum(v for k, v in cost.items() if k != "explanations")
    parts = ", ".join(f"{k} {v}" for k, v in cost.items() if v and k != "explanations")
    name = f"protocol {protocol}" if protocol else "custom protocol"
    road = " and as many sparse solves (ROAD)" if cost["ROAD"] else ""
    return (
        f"evaluate: {name}: about {passes} perturbed forward passes per image and "
        f"method ({parts}){road}, and {cost['explanations']} explanation(s); "
        f"{pending} (method, image) pair(s) to do: about {passes * pending} passes"
    )


@dataclass
class EvalConfig:
    """Settings of one evaluation run (stored with the records for resuming).

    The defaults are the ``quick`` preset of :data:`PROTOCOLS` (seconds per image
    and method for a ViT-S/16 on a CPU); :func:`protocol_settings` gives the other
    presets' values (``paper``: the papers' settings, also listed in the comments,
    in ``results.md`` and in ``captum-vit evaluate --help``).

    Attributes:
        n: Number of images (embedded scenes to generate; for a user dataset the
            number of images it holds).
        seed: Seed of the scenes, of the metrics' random choices and of per-image
            seeds.
        removal: How metrics remove patches: ``tokens`` (token dropping) or a pixel
            baseline (``black``, ``mean``, ``blur``, ``uniform``).
        chunk: Images per batch and per record (the unit of resuming and of the
            split over processes).
        curve_steps: Points per insertion/deletion curve, minus one (ViT Shapley: one
            patch per step, i.e. the number of patches; TIS: 224).
        faith_samples: Random subsets for the faithfulness correlation (ViT Shapley:
            1000).
        sensitivity_sizes: Number K of subset sizes of the sensitivity-n sweep,
            n = round(i / (K + 1) · F) for i = 1..K (9: 10 %, ..., 90 % of the F
            patches; 13 on 196 patches: n = 14, 28, ..., 182, ViT Shapley's sweep).
        sensitivity_samples: Random subsets per size for sensitivity-n (ViT
            Shapley: 1000).
        tis_masks: TIS ``n_masks`` (default and the other knobs:
            :class:`captum_vit.methods.MethodOptions`).
        rise_masks: RISE ``n_masks``.
        n_steps: Integrated Gradients steps.
        target: ``"label"`` or ``"pred"`` (the model's predicted class).
        amp: ``None``, ``"bf16"`` or ``"fp16"``: autocast for the forward passes of
            perturbation methods and metrics.
        evaluator: Which model scores the perturbed inputs of the removal metrics
            (insertion, deletion, AOPC, faithfulness, sensitivity-n, non-target):
            ``"classifier"`` or ``"surrogate"``, the ViT Shapley surrogate
            fine-tuned to missing patches (a trained part of the loaded model,
            :class:`captum_vit.methods.TrainedParts`; ViT Shapley §6.2 removes
            through it for every method).
        pointing: Pointing-game rule: ``"first"`` (the single highest pixel of the
            map at the image's resolution, ties to the first in row-major order, as
            the reference codes' argmax; Zhang et al. 2018, ViT-CX §4), ``"random"``
            (one of the tied maxima drawn with the image's seed) or ``"any"`` (hit
            when any pixel of the maximum hits: the patch-level variant).
        pointing_tolerance: Hit radius in pixels of the model input around the
            ground truth (Zhang et al. 2018: 15 px).
        non_target: The class explained for the non-target columns: ``"auto"``
            (the distractor's class on data with a distractor, else ``"random"``),
            ``"distractor"``, ``"random"`` (a class other than the explained one,
            drawn with the image's seed), ``"all"`` (every other class, averaged:
            ViT Shapley's Table 2, C − 1 explanations per image) or ``"off"``.
        road: ROAD's removal units, ``"patches"``, ``"pixels"`` (Rong et al.) or
            ``"off"``.
        randomization: Images (spread evenly over the data) that get the
            model-parameter randomisation check; 0 = off.
        metric_batch: Perturbed inputs per forward pass in the metrics.
        infidelity: The infidelity column's perturbation: ``"square"`` (a random
            square of patches removed, Yeh et al.'s square removal), ``"noise"``
            (Gaussian noise per patch) or ``"off"``.
        infidelity_samples: Perturbations per image of the infidelity column.
        grid_pointing: 0 (off) or n >= 2: the grid pointing column on n x n grids
            of images of distinct classes (:class:`captum_vit.data.GridDataset`;
            needs labels and at least n * n classes).
        gallery: Images (a sample seeded by ``seed``, :func:`gallery_positions`)
            whose maps are kept for the gallery of ``report.html``; 0 = none.
    """

    n: int = 200
    seed: int = 1234
    removal: str = "tokens"
    chunk: int = 10
    curve_steps: int = 8
    faith_samples: int = 16
    sensitivity_sizes: int = 3
    sensitivity_samples: int = 8
    tis_masks: int = DEFAULT_OPTIONS.tis_masks
    rise_masks: int = DEFAULT_OPTIONS.rise_masks
    n_steps: int = DEFAULT_OPTIONS.n_steps
    target: str = "label"
    amp: Optional[str] = None
    evaluator: str = "classifier"
    pointing: str = "first"
    pointing_tolerance: float = 0.0
    non_target: str = "auto"
    road: str = "off"
    randomization: int = 0
    metric_batch: int = 64
    infidelity: str = "square"
    infidelity_samples: int = 8
    grid_pointing: int = 0
    gallery: int = 8

    def validate(self) -> None:
        """Raise ValueError naming the first setting out of range."""
        positive = (
            "n",
            "chunk",
            "curve_steps",
            "tis_masks",
            "rise_masks",
            "n_steps",
            "sensitivity_sizes",
            "metric_batch",
            "infidelity_samples",
        )
        for name in positive:
            check_count(name, getattr(self, name))
        for name in ("faith_samples", "sensitivity_samples"):
            check_count(name, getattr(self, name), 2)
        if self.removal not in ("tokens", "black", "mean", "blur", "uniform"):
            raise ValueError(f"removal: unknown removal {self.removal!r}")
        if self.target not in ("label", "pred"):
            raise ValueError(f"target: expected 'label' or 'pred', got {self.target!r}")
        if self.amp not in (None, "bf16", "fp16"):
            raise ValueError(f"amp: expected None, 'bf16' or 'fp16', got {self.amp!r}")
        for name, choices in (
            ("evaluator", EVALUATORS),
            ("pointing", POINTING_RULES),
            ("non_target", NON_TARGETS),
            ("road", ROAD_UNITS),
            ("infidelity", INFIDELITY),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(
                    f"{name}: expected one of {choices}, got {getattr(self, name)!r}"
                )
        tol = self.pointing_tolerance
        if (
            isinstance(tol, bool)
            or not isinstance(tol, (int, float))
            or not math.isfinite(tol)
            or tol < 0
        ):
            raise ValueError(
                f"pointing_tolerance: expected a number of pixels >= 0, got {tol!r}"
            )
        g = self.grid_pointing
        if isinstance(g, bool) or not isinstance(g, int) or g == 1 or g < 0:
            raise ValueError(
                f"grid_pointing: expected 0 (off) or a grid side >= 2, got {g!r}"
            )
        g = self.gallery
        if isinstance(g, bool) or not isinstance(g, int) or g < 0:
            raise ValueError(f"gallery: expected a number of images >= 0, got {g!r}")
        r = self.randomization
        if isinstance(r, bool) or not isinstance(r, int) or not 0 <= r <= self.n:
            raise ValueError(
                f"randomization: expected a number of images in 0..{self.n}, got {r!r}"
            )

    def method_options(self) -> MethodOptions:
        """The methods' knobs of this run (no progress bars inside the methods)."""
        return MethodOptions(
            tis_masks=self.tis_masks, rise_masks=self.rise_masks, n_steps=self.n_steps
        )

    def sensitivity_fractions(self) -> List[float]:
        """The sweep's subset sizes as fractions of the patches."""
        k = self.sensitivity_sizes
        return [i / (k + 1) for i in range(1, k + 1)]

    def accuracy_fractions(self) -> List[float]:
        """Removed fractions of the accuracy AOPC: 0, 1/S, ..., (S - 1)/S (Chefer
        et al.'s 0 %, 10 %, ..., 90 % for S = 10)."""
        return [i / self.curve_steps for i in range(self.curve_steps)]


def randomization_positions(n: int, k: int) -> List[int]:
    """Dataset positions of the ``k`` images (of ``n``) that get the randomisation
    check: ``floor(i · n / k)`` for i < k, spread evenly over the data (a folder
    sorted by class contributes every class), the same for any number of processes.
    """
    return [i * n // k for i in range(k)] if k > 0 else []


def gallery_positions(n: int, k: int, seed: int) -> List[int]:
    """Dataset positions of the ``k`` images (of ``n``) shown in the report's
    gallery: a sample drawn with ``seed``, in dataset order; the same in any number
    of processes and on resuming."""
    if k <= 0:
        return []
    g = torch.Generator().manual_seed(int(seed))
    return sorted(torch.randperm(n, generator=g)[: min(k, n)].tolist())


def _patches(loaded: Any) -> int:
    """The model's number of patches at its input size."""
    from ..vit import ViTAdapter

    x = torch.zeros(1, 3, *loaded.input_size)
    gh, gw = ViTAdapter(loaded.model).grid_for(x)
    return gh * gw


def check_protocol(cfg: EvalConfig, loaded: Any, dataset: ItemDataset) -> Any:
    """Check the protocol options against the model and the data; return the model
    that scores the removal metrics (the classifier or its ViT Shapley surrogate).

    Raises:
        ValueError: one line naming the flag: ``--evaluator surrogate`` without a
            surrogate, ``--non-target distractor`` on data without a distractor,
            non-target columns for a one-class model, ``--grid-pointing`` on data
            without labels or with fewer classes than a grid's cells.
    """
    if cfg.evaluator == "surrogate":
        surrogate = TrainedParts.from_mapping(loaded.extras).shapley_surrogate
        if surrogate is None:
            raise ValueError(
                "--evaluator surrogate: the model has no ViT Shapley surrogate (one is "
                "shipped for the embedded default model with its shipped weights; "
                "train one with train-shapley and pass --shapley RUN); use "
                "--evaluator classifier (also with --protocol paper or paper-cpu, "
                "which use the surrogate with token removal)"
            )
        evaluator = surrogate
    else:
        evaluator = loaded.model
    if cfg.non_target == "distractor" and not dataset.has_distractor:
        raise ValueError(
            "--non-target distractor: the data has no distractor (only the embedded "
            "scenes have one); use random or all"
        )
    if cfg.grid_pointing:
        from ..data import check_grid_source

        check_grid_source(dataset, cfg.grid_pointing)
    if cfg.non_target != "off" and loaded.num_classes < 2:
        raise ValueError(
            "--non-target: the model has only one class; use --non-target off"
        )
    return evaluator
