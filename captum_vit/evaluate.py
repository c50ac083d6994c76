"""Benchmark tables: every method scored by every metric on held-out embedded scenes.

:func:`run_evaluation` explains ``n`` held-out Fashion-MNIST scenes with each method
(the main item's class, and for class specificity also the distractor's class), scores
the maps with :mod:`captum_vit.metrics`, and writes

- ``records.jsonl``: one line per (method, chunk of scenes) with per-image values, so an
  interrupted run resumes from what it already wrote;
- ``results.csv`` and ``results.md``: mean and 95% confidence interval (Student t) per
  method and metric;
- ``curves.png`` and ``curves.npz``: the average insertion and deletion curves.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from . import metrics
from .methods import Method, MethodUnavailable, default_model_extras, resolve_methods

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


@dataclass
class EvalConfig:
    """Settings of one evaluation run (stored with the records for resuming)."""

    n: int = 200
    seed: int = 1234
    removal: str = "tokens"
    chunk: int = 10
    curve_steps: int = 16
    faith_samples: int = 64
    sensitivity_n: int = 8
    sensitivity_samples: int = 64
    tis_masks: int = 1024
    n_steps: int = 20


def writable_dir(path: str) -> Path:
    """Create ``path`` if needed and check that a file can be written in it.

    Raises:
        OSError: the folder cannot be created or written.
    """
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    probe = out / ".write_test"
    probe.write_text("ok")
    probe.unlink()
    return out


def _removal(name: str):
    """The metrics' ``removal`` for the embedded model: ``None`` drops tokens; pixel
    baselines are meant in image space, so ``"black"`` is the *normalised* value of
    a black pixel (the metrics' own ``"black"`` is 0 in model-input space, which is
    mid-grey for this model's mean = std = 0.5 normalisation)."""
    if name == "tokens":
        return None
    if name == "black":
        from .zoo import preprocess

        return preprocess(torch.zeros(1, 3, 1, 1))
    return name


def _score_chunk(
    model: torch.nn.Module,
    explain: Callable[[Tensor, Tensor], Tensor],
    inputs: Tensor,
    labels: Tensor,
    distractors: Tensor,
    boxes: Tensor,
    cfg: EvalConfig,
) -> Dict[str, List[float]]:
    """Explain one chunk of scenes and score it with every metric."""
    removal = _removal(cfg.removal)
    t0 = time.perf_counter()
    attr = explain(inputs, labels)
    seconds = (time.perf_counter() - t0) / inputs.shape[0]
    attr_d = explain(inputs, distractors)
    attr, attr_d = attr.detach(), attr_d.detach()
    common = dict(removal=removal, seed=cfg.seed)
    fractions = [i / cfg.curve_steps for i in range(cfg.curve_steps + 1)]
    curves = metrics.insertion_deletion_curves(
        model, inputs, attr, labels, fractions=fractions, **common
    )
    ins = metrics.area_under_curve(curves.fractions, curves.insertion)
    dele = metrics.area_under_curve(curves.fractions, curves.deletion)
    aopc = (curves.deletion[:, :1] - curves.deletion).mean(dim=1)
    faith = metrics.faithfulness_correlation(
        model, inputs, attr, labels, n_samples=cfg.faith_samples, **common
    )
    sens = metrics.sensitivity_n(
        model,
        inputs,
        attr,
        labels,
        n=cfg.sensitivity_n,
        n_samples=cfg.sensitivity_samples,
        **common,
    )
    point = metrics.pointing_game(attr, boxes=boxes[:, :1])
    point_d = metrics.pointing_game(attr_d, boxes=boxes[:, 1:])
    out = {
        "insertion": ins,
        "deletion": dele,
        "aopc": aopc,
        "faithfulness": faith,
        "sensitivity_n": sens.reshape(inputs.shape[0], -1).mean(dim=1),
        "pointing": point,
        "pointing_distractor": point_d,
    }
    rec = {k: [float(v) for v in t.detach().cpu()] for k, t in out.items()}
    rec["seconds"] = [seconds] * inputs.shape[0]
    rec["curve_insertion"] = curves.insertion.mean(0).tolist()
    rec["curve_deletion"] = curves.deletion.mean(0).tolist()
    return rec


def _read_records(path: Path) -> List[dict]:
    if not path.exists():
        return []
    out = []
    with path.open() as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by an interruption
                continue
    return out


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
    show_progress: bool = True,
    log: Callable[[str], None] = print,
) -> Dict[str, Dict[str, Tuple[float, float]]]:
    """Score methods on held-out embedded scenes and write the tables.

    Args:
        out_dir: Output directory (created; must be writable). Records already in it
            for the same settings are reused, so an interrupted run resumes.
        methods: Method names (default: all, see :mod:`captum_vit.methods`).
        cfg: Settings (:class:`EvalConfig`).
        show_progress: Print one line per finished chunk.
        log: Where progress lines go.

    Returns:
        ``{method: {metric: (mean, ci_half_width)}}``.

    Raises:
        ValueError: unknown method names or ``cfg.n <= 0``.
        OSError: ``out_dir`` cannot be created or written.
    """
    from . import zoo

    cfg = cfg or EvalConfig()
    if cfg.n <= 0:
        raise ValueError(f"n: expected a positive number of scenes, got {cfg.n}")
    chosen: List[Method] = resolve_methods(methods)
    out = writable_dir(out_dir)

    default = zoo.load_default_model()
    model = default.model
    extras: Dict[str, object] = {"tis_masks": cfg.tis_masks, "n_steps": cfg.n_steps}
    extras.update(default_model_extras())
    scenes = zoo.make_scenes(cfg.n, split="test", seed=cfg.seed)
    inputs = default.preprocess(scenes.images)
    labels = torch.as_tensor(scenes.labels).long()
    distractors = torch.as_tensor(scenes.distractor_labels).long()
    boxes = torch.as_tensor(scenes.boxes).long()

    records_path = out / "records.jsonl"
    settings = asdict(cfg)
    done = {
        (r["method"], r["start"])
        for r in _read_records(records_path)
        if r.get("settings") == settings
    }
    with records_path.open("a") as fh:
        for method in chosen:
            try:
                explain = method.build(model, extras)
            except MethodUnavailable as exc:
                log(f"{method.name}: skipped ({exc})")
                continue
            for start in range(0, cfg.n, cfg.chunk):
                if (method.name, start) in done:
                    continue
                sl = slice(start, min(start + cfg.chunk, cfg.n))
                rec = _score_chunk(
                    model,
                    explain,
                    inputs[sl],
                    labels[sl],
                    distractors[sl],
                    boxes[sl],
                    cfg,
                )
                rec.update(method=method.name, start=start, settings=settings)
                fh.write(json.dumps(rec) + "\n")
                fh.flush()
                if show_progress:
                    log(
                        f"{method.name}: scenes {sl.start}-{sl.stop - 1} done "
                        f"({rec['seconds'][0]:.2f} s/image)"
                    )
    return write_tables(out, [m.name for m in chosen], settings)


