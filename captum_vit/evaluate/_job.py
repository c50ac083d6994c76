"""Benchmark tables: every method scored by every metric, on any model and images.

:func:`run_evaluation` explains a data source's images with each method (the target
class: the label or the prediction; on the embedded scenes also the distractor's
class), scores the maps with :mod:`captum_vit.metrics`, and writes

- ``records.jsonl`` (and ``records.rank{R}.jsonl`` per extra process): one line per
  (method, chunk of images) with per-image values, so an interrupted run resumes from
  what it already wrote, also with another number of processes;
- ``results.csv`` and ``results.md``: mean and 95% confidence interval (Student t) per
  method and metric; ``results.md`` defines every column and says what a resumed run
  reused;
- ``curves.png`` and ``curves.npz``: the average insertion and deletion curves (and
  the non-target and ROAD curves in the ``.npz``);
- ``sensitivity_n.png`` and ``sensitivity_n.npz``: sensitivity-n over the sweep of n;
- ``randomization.npz`` (with ``randomization`` > 0): the randomisation check's
  Spearman and SSIM per randomised parameter group.

The protocol options of :class:`EvalConfig` (which model scores the perturbed
images, the pointing rule, the sensitivity-n sweep, the non-target class, ROAD, the
randomisation subset) reproduce the papers' settings; ``results.md`` lists them
next to the papers'.

The data source is the embedded Fashion-MNIST scenes by default, or any
:class:`captum_vit.data.ImageDataset`; the model is the embedded default or any
:class:`captum_vit.models.LoadedModel`. Under ``torchrun`` the chunks are split over
the processes (:mod:`captum_vit.distributed`) and rank 0 writes the tables; every
random choice is seeded per image, so the tables equal a one-process run's.
"""

from __future__ import annotations

import csv
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from .. import metrics
from .._jobs import (
    RecordStore,
    SettingsMismatch,
    autocast,
    build_methods,
    check_amp,
    check_job,
    chunk_inputs,
    chunks_of,
    image_seed,
    method_autocast,
    note,
    plan,
    run_chunks,
    timed_explain,
)
from .._utils import check_count
from ..data import ItemDataset, SceneDataset
from ..distributed import DistContext
from ..methods import Method, resolve_methods

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


