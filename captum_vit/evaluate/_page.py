"""``report.html``: one self-contained page of an evaluation, made from its records.

The page holds the run's settings next to the papers' protocols, the table (every
method × every column of the records, mean ± 95 % interval, sortable, each column's
best marked and the methods level with it by the paired interval of
:mod:`._pairs`), a paired-difference matrix per column, the insertion/deletion,
non-target, ROAD and sensitivity-n curves as inline SVG, and the gallery of the
run's sample of images (``gallery/<position>/``, kept by the job) with every
method's map and the image's own scores. Nothing is recomputed: :func:`rebuild`
(``captum-vit report DIR``) writes the same page from a finished or resumed run's
folder.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .._html import (
    class_label,
    image_card,
    map_card,
    method_signed,
    palette,
    render,
    short,
    svg,
    write_text,
)
from .._jobs import RecordStore
from ._config import COLUMN_DEFINITIONS, ROAD_FRACTIONS
from ._pairs import PerImage, latest_records, paired, per_image, verdict
from ._report import (
    RECORD_FORMAT,
    Aggregate,
    _definition_values,
    aggregate,
    format_mean_ci,
    preset_line,
    protocol_rows,
    summary,
)

#: The page's file name in the run folder.
PAGE = "report.html"

#: What a paired verdict means in the matrix (row method against column method).
VERDICTS = {
    "reproduced": ("ahead", "the row's method is better (the interval excludes 0)"),
    "reversed": ("behind", "the row's method is worse (the interval excludes 0)"),
    "level": ("level", "level: the paired interval includes 0"),
}


def write_page(
    out: Path, agg: Aggregate, settings: dict, protocol: Optional[str]
) -> Path:
    """Write ``out/report.html`` from a run's aggregate; returns its path."""
    path = Path(out) / PAGE
    write_text(path, page(Path(out), agg, settings, protocol))
    return path


def rebuild(out: str) -> Path:
    """Write ``out/report.html`` again from the records of the run in ``out``,
    without recomputing anything (``captum-vit report``).

    Raises:
        ValueError: one line: ``out`` is no folder, holds no evaluate run, or
            holds records of another captum-vit version.
    """
    folder = Path(out)
    if not folder.is_dir():
        raise ValueError(f"{out}: no such folder")
    records = [
        r
        for r in RecordStore(folder).read()
        if isinstance(r.get("settings"), dict)
        and r["settings"].get("command") == "evaluate"
    ]
    if not records:
        raise ValueError(
            f"{out}: holds no evaluate run (no evaluate records*.jsonl); run "
            f"captum-vit evaluate --out {out} first"
        )
    records = latest_records(records)
    ours = [r for r in records if r.get("format") == RECORD_FORMAT]
    if not ours:
        found = sorted({str(r.get("format", "none")) for r in records})
        raise ValueError(
            f"{out}: its records are of another captum-vit version (record format "
            f"{', '.join(found)}; this version reads format {RECORD_FORMAT}); run "
            "captum-vit evaluate again with this version, into another --out"
        )
    settings = ours[-1]["settings"]
    methods = list(ours[-1].get("methods") or [])
    methods += [r["method"] for r in records if r["method"] not in methods]
    methods = list(dict.fromkeys(methods))
    agg = aggregate(folder, methods, settings)
    return write_page(folder, agg, settings, ours[-1].get("protocol"))


def page(out: Path, agg: Aggregate, settings: dict, protocol: Optional[str]) -> str:
    """The page's HTML (the same text for the same records)."""
    scenes = settings.get("data", {}).get("source") == "embedded scenes"
    fill = _definition_values(settings, scenes, agg.sizes, agg.layers)
    columns = [
        {
            "key": key,
            "header": header,
            "better": better,
            "arrow": "↑" if better == "higher" else "↓",
            "definition": COLUMN_DEFINITIONS.get(key, header).format(**fill),
        }
        for key, header, better in agg.columns
    ]
    data = per_image(agg.records, [c["key"] for c in columns])
    methods = list(agg.table)
    return render(
        "report.html.j2",
        summary=summary(settings),
        preset=preset_line(protocol),
        protocol_rows=protocol_rows(settings),
        n_definition=COLUMN_DEFINITIONS["n"],
        columns=columns,
        rows=_rows(agg, columns, data),
        matrices=_matrices(methods, columns, data),
        verdicts=VERDICTS,
        plots=_plots(agg, settings),
        gallery=_gallery(out, agg, columns, data),
        skipped=sorted(agg.skipped),
        settings=_flat(settings),
    )