def write_tables(
    out: Path, method_names: List[str], settings: dict
) -> Dict[str, Dict[str, Tuple[float, float]]]:
    """Aggregate ``records.jsonl`` into results.csv/.md and curves.png/.npz."""
    records = [
        r for r in _read_records(out / "records.jsonl") if r.get("settings") == settings
    ]
    table: Dict[str, Dict[str, Tuple[float, float]]] = {}
    curves: Dict[str, Dict[str, np.ndarray]] = {}
    for name in method_names:
        rows = sorted(
            (r for r in records if r["method"] == name), key=lambda r: r["start"]
        )
        if not rows:
            continue
        table[name] = {
            key: mean_ci([v for r in rows for v in r[key]]) for key, _, _ in METRICS
        }
        weights = np.asarray([len(r["insertion"]) for r in rows], dtype=np.float64)
        curves[name] = {
            d: np.average([r[f"curve_{d}"] for r in rows], axis=0, weights=weights)
            for d in ("insertion", "deletion")
        }
        table[name]["n"] = (float(weights.sum()), float("nan"))
    with (out / "results.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            ["method", "n"] + [f"{k}{s}" for k, _, _ in METRICS for s in ("", "_ci95")]
        )
        for name, row in table.items():
            w.writerow(
                [name, int(row["n"][0])]
                + [f"{x:.6g}" for k, _, _ in METRICS for x in row[k]]
            )
    head = "| method | n | " + " | ".join(
        f"{h} {'↑' if b == 'higher' else '↓'}" for _, h, b in METRICS
    )
    lines = [head + " |", "|" + "---|" * (len(METRICS) + 2)]
    for name, row in table.items():
        cells = []
        for key, _, _ in METRICS:
            m, h = row[key]
            fmt = "{:.2g}" if key == "seconds" else "{:.3f}"
            cells.append(
                fmt.format(m) + ("" if math.isnan(h) else " ± " + fmt.format(h))
            )
        lines.append(f"| {name} | {int(row['n'][0])} | " + " | ".join(cells) + " |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    if curves:
        _plot_curves(out, curves, settings)
    return table


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