def protocol_of(cfg: "EvalConfig", patches: int) -> Optional[str]:
    """The preset whose values ``cfg`` has (the first, in :data:`PROTOCOLS`
    order), or None for settings of no preset."""
    for name in PROTOCOLS:
        values = protocol_settings(name, patches, cfg.removal, cfg.n)
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
        "non-target", "ROAD", "explanations"}``; ``"ROAD"`` also costs one sparse
        solve per pass.
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
        "explanations": 1 + classes + int(distractor and mode != "distractor"),
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
        tis_masks: TIS ``n_masks``.
        rise_masks: RISE ``n_masks``.
        n_steps: Integrated Gradients steps.
        target: ``"label"`` or ``"pred"`` (the model's predicted class).
        amp: ``None``, ``"bf16"`` or ``"fp16"``: autocast for the forward passes of
            perturbation methods and metrics.
        evaluator: Which model scores the perturbed inputs of the removal metrics
            (insertion, deletion, AOPC, faithfulness, sensitivity-n, non-target):
            ``"classifier"`` or ``"surrogate"``, the ViT Shapley surrogate
            fine-tuned to missing patches (``extras["shapley_surrogate"]`` of the
            loaded model; ViT Shapley §6.2 removes through it for every method).
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
    """

    n: int = 200
    seed: int = 1234
    removal: str = "tokens"
    chunk: int = 10
    curve_steps: int = 8
    faith_samples: int = 16
    sensitivity_sizes: int = 3
    sensitivity_samples: int = 8
    tis_masks: int = 1024
    rise_masks: int = 4000
    n_steps: int = 20
    target: str = "label"
    amp: Optional[str] = None
    evaluator: str = "classifier"
    pointing: str = "first"
    pointing_tolerance: float = 0.0
    non_target: str = "auto"
    road: str = "off"
    randomization: int = 0
    metric_batch: int = 64

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
        r = self.randomization
        if isinstance(r, bool) or not isinstance(r, int) or not 0 <= r <= self.n:
            raise ValueError(
                f"randomization: expected a number of images in 0..{self.n}, got {r!r}"
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


def writable_dir(path: str) -> Path:
    """Create ``path`` if needed and check that a file can be written in it.

    Raises:
        OSError: the folder cannot be created or written.
    """
    import os

    out = Path(path)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} is a file")
    out.mkdir(parents=True, exist_ok=True)
    probe = out / f".write_test.{os.getpid()}"
    probe.write_text("ok")
    probe.unlink()
    return out


def _removal(name: str, preprocessing: Any = None):
    """The metrics' ``removal``: ``None`` drops tokens; pixel baselines are meant in
    image space, so ``"black"`` is the model's *normalised* value of a black pixel
    (the metrics' own ``"black"`` is 0 in model-input space, which is mid-grey for
    the default model's mean = std = 0.5 normalisation). Without ``preprocessing``
    the embedded default model's."""
    if name == "tokens":
        return None
    if name == "black":
        if preprocessing is None:
            from ..zoo import preprocess

            return preprocess(torch.zeros(1, 3, 1, 1))
        return preprocessing.normalise(torch.zeros(1, 3, 1, 1))
    return name


def _pointing(
    attr: Tensor,
    gt: Tensor,
    has_gt: Tensor,
    cfg: EvalConfig,
    seeds: Sequence[int],
) -> Tensor:
    """Pointing game against (B, H, W) ground-truth masks with the run's rule;
    NaN where there is none. ``"random"`` draws each image's tied pixel with the
    image's own seed (the same draw in any batch or process)."""
    out = torch.full((attr.shape[0],), float("nan"))
    idx = has_gt.nonzero().flatten()
    if not idx.numel():
        return out
    a, m = attr[idx].cpu(), gt[idx].cpu()
    tol = float(cfg.pointing_tolerance)
    if cfg.pointing == "random":
        hits = [
            metrics.pointing_game(
                a[j : j + 1],
                masks=m[j : j + 1],
                ties="random",
                tolerance=tol,
                seed=int(seeds[int(i)]),
            )
            for j, i in enumerate(idx)
        ]
        out[idx] = torch.cat(hits).float()
    else:
        out[idx] = metrics.pointing_game(
            a, masks=m, ties=cfg.pointing, tolerance=tol
        ).float()
    return out


def non_target_classes(
    mode: str,
    keys: Sequence[str],
    target: Tensor,
    num_classes: int,
    seed: int,
    distractor: Optional[Tensor] = None,
) -> Tensor:
    """The class explained for the non-target columns, one per image, (B,) long.

    ``"distractor"``: the distractor's class, or where it is the explained class
    (possible with ``target="pred"``) a random one; ``"random"``: a class other than
    the explained one, uniform, drawn with a seed made from the run's seed and the
    image's key (the same class in any batch, chunk or process).

    Args:
        mode: ``"distractor"`` or ``"random"``.
        keys: The images' keys.
        target: (B,) explained classes.
        num_classes: Number of classes (at least 2).
        seed: The run's seed.
        distractor: (B,) distractor classes (``"distractor"`` only).
    """
    out = []
    for i, key in enumerate(keys):
        t = int(target[i])
        if mode == "distractor" and distractor is not None:
            d = int(distractor[i])
            if d != t:
                out.append(d)
                continue
        g = torch.Generator().manual_seed(image_seed(seed, f"{key}#non-target"))
        j = int(torch.randint(num_classes - 1, (1,), generator=g))
        out.append(j + (j >= t))
    return torch.tensor(out, dtype=torch.long, device=target.device)


def _curve_areas(
    model: torch.nn.Module,
    inputs: Tensor,
    attr: Tensor,
    target: Tensor,
    cfg: EvalConfig,
    common: Dict[str, Any],
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Insertion and deletion areas and curves, (B,), (B,), (B, S), (B, S)."""
    fractions = [i / cfg.curve_steps for i in range(cfg.curve_steps + 1)]
    c = metrics.insertion_deletion_curves(
        model, inputs, attr, target, fractions=fractions, **common
    )
    ins, dele = c.insertion.float(), c.deletion.float()
    return (
        metrics.area_under_curve(c.fractions, ins),
        metrics.area_under_curve(c.fractions, dele),
        ins,
        dele,
    )


def mean_ci(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and half-width of the 95% Student-t confidence interval (NaNs dropped)."""
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    if v.size == 1:
        return float(v[0]), float("nan")
    from scipy import stats

    half = stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size)
    return float(v.mean()), float(half)


def run_evaluation(
    out_dir: str,
    methods: Optional[List[str]] = None,
    cfg: Optional[EvalConfig] = None,
    show_progress: bool = False,
    log: Optional[Callable[[str], None]] = None,
    *,
    model: Any = None,
    dataset: Optional[ItemDataset] = None,
    ctx: Optional[DistContext] = None,
    workers: int = 0,
) -> Optional[Dict[str, Dict[str, Tuple[float, float]]]]:
    """Score methods on a data source's images and write the tables.

    Args:
        out_dir: Output directory (created; must be writable). Records already in it
            for the same settings are reused, so an interrupted run resumes; records
            of other settings are an error.
        methods: Method names (default: all, see :mod:`captum_vit.methods`).
        cfg: Settings (:class:`EvalConfig`); with a ``dataset`` its ``n`` becomes
            the dataset's size.
        show_progress: A tqdm bar over the images (rank 0), with images/s and ETA.
        log: Receives one line per finished (method, chunk), per skipped method and
            per unreadable image (by default the last two go to stdout/stderr).
        model: A :class:`captum_vit.models.LoadedModel` (default: the embedded
            default model with its shipped weights) on ``ctx.device``.
        dataset: A :class:`captum_vit.data.ItemDataset` (default: ``cfg.n`` embedded
            held-out scenes) preprocessed for ``model``.
        ctx: The process's :class:`captum_vit.distributed.DistContext` (default: one
            process on the CPU).
        workers: DataLoader worker processes.

    Returns:
        On rank 0 ``{method: {metric: (mean, ci_half_width)}}``; None on other ranks.

    Raises:
        ValueError: unknown method names, settings out of range, ``target="label"``
            without labels, labels outside the model's classes, more processes than
            images, ``evaluator="surrogate"`` for a model without a ViT Shapley
            surrogate, ``non_target="distractor"`` on data without a distractor, or
            records of other settings in ``out_dir``.
        OSError: ``out_dir`` cannot be created or written.

    Examples::

        >>> table = run_evaluation("out/eval", ["rollout", "genatt"], EvalConfig(n=20))
        >>> table["genatt"]["insertion"]            # (mean, 95% CI half-width)
    """
    from ..models import load_model

    cfg = replace(cfg) if cfg is not None else EvalConfig()
    chosen: List[Method] = resolve_methods(methods)
    ctx = ctx or DistContext()
    device = ctx.device
    check_amp(device, cfg.amp)
    loaded = model if model is not None else load_model("default", device=device)
    if dataset is None:
        cfg.validate()
        dataset = SceneDataset(
            cfg.n,
            loaded.preprocessing,
            seed=cfg.seed,
            default_model=loaded.source == "default" and loaded.input_size == (64, 64),
        )
    else:
        cfg.n = len(dataset)
    cfg.validate()
    evaluator = check_protocol(cfg, loaded, dataset)
    out = writable_dir(out_dir)
    check_job(dataset, loaded.num_classes, cfg.target, ctx.world_size)
    settings = {
        "command": "evaluate",
        **asdict(cfg),
        "model": loaded.describe(),
        "data": dataset.describe(),
    }
    if cfg.evaluator == "surrogate":
        from ..shapley import classifier_digest

        settings["surrogate_sha256"] = classifier_digest(evaluator)
    removal = _removal(cfg.removal, loaded.preprocessing)
    if isinstance(removal, Tensor):
        removal = removal.to(device)
    options = dict(
        tis_masks=cfg.tis_masks,
        rise_masks=cfg.rise_masks,
        n_steps=cfg.n_steps,
        show_progress=False,
    )
    built = build_methods(chosen, loaded, options, ctx.is_main, log)
    by_name = {m.name: m for m in chosen}
    store = RecordStore(out, ctx.rank)
    chunks = chunks_of(len(dataset), cfg.chunk)
    protocol = protocol_of(cfg, _patches(loaded))
    try:
        work, reused, total = plan(ctx, store, settings, list(built), chunks)
    except SettingsMismatch as exc:
        raise _with_protocol_hint(exc, store, protocol, loaded) from None
    if show_progress and ctx.is_main and total > reused:
        note(
            cost_line(
                cfg,
                protocol,
                loaded.num_classes,
                dataset.has_distractor,
                total - reused,
            )
        )
    job = _EvalJob(
        built,
        by_name,
        loaded.model,
        evaluator,
        loaded.num_classes,
        cfg,
        removal,
        settings,
        store,
        dataset,
        set(randomization_positions(len(dataset), cfg.randomization)),
    )
    run_chunks(
        ctx,
        dataset,
        work,
        workers,
        "evaluate",
        show_progress,
        lambda batch, start, positions, left, bar: job.run(
            batch, start, positions, left, log, bar
        ),
    )
    if not ctx.is_main:
        return None
    return write_tables(
        out,
        list(built),
        settings,
        reused=(reused, total) if reused else None,
        protocol=protocol,
    )


def _patches(loaded: Any) -> int:
    """The model's number of patches at its input size."""
    from ..vit import ViTAdapter

    x = torch.zeros(1, 3, *loaded.input_size)
    gh, gw = ViTAdapter(loaded.model).grid_for(x)
    return gh * gw


def _with_protocol_hint(
    exc: SettingsMismatch, store: RecordStore, protocol: Optional[str], loaded: Any
) -> SettingsMismatch:
    """The mismatch, plus the ``--protocol`` the folder's records were made with
    when that is another preset (e.g. a folder of the former defaults)."""
    records = store.read() if store.rank == 0 else []
    old = next((r.get("settings") for r in records if r.get("settings")), None)
    fields = {f for f in asdict(EvalConfig())}
    if isinstance(old, dict) and fields <= set(old):
        try:
            then = protocol_of(
                EvalConfig(**{k: old[k] for k in fields}), _patches(loaded)
            )
        except (TypeError, ValueError):
            then = None
        if then is not None and then != protocol:
            out = SettingsMismatch(
                f"{exc}; its records follow --protocol {then} (add --protocol {then} "
                "to resume it)"
            )
            out.all_ranks = getattr(exc, "all_ranks", False)  # type: ignore
            return out
    return exc


def check_protocol(cfg: EvalConfig, loaded: Any, dataset: ItemDataset) -> Any:
    """Check the protocol options against the model and the data; return the model
    that scores the removal metrics (the classifier or its ViT Shapley surrogate).

    Raises:
        ValueError: one line naming the flag: ``--evaluator surrogate`` without a
            surrogate, ``--non-target distractor`` on data without a distractor,
            non-target columns for a one-class model.
    """
    if cfg.evaluator == "surrogate":
        surrogate = loaded.extras.get("shapley_surrogate")
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
    if cfg.non_target != "off" and loaded.num_classes < 2:
        raise ValueError(
            "--non-target: the model has only one class; use --non-target off"
        )
    return evaluator


@dataclass
class _EvalJob:
    """What stays the same for every chunk of one evaluation."""

    built: Dict[str, Callable[..., Tensor]]
    by_name: Dict[str, Method]
    model: torch.nn.Module
    evaluator: torch.nn.Module
    num_classes: int
    cfg: EvalConfig
    removal: Any
    settings: dict
    store: RecordStore
    dataset: ItemDataset
    randomized: set

    def run(self, batch: Dict[str, Any], start: int, positions, left, log, bar):
        """Score the pending methods ``left`` on one loaded chunk and append one
        record per method."""
        cfg, dataset = self.cfg, self.dataset
        idx, keys, skipped, inputs, target = chunk_inputs(
            batch, self.model, cfg.target, log
        )
        device = inputs.device
        gt = distractor = None
        if dataset.has_ground_truth:
            gt = (batch["gt"][idx], batch["has_gt"][idx])
        if dataset.has_distractor:
            distractor = (
                batch["distractor"][idx].to(device),
                batch["gt_distractor"][idx],
                batch["gt_distractor"][idx].flatten(1).any(1),
            )
        seeds = [image_seed(cfg.seed, k) for k in keys]
        mode = cfg.non_target
        if mode == "auto":
            mode = "distractor" if distractor is not None else "random"
        non_target: Optional[Tensor] = None
        if mode in ("distractor", "random") and keys:
            non_target = non_target_classes(
                mode,
                keys,
                target,
                self.num_classes,
                cfg.seed,
                distractor[0] if distractor is not None else None,
            )
        rand_rows = [
            j for j, i in enumerate(idx.tolist()) if positions[i] in self.randomized
        ]
        for name in left:
            bar.set_postfix_str(name, refresh=False)
            t0 = time.time()
            rec: Dict[str, Any] = {}
            if keys:  # else every image of the chunk was unreadable
                rec = self.score(
                    name,
                    inputs,
                    target,
                    seeds,
                    gt,
                    distractor,
                    mode,
                    non_target,
                    rand_rows,
                )
            rec.update(
                method=name,
                start=start,
                keys=keys,
                targets=[int(t) for t in target.cpu()],
                skipped=skipped,
                wall=[t0, time.time()],
                settings=self.settings,
            )
            self.store.append(rec)
            if log is not None:
                secs = rec["seconds"][0] if keys else float("nan")
                log(
                    f"{name}: images {positions[0]}-{positions[-1]} done "
                    f"({format_seconds(secs)} s/image)"
                )

    def score(
        self,
        name: str,
        inputs: Tensor,
        target: Tensor,
        seeds: Sequence[int],
        gt: Optional[Tuple[Tensor, Tensor]],
        distractor: Optional[Tuple[Tensor, Tensor, Tensor]],
        non_target_mode: str,
        non_target: Optional[Tensor],
        rand_rows: List[int],
    ) -> Dict[str, Any]:
        """Explain one chunk of images with method ``name`` and score it with every
        metric; returns the record's values."""
        cfg, explain, method = self.cfg, self.built[name], self.by_name[name]
        device = inputs.device
        b = inputs.shape[0]

        def method_amp():
            return method_autocast(method, device, cfg.amp)

        attr, seconds = timed_explain(explain, method, inputs, target, seeds, cfg.amp)
        seconds /= b
        attr = attr.detach().float()
        ev = self.evaluator
        common = dict(
            removal=self.removal, seed=cfg.seed, max_examples_per_batch=cfg.metric_batch
        )
        out: Dict[str, Tensor] = {}
        curves: Dict[str, Tensor] = {}
        with autocast(device, cfg.amp):
            ins, dele, ins_c, del_c = _curve_areas(
                ev, inputs, attr, target, cfg, common
            )
            out.update(insertion=ins, deletion=dele, ins_minus_del=ins - dele)
            out["aopc"] = (del_c[:, :1] - del_c).mean(dim=1)
            curves.update(insertion=ins_c.mean(0), deletion=del_c.mean(0))
            for mode in ("positive", "negative"):
                out[f"aopc_acc_{mode}"] = metrics.aopc(
                    ev,
                    inputs,
                    attr,
                    target,
                    mode=mode,
                    score="accuracy",
                    fractions=cfg.accuracy_fractions(),
                    **common,
                ).float()
            out["faithfulness"] = metrics.faithfulness_correlation(
                ev, inputs, attr, target, n_samples=cfg.faith_samples, **common
            ).float()
            sweep = metrics.sensitivity_n_sweep(
                ev,
                inputs,
                attr,
                target,
                fractions=cfg.sensitivity_fractions(),
                n_samples=cfg.sensitivity_samples,
                **common,
            )
            out["sensitivity_n"] = sweep.mean.float()
            if cfg.road != "off":
                road = metrics.road_curves(
                    self.model,
                    inputs,
                    attr,
                    target,
                    fractions=ROAD_FRACTIONS,
                    pixels=cfg.road == "pixels",
                    seed=cfg.seed,
                    max_examples_per_batch=cfg.metric_batch,
                )
                out["road_morf"] = road.morf.float().mean(dim=1)
                out["road_lerf"] = road.lerf.float().mean(dim=1)
                curves.update(
                    road_morf=road.morf.float().mean(0),
                    road_lerf=road.lerf.float().mean(0),
                )
        if gt is not None:
            out["pointing"] = _pointing(attr, *gt, cfg, seeds)
        attr_d = None
        if distractor is not None:
            d_target, d_gt, d_has = distractor
            with method_amp():
                attr_d = explain(inputs, d_target, seeds=seeds).detach().float()
            out["pointing_distractor"] = _pointing(attr_d, d_gt, d_has, cfg, seeds)
        nt = self._non_target(
            explain,
            method_amp,
            inputs,
            target,
            seeds,
            common,
            non_target_mode,
            non_target,
            attr_d if distractor is not None else None,
            distractor[0] if distractor is not None else None,
        )
        if nt is not None:
            out.update(insertion_nontarget=nt[0], deletion_nontarget=nt[1])
            curves.update(insertion_nontarget=nt[2], deletion_nontarget=nt[3])
        rand = None
        if rand_rows:
            rand = self._randomization(
                explain, method_amp, inputs, target, seeds, attr, rand_rows
            )
            out.update(randomization_spearman=rand[0], randomization_ssim=rand[1])
        elif self.randomized:  # the check is on, for other images of the data
            nan = torch.full((b,), float("nan"))
            out.update(randomization_spearman=nan, randomization_ssim=nan)
        rec: Dict[str, Any] = {
            k: [float(v) for v in t.detach().cpu()] for k, t in out.items()
        }
        rec["seconds"] = [seconds] * b
        for k, c in curves.items():
            rec[f"curve_{k}"] = c.detach().cpu().tolist()
        rec["sensitivity_n_sizes"] = sweep.n.tolist()
        rec["sensitivity_n_curves"] = sweep.curve.float().cpu().tolist()
        if non_target is not None:
            rec["non_targets"] = [int(c) for c in non_target.cpu()]
        if rand is not None:
            rec["randomization_layers"] = rand[2]
            rec["randomization_curves"] = rand[3]
        return rec

    def _non_target(
        self,
        explain,
        method_amp,
        inputs: Tensor,
        target: Tensor,
        seeds: Sequence[int],
        common: Dict[str, Any],
        mode: str,
        classes: Optional[Tensor],
        attr_d: Optional[Tensor],
        d_target: Optional[Tensor],
    ) -> Optional[Tuple[Tensor, Tensor, Tensor, Tensor]]:
        """Insertion and deletion of non-target explanations: per-image areas and
        mean curves (averaged over every other class with ``mode="all"``)."""
        if mode == "off":
            return None
        if mode == "all":
            per_class = [
                target.new_full(target.shape, j) + (target <= j).long()
                for j in range(self.num_classes - 1)
            ]
        else:
            per_class = [classes]
        sums: List[Tensor] = []
        for c in per_class:
            if attr_d is not None and torch.equal(c, d_target):
                a = attr_d  # the distractor's explanation, already computed
            else:
                with method_amp():
                    a = explain(inputs, c, seeds=seeds).detach().float()
            with autocast(inputs.device, self.cfg.amp):
                res = _curve_areas(self.evaluator, inputs, a, c, self.cfg, common)
            sums = (
                [r.clone() for r in res]
                if not sums
                else [s + r for s, r in zip(sums, res)]
            )
        k = len(per_class)
        ins, dele, ins_c, del_c = (s / k for s in sums)
        return ins, dele, ins_c.mean(0), del_c.mean(0)

    def _randomization(
        self,
        explain,
        method_amp,
        inputs: Tensor,
        target: Tensor,
        seeds: Sequence[int],
        attr: Tensor,
        rows: List[int],
    ) -> Tuple[Tensor, Tensor, List[str], Dict[str, list]]:
        """The cascading randomisation check on the chunk's ``rows``: per-image
        means over the steps (NaN for the other images), the groups, and the
        per-image curves (None for the other images)."""
        sel = torch.tensor(rows, device=inputs.device)
        sub_seeds = [seeds[j] for j in rows]

        def fn(x: Tensor, target: Optional[Tensor] = None) -> Tensor:
            with method_amp():
                return explain(x, target, seeds=sub_seeds)

        res = metrics.model_parameter_randomization(
            self.model,
            fn,
            inputs[sel],
            target[sel],
            attributions=attr[sel],
            seed=self.cfg.seed,
        )
        b = inputs.shape[0]
        means = []
        per_image: Dict[str, list] = {}
        for key, vals in (("spearman", res.spearman), ("ssim", res.ssim)):
            m = torch.full((b,), float("nan"))
            m[torch.tensor(rows)] = vals.float().mean(dim=1).cpu()
            means.append(m)
            full: List[Optional[list]] = [None] * b
            for r, j in enumerate(rows):
                full[j] = vals[r].float().cpu().tolist()
            per_image[key] = full
        return means[0], means[1], list(res.layers), per_image


# ------------------------------------------------------------------------- report
def _decimals(x: float, significant: int) -> int:
    """Decimals that show ``x`` with ``significant`` significant digits."""
    if x == 0 or not math.isfinite(x):
        return 0
    return max(0, significant - 1 - math.floor(math.log10(abs(x))))


def _fixed(x: float, decimals: int) -> str:
    s = f"{x:.{decimals}f}"
    if s.startswith("-") and float(s) == 0:  # never "-0.000"
        s = s[1:]
    return s


def format_mean_ci(
    mean: float,
    half: float,
    decimals: int = 3,
    significant: Optional[int] = None,
    max_decimals: int = 8,
) -> str:
    """``mean ± half`` with enough decimals for both.

    The mean gets ``decimals`` decimals (or, with ``significant``, that many
    significant digits); the half-width at least one significant digit, and the mean
    as many decimals as the half-width, so "± 0" never stands next to a larger value.
    "-0.000" is written "0.000"; a zero half-width (all values equal) is said so.

    Examples::

        >>> format_mean_ci(0.01234, 0.00041, significant=2)
        '0.0123 ± 0.0004'
        >>> format_mean_ci(-0.0001, 0.012)
        '0.000 ± 0.012'
    """
    if math.isnan(mean):
        return "n/a"
    d = _decimals(mean, significant) if significant else decimals
    if math.isfinite(half) and half > 0:
        d = max(d, _decimals(half, 1))
    d = min(d, max_decimals)
    m = _fixed(mean, d)
    if math.isnan(half):
        return m
    if half == 0:
        return f"{m} (all equal)"
    h = _fixed(half, d)
    if float(h) == 0:
        h = "<" + _fixed(10.0**-d, d)
    return f"{m} ± {h}"


def format_seconds(seconds: float) -> str:
    """Seconds with two significant digits (``0.0042``, ``1.3``, ``12``)."""
    if math.isnan(seconds):
        return "n/a"
    return _fixed(seconds, min(_decimals(seconds, 2), 8))


def _dedupe(records: List[dict]) -> List[dict]:
    seen, out = set(), []
    for r in records:
        key = (r.get("method"), r.get("start"))
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


#: Mean curves kept per record (``curve_<name>``), saved in ``curves.npz``.
CURVES = (
    "insertion",
    "deletion",
    "insertion_nontarget",
    "deletion_nontarget",
    "road_morf",
    "road_lerf",
)


def write_tables(
    out: Path,
    method_names: List[str],
    settings: dict,
    reused: Optional[Tuple[int, int]] = None,
    protocol: Optional[str] = None,
) -> Dict[str, Dict[str, Tuple[float, float]]]:
    """Aggregate the records (all ranks' files) into results.csv/.md,
    curves.png/.npz, sensitivity_n.png/.npz and (with the randomisation check)
    randomization.npz.

    Args:
        out: The output folder.
        method_names: Methods, in table order.
        settings: The run's settings (records of other settings are ignored).
        reused: ``(reused, requested)`` (method, image) results, for the report of a
            resumed run.
        protocol: The preset of :data:`PROTOCOLS` the settings follow (None: none).

    Returns:
        ``{method: {metric: (mean, ci_half_width)}}`` (plus ``"n"``).
    """
    records = _dedupe(
        [r for r in RecordStore(out).read() if r.get("settings") == settings]
    )
    columns = [m for m in METRICS if any(m[0] in r for r in records)]
    table: Dict[str, Dict[str, Tuple[float, float]]] = {}
    curves: Dict[str, Dict[str, np.ndarray]] = {}
    sens: Dict[str, np.ndarray] = {}
    rand: Dict[str, Dict[str, np.ndarray]] = {}
    sizes: List[int] = []
    layers: List[str] = []
    skipped: Dict[str, str] = {}
    for name in method_names:
        rows = sorted(
            (r for r in records if r["method"] == name), key=lambda r: r["start"]
        )
        for r in rows:
            skipped.update(r.get("skipped", {}))
        rows = [r for r in rows if r.get("keys")]
        if not rows:
            continue
        table[name] = {
            key: mean_ci([v for r in rows for v in r.get(key, [])])
            for key, _, _ in columns
            if key != "seconds"
        }
        if any(k == "seconds" for k, _, _ in columns):
            # timed per chunk: the mean over images, the interval over chunks
            per_chunk = [r["seconds"][0] for r in rows]
            chunk_sizes = [len(r["keys"]) for r in rows]
            mean = float(np.average(per_chunk, weights=chunk_sizes))
            table[name]["seconds"] = (mean, mean_ci(per_chunk)[1])
        weights = np.asarray([len(r["keys"]) for r in rows], dtype=np.float64)
        curves[name] = {
            d: np.average([r[f"curve_{d}"] for r in rows], axis=0, weights=weights)
            for d in CURVES
            if all(f"curve_{d}" in r for r in rows)
        }
        per_image = [c for r in rows for c in r.get("sensitivity_n_curves", [])]
        if per_image:
            sens[name] = np.asarray(per_image, dtype=np.float64)
            sizes = rows[0]["sensitivity_n_sizes"]
        checked = {
            k: [c for r in rows for c in r.get("randomization_curves", {}).get(k, [])]
            for k in ("spearman", "ssim")
        }
        checked = {k: [c for c in v if c is not None] for k, v in checked.items()}
        if checked["spearman"]:
            rand[name] = {
                k: np.asarray(v, dtype=np.float64) for k, v in checked.items()
            }
            layers = next(
                r["randomization_layers"] for r in rows if "randomization_layers" in r
            )
        table[name]["n"] = (float(weights.sum()), float("nan"))
    with (out / "results.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            ["method", "n"] + [f"{k}{s}" for k, _, _ in columns for s in ("", "_ci95")]
        )
        for name, row in table.items():
            w.writerow(
                [name, int(row["n"][0])]
                + [f"{x:.6g}" for k, _, _ in columns for x in row[k]]
            )
    (out / "results.md").write_text(
        _report(
            table, columns, settings, records, reused, skipped, sizes, layers, protocol
        )
    )
    if curves:
        _plot_curves(out, curves, settings)
    if sens:
        _save_sensitivity(out, sens, sizes, settings)
    if rand:
        np.savez(
            out / "randomization.npz",
            layers=np.asarray(layers),
            **{
                f"{m}_{k}": v.mean(axis=0)
                for m, c in rand.items()
                for k, v in c.items()
            },
            **{f"{m}_images": np.asarray(len(c["spearman"])) for m, c in rand.items()},
        )
    return table


def _save_sensitivity(
    out: Path, sens: Dict[str, np.ndarray], sizes: List[int], settings: dict
) -> None:
    """sensitivity_n.npz (mean curve and 95 % half-width per method) and .png."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    n = np.asarray(sizes)
    stats = {m: [mean_ci(v[:, j]) for j in range(v.shape[1])] for m, v in sens.items()}
    np.savez(
        out / "sensitivity_n.npz",
        n=n,
        **{m: np.asarray([s[0] for s in st]) for m, st in stats.items()},
        **{f"{m}_ci95": np.asarray([s[1] for s in st]) for m, st in stats.items()},
    )
    palette = colormaps["tab20"].colors
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for i, (name, st) in enumerate(stats.items()):
        style = (
            dict(color="black", linestyle="--")
            if name == "random"
            else dict(color=palette[(2 * i + i // 10) % 20])
        )
        ax.plot(n, [s[0] for s in st], marker="o", markersize=3, label=name, **style)
    ax.set_xlabel("subset size n (patches removed)")
    ax.set_ylabel("sensitivity-n (Pearson)")
    ax.set_title(f"sensitivity-n ({settings['removal']} removal)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "sensitivity_n.png", dpi=110)


def _report(
    table: Dict[str, Dict[str, Tuple[float, float]]],
    columns: List[Tuple[str, str, str]],
    settings: dict,
    records: List[dict],
    reused: Optional[Tuple[int, int]],
    skipped: Dict[str, str],
    sizes: Sequence[int] = (),
    layers: Sequence[str] = (),
    protocol: Optional[str] = None,
) -> str:
    data, model = settings.get("data", {}), settings.get("model", {})
    scenes = data.get("source") == "embedded scenes"
    if scenes:
        what = f"{data.get('images')} held-out embedded Fashion-MNIST scenes"
    else:
        what = f"{data.get('images')} images of `{data.get('name') or 'the data'}`"
    target = "its label" if settings.get("target") == "label" else "the predicted class"
    removal = {
        "tokens": "dropping their tokens",
        "black": "black pixels",
        "mean": "each image's mean colour",
        "blur": "a blurred copy of the image",
        "uniform": "uniform noise",
    }.get(str(settings.get("removal")), str(settings.get("removal")))
    evaluator = (
        "the ViT Shapley surrogate (the classifier fine-tuned to missing patches)"
        if settings.get("evaluator") == "surrogate"
        else "the classifier"
    )
    amp = settings.get("amp") or "off"
    from ..models import weights_label  # "random weights (seed 0)", ...

    lines = [
        "# captum-vit evaluate",
        "",
        f"Model `{model.get('model')}` ({weights_label(model)}) on {what}; "
        f"each image explained for {target}; the removal metrics remove patches by "
        f"{removal} and read {evaluator}; AMP {amp}.",
        "",
    ]
    head = "| method | n | " + " | ".join(
        f"{h} {'↑' if b == 'higher' else '↓'}" for _, h, b in columns
    )
    lines += [head + " |", "|" + "---|" * (len(columns) + 2)]
    for name, row in table.items():
        cells = []
        for key, _, _ in columns:
            m, h = row[key]
            if key == "seconds":
                cells.append(format_mean_ci(m, h, significant=2))
            else:
                cells.append(format_mean_ci(m, h, decimals=3, max_decimals=6))
        lines.append(f"| {name} | {int(row['n'][0])} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "± is the half-width of the 95 % confidence interval of the mean over "
        "images (Student t); ↑ higher is better, ↓ lower is better.",
        "",
        "Columns:",
        "",
        f"- **n**: {COLUMN_DEFINITIONS['n']}.",
    ]
    first = next(iter(table), None)
    fill = _definition_values(settings, scenes, sizes, layers)
    for key, header, _ in columns:
        text = COLUMN_DEFINITIONS[key].format(**fill)
        if key in ("pointing", "randomization_spearman") and first is not None:
            n_have = _count_finite(records, key, first)
            text += f" (here {n_have} of {int(table[first]['n'][0])} images have it)"
        lines.append(f"- **{header}**: {text}.")
    lines += ["", *_protocol(settings, protocol)]
    if reused is not None:
        done, total = reused
        lines += [
            "",
            f"Resumed: {done} of {total} (method, image) results were reused from "
            f"records already in this folder; {total - done} were computed in this "
            "run.",
        ]
    if skipped:
        names = sorted(skipped)
        lines += [
            "",
            f"Skipped: {len(names)} unreadable image(s), left out of every column "
            f"(reasons in the records' `skipped` entries): {', '.join(names[:10])}"
            + (" ..." if len(names) > 10 else ""),
        ]
    return "\n".join(lines) + "\n"


def _percent(fractions: Sequence[float]) -> str:
    """``0 %, 50 %`` (at most five values, then an ellipsis and the last)."""
    vals = [f"{100 * f:.3g} %" for f in fractions]
    return ", ".join(vals if len(vals) <= 5 else vals[:3] + ["...", vals[-1]])


def _definition_values(
    settings: dict, scenes: bool, sizes: Sequence[int], layers: Sequence[str]
) -> Dict[str, str]:
    """The run's settings as they fill :data:`COLUMN_DEFINITIONS`."""
    cfg = EvalConfig(
        curve_steps=int(settings.get("curve_steps", 16)),
        sensitivity_sizes=int(settings.get("sensitivity_sizes", 9)),
    )
    mode = settings.get("non_target")
    if mode == "auto":
        mode = "distractor" if scenes else "random"
    non_target = {
        "distractor": "the distractor's class (a random other class, seeded by the "
        "image, where the distractor is the explained class)",
        "random": "one class other than the explained one per image, uniform, drawn "
        "with a seed made from the run's seed and the image's key",
        "all": "every class other than the explained one, averaged per image",
    }.get(str(mode), str(mode))
    rule = settings.get("pointing")
    pointing = {
        "first": "the single highest-saliency pixel of the map at the model input's "
        "resolution, ties broken by taking the first in row-major order (the "
        "reference codes' argmax; a patch-level map points at its top patch's "
        "top-left pixel) (Zhang et al. 2018; ViT-CX §4)",
        "random": "the single highest-saliency pixel, ties broken by a draw seeded "
        "by the image (Zhang et al. 2018; ViT-CX §4)",
        "any": "the patch-level variant: a hit when any pixel sharing the map's "
        "maximum lies inside (favours coarse maps; not the papers' rule)",
    }.get(str(rule), str(rule))
    tol = float(settings.get("pointing_tolerance") or 0.0)
    if tol > 0:
        pointing += f", with a tolerance of {tol:g} px around the ground truth"
    k = int(settings.get("randomization") or 0)
    return {
        "acc_fractions": _percent(cfg.accuracy_fractions()),
        "acc_target": (
            "the label"
            if settings.get("target") == "label"
            else "the original prediction (how often it survives)"
        ),
        "faith_samples": str(settings.get("faith_samples")),
        "sensitivity_samples": str(settings.get("sensitivity_samples")),
        "sensitivity_sizes": ", ".join(str(v) for v in sizes) or "(none)",
        "non_target": non_target,
        "road_units": ("pixels" if settings.get("road") == "pixels" else "patches"),
        "pointing_rule": pointing,
        "rand_layers": ", ".join(layers) if layers else "head, blocks, embedding",
        "rand_images": f"{k} image(s) spread evenly over the data",
    }


def _protocol(settings: dict, protocol: Optional[str] = None) -> List[str]:
    """The run's protocol (its preset, if any) next to the papers' settings."""
    s = settings
    scenes = s.get("data", {}).get("source") == "embedded scenes"
    rows = [
        (
            "removal",
            str(s.get("removal")),
            "tokens: ViT Shapley, SkipPLUS (true token masking); TIS: mean, blur, "
            "black and uniform pixels (`--removal`)",
        ),
        (
            "evaluator",
            str(s.get("evaluator")),
            "ViT Shapley §6.2: the fine-tuned surrogate for every method "
            "(`--evaluator surrogate`)",
        ),
        (
            "curve points",
            f"{int(s.get('curve_steps', 0)) + 1}",
            "ViT Shapley: one patch per step (`--curve-steps` = patches); TIS: 224 "
            "steps",
        ),
        (
            "faithfulness subsets",
            str(s.get("faith_samples")),
            "ViT Shapley: 1000 (`--faith-samples 1000`)",
        ),
        (
            "sensitivity-n",
            f"{s.get('sensitivity_sizes')} sizes × {s.get('sensitivity_samples')} "
            "subsets",
            "ViT Shapley: n = 14, 28, ..., 182 of 196 patches × 1000 subsets "
            "(`--sensitivity-sizes 13 --sensitivity-samples 1000`)",
        ),
        (
            "pointing",
            f"{s.get('pointing')}, {float(s.get('pointing_tolerance') or 0):g} px",
            "Zhang et al. 2018: the highest pixel, 15 px tolerance; ViT-CX, TIS: "
            "the highest pixel (`--pointing first`)",
        ),
        (
            "non-target class",
            str(s.get("non_target"))
            + (
                f" ({'distractor' if scenes else 'random'})"
                if s.get("non_target") == "auto"
                else ""
            ),
            "ViT Shapley Table 2: all other classes (`--non-target all`)",
        ),
        (
            "ROAD",
            str(s.get("road")),
            "Rong et al. 2022: pixels, accuracy; here patches and probability by "
            "default (`--road pixels`)",
        ),
        (
            "randomisation",
            f"{s.get('randomization')} image(s)",
            "Adebayo et al. 2018, ViT-CX App. B: cascading from the top layer "
            "(`--randomization N`)",
        ),
    ]
    preset = (
        f"the `{protocol}` preset (`--protocol {protocol}`)"
        if protocol
        else "no preset (options that match none of `--protocol "
        + "|".join(PROTOCOLS)
        + "`)"
    )
    out = [
        f"Protocol: {preset}. This run's settings, and the papers' with the options "
        "that reproduce them:",
        "",
        "| setting | this run | papers |",
        "|---|---|---|",
    ]
    out += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return out


def _count_finite(records: List[dict], key: str, method: str) -> int:
    """Non-NaN values of ``key`` in ``method``'s records."""
    return sum(
        1
        for r in records
        if r.get("method") == method
        for v in r.get(key, [])
        if not math.isnan(v)
    )


def _plot_curves(out: Path, curves: Dict[str, Dict[str, np.ndarray]], settings: dict):
    # a bare Figure draws without pyplot: the caller's matplotlib backend is untouched
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    steps = int(settings["curve_steps"])
    x = np.linspace(0, 1, steps + 1)
    np.savez(
        out / "curves.npz",
        fractions=x,
        road_fractions=np.asarray(ROAD_FRACTIONS),
        **{f"{m}_{d}": c[d] for m, c in curves.items() for d in c},
    )
    palette = colormaps["tab20"].colors
    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    for ax, d in zip(axes, ("insertion", "deletion")):
        for i, (name, c) in enumerate(curves.items()):
            if name == "random":  # the reference every method should beat
                style = dict(color="black", linestyle="--")
            else:
                style = dict(color=palette[(2 * i + i // 10) % 20])  # dark shades first
            ax.plot(x, c[d], label=name, **style)
        ax.set_title(f"{d} ({settings['removal']} removal)")
        ax.set_xlabel(
            "fraction of patches " + ("inserted" if d == "insertion" else "deleted")
        )
        ax.set_ylabel("probability of the explained class")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