def _flat(settings: dict, prefix: str = "") -> List[Tuple[str, str]]:
    """Every setting of the run as ``(name, value)``, nested ones as ``a.b``."""
    out: List[Tuple[str, str]] = []
    for k, v in settings.items():
        if isinstance(v, dict):
            out += _flat(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", v if isinstance(v, str) else json.dumps(v)))
    return out


def _cell_text(key: str, mean: float, half: float) -> str:
    if key == "seconds":
        return format_mean_ci(mean, half, significant=2)
    return format_mean_ci(mean, half, decimals=3, max_decimals=6)


def _sign(better: str) -> int:
    return 1 if better == "higher" else -1


def _best(agg: Aggregate, key: str, better: str) -> List[str]:
    """The methods with the best mean of a column (all of them on a tie)."""
    means = {
        m: row[key][0] for m, row in agg.table.items() if math.isfinite(row[key][0])
    }
    if not means:
        return []
    top = max(_sign(better) * v for v in means.values())
    return [m for m, v in means.items() if _sign(better) * v == top]


def _rows(
    agg: Aggregate, columns: List[Dict[str, Any]], data: PerImage
) -> List[Dict[str, Any]]:
    """The table's rows: each cell's mean, interval, text and marks."""
    best = {c["key"]: _best(agg, c["key"], c["better"]) for c in columns}
    level: Dict[str, set] = {}
    for c in columns:
        key, won = c["key"], best[c["key"]]
        level[key] = set()
        if not won:
            continue
        for m in agg.table:
            if m in won:
                continue
            got = paired(
                data.get(won[0], {}).get(key, {}),
                data.get(m, {}).get(key, {}),
                _sign(c["better"]),
            )
            if got is not None and verdict(got.diff, got.half) == "level":
                level[key].add(m)
    rows = []
    for name, row in agg.table.items():
        cells = []
        for c in columns:
            mean, half = row[c["key"]]
            cells.append(
                {
                    "key": c["key"],
                    "mean": repr(float(mean)),
                    "half": repr(float(half)),
                    "text": _cell_text(c["key"], mean, half),
                    "best": name in best[c["key"]],
                    "level": name in level[c["key"]],
                }
            )
        rows.append({"method": name, "n": int(row["n"][0]), "cells": cells})
    return rows


def _matrices(
    methods: List[str], columns: List[Dict[str, Any]], data: PerImage
) -> List[Dict[str, Any]]:
    """Per column, the method × method matrix of paired differences (row minus
    column, signed so that > 0 means the row's method is better)."""
    out = []
    for c in columns:
        key, sign = c["key"], _sign(c["better"])
        grid = []
        for a in methods:
            cells = []
            for b in methods:
                if a == b:
                    cells.append({"text": "", "verdict": "self", "title": ""})
                    continue
                got = paired(
                    data.get(a, {}).get(key, {}), data.get(b, {}).get(key, {}), sign
                )
                if got is None:
                    cells.append(
                        {"text": "n/a", "verdict": "none", "title": "under 2 images"}
                    )
                    continue
                v = verdict(got.diff, got.half)
                half = "n/a" if not math.isfinite(got.half) else f"{got.half:.2g}"
                cells.append(
                    {
                        "text": f"{got.diff:+.3g} ± {half}",
                        "verdict": VERDICTS[v][0],
                        "title": f"{a} vs {b}: {VERDICTS[v][1]}; {got.n} images, "
                        f"{a} ahead on {got.share:.0%}",
                    }
                )
            grid.append({"method": a, "cells": cells})
        out.append({"key": key, "header": c["header"], "grid": grid})
    return out


def _plots(agg: Aggregate, settings: dict) -> List[Dict[str, str]]:
    """The curves as inline SVG: insertion/deletion (and their non-target and ROAD
    variants when the run has them) and sensitivity-n."""
    from matplotlib.figure import Figure

    names = list(agg.table)
    style = palette(names)
    removal = settings.get("removal")
    plots = []
    steps = int(settings.get("curve_steps", 1))
    x = np.linspace(0, 1, steps + 1)
    groups: List[Tuple[str, Tuple[str, str], Sequence[float], str, str]] = [
        (
            "Insertion and deletion",
            ("insertion", "deletion"),
            x,
            "fraction of patches inserted / deleted",
            "probability of the explained class",
        ),
        (
            "Insertion and deletion of a non-target class",
            ("insertion_nontarget", "deletion_nontarget"),
            x,
            "fraction of patches inserted / deleted",
            "probability of the non-target class",
        ),
        (
            "ROAD (most / least relevant first)",
            ("road_morf", "road_lerf"),
            ROAD_FRACTIONS,
            f"fraction of {settings.get('road')} removed",
            "probability of the explained class",
        ),
    ]
    for title, pair, xs, xlabel, ylabel in groups:
        have = [m for m in names if all(d in agg.curves.get(m, {}) for d in pair)]
        if not have:
            continue
        fig = Figure(figsize=(10, 3.8))
        axes = fig.subplots(1, 2)
        for ax, d in zip(axes, pair):
            for m in have:
                ax.plot(xs, agg.curves[m][d], label=m, **style[m])
            ax.set_title(f"{d} ({removal} removal)", fontsize=10)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
        axes[1].legend(fontsize=7, ncol=2)
        fig.tight_layout()
        plots.append({"title": title, "svg": svg(fig)})
    if agg.sens:
        fig = Figure(figsize=(6.5, 3.8))
        ax = fig.subplots()
        for m in [m for m in names if m in agg.sens]:
            v = agg.sens[m]
            mean = [np.nanmean(v[:, j]) for j in range(v.shape[1])]
            ax.plot(agg.sizes, mean, marker="o", markersize=3, label=m, **style[m])
        ax.set_xlabel("subset size n (patches removed)")
        ax.set_ylabel("sensitivity-n (Pearson)")
        ax.set_title(f"sensitivity-n ({removal} removal)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        plots.append({"title": "Sensitivity-n", "svg": svg(fig)})
    return plots


def _gallery(
    out: Path, agg: Aggregate, columns: List[Dict[str, Any]], data: PerImage
) -> List[Dict[str, Any]]:
    """The gallery's rows: the image and every method's map over it, with the
    image's own scores (only images whose records are the run's)."""
    from PIL import Image

    keys = {k for r in agg.records for k in r.get("keys", [])}
    rows = []
    folder = out / "gallery"
    for sub in sorted(folder.iterdir()) if folder.is_dir() else []:
        meta_path = sub / "meta.json"
        if not meta_path.is_file() or not (sub / "image.png").is_file():
            continue
        meta = json.loads(meta_path.read_text())
        key = meta.get("key")
        if key not in keys:
            continue
        image = np.asarray(Image.open(sub / "image.png").convert("RGB"))
        names = {int(k): v for k, v in meta.get("class_names", {}).items()}

        def label(c: Optional[int]) -> str:
            if c is None or c < 0:
                return "unknown"
            return names.get(c, class_label([], c))

        lines = []
        if meta.get("label", -1) >= 0:
            lines.append(f"true: {label(meta['label'])}")
        lines.append(
            f"explained: {label(meta['target'])} "
            f"(p = {meta['target_probability']:.2f})"
        )
        lines.append(
            f"predicted: {label(meta['prediction'])} "
            f"(p = {meta['prediction_probability']:.2f})"
        )
        cards = [image_card(key, image, lines)]
        scores = []
        for m in agg.table:
            npy = sub / f"{m}.npy"
            if not npy.is_file():
                continue
            att = np.load(npy).astype(np.float32)
            cards.append(map_card(m, image, att, method_signed(m, [att])))
            scores.append(
                {
                    "method": m,
                    "cells": [
                        short(data.get(m, {}).get(c["key"], {}).get(key, math.nan))
                        for c in columns
                    ],
                }
            )
        rows.append({"key": key, "cards": cards, "scores": scores})
    return rows
