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
- ``curves.png`` and ``curves.npz``: the average insertion and deletion curves.

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
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from . import metrics
from ._jobs import (
    RecordStore,
    autocast,
    check_amp,
    check_job,
    chunks_of,
    image_seed,
    make_progress,
    note,
    plan,
    predicted,
    synchronize,
)
from .data import ItemDataset, SceneDataset
from .distributed import DistContext
from .methods import Method, MethodUnavailable, resolve_methods

#: Columns of the table: (key, header, better).
METRICS: List[Tuple[str, str, str]] = [
    ("insertion", "Insertion AUC", "higher"),
    ("deletion", "Deletion AUC", "lower"),
    ("aopc", "AOPC", "higher"),
    ("faithfulness", "Faithfulness corr.", "higher"),
    ("sensitivity_n", "Sensitivity-n", "higher"),
    ("pointing", "Pointing (main)", "higher"),
    ("pointing_distractor", "Pointing (distractor)", "higher"),
    ("seconds", "s / image", "lower"),
]

#: What each column measures (written under the table).
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
    "aopc": (
        "average drop of the probability below its value on the full image along "
        "the deletion curve (higher is better)"
    ),
    "faithfulness": (
        "Pearson correlation, over random patch subsets, between the subset's summed "
        "attribution and the probability drop when it is removed (Bhatt et al. 2020)"
    ),
    "sensitivity_n": (
        "the same correlation for subsets of exactly n patches (Ancona et al. 2018)"
    ),
    "pointing": (
        "share of images whose attribution maximum lies inside the ground truth of "
        "the explained object (Zhang et al. 2018; ties count as a hit if any tied "
        "pixel hits); images without boxes or masks are left out"
    ),
    "pointing_distractor": (
        "the same when explaining the distractor's class, scored against the "
        "distractor's box: high only for class-specific maps"
    ),
    "seconds": (
        "wall-clock seconds per image of the explanation alone (not the metrics), "
        "on this run's machine and device; timed per chunk, so its interval is over "
        "chunks"
    ),
}


