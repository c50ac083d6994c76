"""The tables and plots of an evaluation: ``results.csv``, ``results.md`` (every
column defined, the protocol next to the papers'), ``curves.png``/``.npz``,
``sensitivity_n.png``/``.npz`` and ``randomization.npz``, made from the records; and
the number formats they use (:func:`mean_ci`, :func:`format_mean_ci`,
:func:`format_seconds`).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .._jobs import RecordStore
from ._config import COLUMN_DEFINITIONS, METRICS, PROTOCOLS, ROAD_FRACTIONS, EvalConfig


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


#: The version of the records' fields that this version writes and reads
#: (``"format"`` of every record; records without it are of an older version).
RECORD_FORMAT = 1


def gallery_dir(out: Path, position: int) -> Path:
    """The folder of the gallery image at dataset ``position`` of a run in
    ``out``: its picture, what it shows, and one map per method."""
    return Path(out) / "gallery" / f"{int(position):06d}"


#: Mean curves kept per record (``curve_<name>``), saved in ``curves.npz``.
CURVES = (
    "insertion",
    "deletion",
    "insertion_nontarget",
    "deletion_nontarget",
    "road_morf",
    "road_lerf",
)


@dataclass
class Aggregate:
    """What the tables, plots and the HTML page of a run are made of: its records
    (of its settings, one per (method, chunk)) summed up per method."""

    records: List[dict]
    #: the catalogue's columns that the records hold: (key, header, better)
    columns: List[Tuple[str, str, str]]
    #: ``{method: {column: (mean, ci_half_width)}}`` plus ``"n"``
    table: Dict[str, Dict[str, Tuple[float, float]]]
    #: ``{method: {curve: mean curve}}`` (:data:`CURVES`)
    curves: Dict[str, Dict[str, np.ndarray]]
    #: ``{method: (images, sizes) sensitivity-n curves}``
    sens: Dict[str, np.ndarray]
    sizes: List[int]
    #: ``{method: {"spearman"|"ssim": (images, steps)}}``
    rand: Dict[str, Dict[str, np.ndarray]]
    layers: List[str]
    #: ``{image key: reason}`` of unreadable images
    skipped: Dict[str, str]


def aggregate(out: Path, method_names: List[str], settings: dict) -> Aggregate:
    """Sum up the records of ``out`` (all ranks' files) made with ``settings``.

    Args:
        out: The run folder.
        method_names: Methods, in table order (methods without records are left
            out).
        settings: The run's settings (records of other settings are ignored).
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
    return Aggregate(
        records, columns, table, curves, sens, list(sizes), rand, list(layers), skipped
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
    agg = aggregate(out, method_names, settings)
    table, columns, records = agg.table, agg.columns, agg.records
    curves, sens, rand = agg.curves, agg.sens, agg.rand
    sizes, layers, skipped = agg.sizes, agg.layers, agg.skipped
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


def summary(settings: dict) -> str:
    """The run in one sentence (markdown): model, data, explained class, removal,
    evaluator and AMP."""
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

    return (
        f"Model `{model.get('model')}` ({weights_label(model)}) on {what}; "
        f"each image explained for {target}; the removal metrics remove patches by "
        f"{removal} and read {evaluator}; AMP {amp}."
    )


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
    data = settings.get("data", {})
    scenes = data.get("source") == "embedded scenes"
    lines = ["# captum-vit evaluate", "", summary(settings), ""]
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
            elif key == "infidelity":  # a squared error: any scale, 0 is best
                cells.append(format_mean_ci(m, h, significant=3, max_decimals=12))
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
        if (
            key
            in (
                "pointing",
                "randomization_spearman",
                "energy_pointing",
                "segmentation_f1",
                "grid_pointing",
            )
            and first is not None
        ):
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
    infid = str(settings.get("infidelity") or "square")
    samples = settings.get("infidelity_samples")
    infidelity_rule = {
        "square": f"{samples} random squares of patches removed per image (Yeh et "
        "al.'s square removal on the patch grid; side a quarter of the grid's, at "
        "least one patch; removed as the other removal metrics remove patches)",
        "noise": f"{samples} Gaussian perturbations per image, every patch shifted "
        "by its own N(0, 0.1²) amount in the model's input units",
    }.get(infid, infid)
    n = int(settings.get("grid_pointing") or 0)
    return {
        "infidelity_rule": infidelity_rule,
        "grid_rule": f"a {n} x {n} grid of the data's images of {n * n} distinct "
        "classes at the model's input size (each image shrunk by "
        f"{n}; its cell and the other images drawn with a seed made from the "
        "run's seed and the image's key)",
        "grid_chance": f"1/{n * n}" if n else "1/n²",
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


def protocol_rows(settings: dict) -> List[Tuple[str, str, str]]:
    """``(setting, this run, the papers')`` rows of the run's protocol (markdown)."""
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
        (
            "infidelity",
            (
                f"{s.get('infidelity')}, {s.get('infidelity_samples')} perturbations"
                if s.get("infidelity", "off") != "off"
                else "off"
            ),
            "Yeh et al. 2019: square removal and Gaussian noise; Captum's default: "
            "10 perturbations (`--infidelity noise`, `--infidelity-samples N`)",
        ),
        (
            "grid pointing",
            (
                f"{s.get('grid_pointing')} x {s.get('grid_pointing')} grids"
                if s.get("grid_pointing")
                else "off"
            ),
            "Böhle et al. 2021, Rao et al. 2022: grids of images of distinct "
            "classes that the model classifies confidently; here any labelled "
            "images, each shrunk to its cell of the model's input "
            "(`--grid-pointing N`)",
        ),
    ]
    return rows


def preset_line(protocol: Optional[str]) -> str:
    """Which preset the settings follow, in words (markdown)."""
    return (
        f"the `{protocol}` preset (`--protocol {protocol}`)"
        if protocol
        else "no preset (options that match none of `--protocol "
        + "|".join(PROTOCOLS)
        + "`)"
    )


def _protocol(settings: dict, protocol: Optional[str] = None) -> List[str]:
    """The run's protocol (its preset, if any) next to the papers' settings."""
    out = [
        f"Protocol: {preset_line(protocol)}. This run's settings, and the papers' "
        "with the options that reproduce them:",
        "",
        "| setting | this run | papers |",
        "|---|---|---|",
    ]
    out += [f"| {a} | {b} | {c} |" for a, b, c in protocol_rows(settings)]
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