@dataclass
class EvalConfig:
    """Settings of one evaluation run (stored with the records for resuming).

    Attributes:
        n: Number of images (embedded scenes to generate; for a user dataset the
            number of images it holds).
        seed: Seed of the scenes, of the metrics' random choices and of per-image
            seeds.
        removal: How metrics remove patches: ``tokens`` (token dropping) or a pixel
            baseline (``black``, ``mean``, ``blur``, ``uniform``).
        chunk: Images per batch and per record (the unit of resuming and of the
            split over processes).
        curve_steps: Points per insertion/deletion curve, minus one.
        faith_samples: Random subsets for the faithfulness correlation.
        sensitivity_n: Subset size of sensitivity-n.
        sensitivity_samples: Random subsets for sensitivity-n.
        tis_masks: TIS ``n_masks``.
        rise_masks: RISE ``n_masks``.
        n_steps: Integrated Gradients steps.
        target: ``"label"`` or ``"pred"`` (the model's predicted class).
        amp: ``None``, ``"bf16"`` or ``"fp16"``: autocast for the forward passes of
            perturbation methods and metrics.
    """

    n: int = 200
    seed: int = 1234
    removal: str = "tokens"
    chunk: int = 10
    curve_steps: int = 16
    faith_samples: int = 64
    sensitivity_n: int = 8
    sensitivity_samples: int = 64
    tis_masks: int = 1024
    rise_masks: int = 4000
    n_steps: int = 20
    target: str = "label"
    amp: Optional[str] = None

    def validate(self) -> None:
        """Raise ValueError naming the first setting out of range."""
        positive = ("n", "chunk", "curve_steps", "tis_masks", "rise_masks", "n_steps")
        for name in positive:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name}: expected a positive integer, got {v!r}")
        for name in ("faith_samples", "sensitivity_samples"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 2:
                raise ValueError(f"{name}: expected an integer >= 2, got {v!r}")
        if self.sensitivity_n <= 0:
            raise ValueError(f"sensitivity_n: expected >= 1, got {self.sensitivity_n}")
        if self.removal not in ("tokens", "black", "mean", "blur", "uniform"):
            raise ValueError(f"removal: unknown removal {self.removal!r}")
        if self.target not in ("label", "pred"):
            raise ValueError(f"target: expected 'label' or 'pred', got {self.target!r}")
        if self.amp not in (None, "bf16", "fp16"):
            raise ValueError(f"amp: expected None, 'bf16' or 'fp16', got {self.amp!r}")


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
            from .zoo import preprocess

            return preprocess(torch.zeros(1, 3, 1, 1))
        return preprocessing.normalise(torch.zeros(1, 3, 1, 1))
    return name


def _pointing(attr: Tensor, gt: Tensor, has_gt: Tensor) -> Tensor:
    """Pointing game against (B, H, W) ground-truth masks; NaN where there is none."""
    out = torch.full((attr.shape[0],), float("nan"))
    idx = has_gt.nonzero().flatten()
    if idx.numel():
        out[idx] = metrics.pointing_game(attr[idx].cpu(), masks=gt[idx].cpu()).float()
    return out


def _score_chunk(
    model: torch.nn.Module,
    explain: Callable[..., Tensor],
    method: Method,
    inputs: Tensor,
    target: Tensor,
    cfg: EvalConfig,
    removal: Any,
    seeds: Sequence[int],
    gt: Optional[Tuple[Tensor, Tensor]] = None,
    distractor: Optional[Tuple[Tensor, Tensor, Tensor]] = None,
) -> Dict[str, Any]:
    """Explain one chunk of images and score it with every metric."""
    device = inputs.device

    def method_amp():
        return autocast(device, cfg.amp) if method.perturbation else nullcontext()

    synchronize(device)
    t0 = time.perf_counter()
    with method_amp():
        attr = explain(inputs, target, seeds=seeds)
    synchronize(device)
    seconds = (time.perf_counter() - t0) / inputs.shape[0]
    attr = attr.detach().float()
    common = dict(removal=removal, seed=cfg.seed)
    fractions = [i / cfg.curve_steps for i in range(cfg.curve_steps + 1)]
    with autocast(device, cfg.amp):
        curves = metrics.insertion_deletion_curves(
            model, inputs, attr, target, fractions=fractions, **common
        )
        faith = metrics.faithfulness_correlation(
            model, inputs, attr, target, n_samples=cfg.faith_samples, **common
        )
        sens = metrics.sensitivity_n(
            model,
            inputs,
            attr,
            target,
            n=cfg.sensitivity_n,
            n_samples=cfg.sensitivity_samples,
            **common,
        )
    ins_curve, del_curve = curves.insertion.float(), curves.deletion.float()
    out = {
        "insertion": metrics.area_under_curve(curves.fractions, ins_curve),
        "deletion": metrics.area_under_curve(curves.fractions, del_curve),
        "aopc": (del_curve[:, :1] - del_curve).mean(dim=1),
        "faithfulness": faith.float(),
        "sensitivity_n": sens.float().reshape(inputs.shape[0], -1).mean(dim=1),
    }
    if gt is not None:
        out["pointing"] = _pointing(attr, *gt)
    if distractor is not None:
        d_target, d_gt, d_has = distractor
        with method_amp():
            attr_d = explain(inputs, d_target, seeds=seeds).detach().float()
        out["pointing_distractor"] = _pointing(attr_d, d_gt, d_has)
    rec: Dict[str, Any] = {
        k: [float(v) for v in t.detach().cpu()] for k, t in out.items()
    }
    rec["seconds"] = [seconds] * inputs.shape[0]
    rec["curve_insertion"] = ins_curve.mean(0).cpu().tolist()
    rec["curve_deletion"] = del_curve.mean(0).cpu().tolist()
    return rec


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
            images, or records of other settings in ``out_dir``.
        OSError: ``out_dir`` cannot be created or written.

    Examples::

        >>> table = run_evaluation("out/eval", ["rollout", "genatt"], EvalConfig(n=20))
        >>> table["genatt"]["insertion"]            # (mean, 95% CI half-width)
    """
    from .models import load_model

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
    out = writable_dir(out_dir)
    check_job(dataset, loaded.num_classes, cfg.target, ctx.world_size)
    settings = {
        "command": "evaluate",
        **asdict(cfg),
        "model": loaded.describe(),
        "data": dataset.describe(),
    }
    removal = _removal(cfg.removal, loaded.preprocessing)
    if isinstance(removal, Tensor):
        removal = removal.to(device)
    model_ = loaded.model
    extras: Dict[str, Any] = dict(loaded.extras)
    extras.update(
        tis_masks=cfg.tis_masks,
        rise_masks=cfg.rise_masks,
        n_steps=cfg.n_steps,
        show_progress=False,
    )
    built: Dict[str, Callable[..., Tensor]] = {}
    for method in chosen:
        try:
            built[method.name] = method.build(model_, extras)
        except MethodUnavailable as exc:
            if ctx.is_main:
                (log or print)(f"{method.name}: skipped ({exc})")
    by_name = {m.name: m for m in chosen}
    store = RecordStore(out, ctx.rank)
    chunks = chunks_of(len(dataset), cfg.chunk)
    work, reused, total = plan(ctx, store, settings, list(built), chunks)

    from .data import make_loader

    loader = make_loader(
        dataset, [w[1] for w in work], workers, pin_memory=device.type == "cuda"
    )
    bar = make_progress(
        sum(len(w[1]) for w in work),
        "evaluate" + (f" (rank 0 of {ctx.world_size})" if ctx.world_size > 1 else ""),
        show_progress and ctx.is_main,
    )
    job = _EvalJob(built, by_name, model_, cfg, removal, settings, store, dataset)
    try:
        for (start, positions, left), batch in zip(work, loader):
            job.run(batch, start, positions, left, log, bar)
            bar.update(len(positions))
    finally:
        bar.close()
    ctx.barrier()
    if not ctx.is_main:
        return None
    return write_tables(
        out, list(built), settings, reused=(reused, total) if reused else None
    )


@dataclass
class _EvalJob:
    """What stays the same for every chunk of one evaluation."""

    built: Dict[str, Callable[..., Tensor]]
    by_name: Dict[str, Method]
    model: torch.nn.Module
    cfg: EvalConfig
    removal: Any
    settings: dict
    store: RecordStore
    dataset: ItemDataset

    def run(self, batch: Dict[str, Any], start: int, positions, left, log, bar):
        """Score the pending methods ``left`` on one loaded chunk and append one
        record per method."""
        cfg, dataset = self.cfg, self.dataset
        device = next(self.model.parameters()).device
        ok = batch["ok"]
        skipped = {
            k: e for k, e, o in zip(batch["key"], batch["error"], ok.tolist()) if not o
        }
        for k, e in skipped.items():
            (log or note)(f"warning: skipped {k}: {e}")
        idx = ok.nonzero().flatten()
        keys = [batch["key"][int(i)] for i in idx]
        inputs = batch["image"][idx].to(device, non_blocking=True)
        if cfg.target == "label" or not keys:
            target = batch["label"][idx].to(device)
        else:
            target = predicted(self.model, inputs)
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
        for name in left:
            bar.set_postfix_str(name, refresh=False)
            t0 = time.time()
            rec: Dict[str, Any] = {}
            if keys:  # else every image of the chunk was unreadable
                rec = _score_chunk(
                    self.model,
                    self.built[name],
                    self.by_name[name],
                    inputs,
                    target,
                    cfg,
                    self.removal,
                    seeds,
                    gt,
                    distractor,
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


def write_tables(
    out: Path,
    method_names: List[str],
    settings: dict,
    reused: Optional[Tuple[int, int]] = None,
) -> Dict[str, Dict[str, Tuple[float, float]]]:
    """Aggregate the records (all ranks' files) into results.csv/.md and
    curves.png/.npz.

    Args:
        out: The output folder.
        method_names: Methods, in table order.
        settings: The run's settings (records of other settings are ignored).
        reused: ``(reused, requested)`` (method, image) results, for the report of a
            resumed run.

    Returns:
        ``{method: {metric: (mean, ci_half_width)}}`` (plus ``"n"``).
    """
    records = _dedupe(
        [r for r in RecordStore(out).read() if r.get("settings") == settings]
    )
    columns = [m for m in METRICS if any(m[0] in r for r in records)]
    table: Dict[str, Dict[str, Tuple[float, float]]] = {}
    curves: Dict[str, Dict[str, np.ndarray]] = {}
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
            sizes = [len(r["keys"]) for r in rows]
            mean = float(np.average(per_chunk, weights=sizes))
            table[name]["seconds"] = (mean, mean_ci(per_chunk)[1])
        weights = np.asarray([len(r["keys"]) for r in rows], dtype=np.float64)
        curves[name] = {
            d: np.average([r[f"curve_{d}"] for r in rows], axis=0, weights=weights)
            for d in ("insertion", "deletion")
        }
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
        _report(table, columns, settings, records, reused, skipped)
    )
    if curves:
        _plot_curves(out, curves, settings)
    return table


def _report(
    table: Dict[str, Dict[str, Tuple[float, float]]],
    columns: List[Tuple[str, str, str]],
    settings: dict,
    records: List[dict],
    reused: Optional[Tuple[int, int]],
    skipped: Dict[str, str],
) -> str:
    data, model = settings.get("data", {}), settings.get("model", {})
    if data.get("source") == "embedded scenes":
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
    amp = settings.get("amp") or "off"
    lines = [
        "# captum-vit evaluate",
        "",
        f"Model `{model.get('model')}` ({model.get('weights')} weights) on {what}; "
        f"each image explained for {target}; metrics remove patches by {removal}; "
        f"AMP {amp}.",
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
    for key, header, _ in columns:
        text = COLUMN_DEFINITIONS[key]
        if key == "sensitivity_n":
            text = text.replace(
                "n patches", f"n = {settings.get('sensitivity_n')} patches"
            )
        if key == "pointing" and table:
            first = next(iter(table))
            n_gt = _count_finite(records, "pointing", first)
            text += f" (here {n_gt} of {int(table[first]['n'][0])} images have it)"
        lines.append(f"- **{header}**: {text}.")
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
