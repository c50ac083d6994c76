"""The summary table at the top of ``benchmarks/RESULTS.md``: every method against the
five columns people cite, for each removal of an ``evaluate`` run.

Columns: Insertion − Deletion, Deletion, faithfulness correlation, the pointing game
(main object) and seconds per image, each as mean ± the half-width of its 95 %
Student-t interval over the images. Per column the best mean is marked ★ (the random
baseline is a reference row, never marked), and every
method whose paired difference with the best one (the same images, see
``paper_claims.py``) has an interval containing zero is marked ≈ ("level with the
best"); the pairing is ``captum_vit.evaluate._pairs``, the one the HTML report and
``paper_claims.py`` use.

Usage::

    python benchmarks/summary.py RUN_DIR [RUN_DIR ...]   # one table per run
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from captum_vit._jobs import RecordStore
from captum_vit.evaluate._pairs import PerImage, latest_records, paired, per_image
from captum_vit.evaluate._report import format_mean_ci, mean_ci

__all__ = ["COLUMNS", "summarise", "table"]

#: (record key, header, +1 when higher is better, -1 when lower is better)
COLUMNS: List[Tuple[str, str, int]] = [
    ("ins_minus_del", "Insertion − Deletion ↑", 1),
    ("deletion", "Deletion ↓", -1),
    ("faithfulness", "Faithfulness ↑", 1),
    ("pointing", "Pointing ↑", 1),
    ("seconds", "s / image ↓", -1),
]

#: Reference rows, never marked best (the random map is the fastest by far)
REFERENCES = ("random",)

#: a cell: (mean, half-width, mark) with mark "★" (best), "≈" (level with it) or ""
Cell = Tuple[float, float, str]


def _mean(values: Dict[str, float]) -> Tuple[float, float]:
    finite = [v for v in values.values() if math.isfinite(v)]
    if not finite:
        return float("nan"), float("nan")
    return mean_ci(np.asarray(finite, dtype=np.float64))


def summarise(data: PerImage) -> Dict[str, Dict[str, Cell]]:
    """``{method: {column: (mean, half, mark)}}`` for the methods of ``data``."""
    out: Dict[str, Dict[str, Cell]] = {m: {} for m in data}
    for key, _, sign in COLUMNS:
        means = {m: _mean(data[m].get(key, {})) for m in data}
        ranked = [m for m in data if m not in REFERENCES and math.isfinite(means[m][0])]
        best = max(ranked, key=lambda m: sign * means[m][0]) if ranked else None
        for m in data:
            mark = ""
            if best is not None and m == best:
                mark = "★"
            elif (
                best is not None and m not in REFERENCES and math.isfinite(means[m][0])
            ):
                got = paired(data[best].get(key, {}), data[m].get(key, {}), sign)
                if got is not None and got.diff - got.half <= 0:
                    mark = "≈"  # the best is not clearly ahead of it
            out[m][key] = (means[m][0], means[m][1], mark)
    return out


def table(cells: Dict[str, Dict[str, Cell]], order: Optional[Sequence[str]]) -> str:
    """The markdown table of :func:`summarise`'s cells, methods in ``order`` (default:
    by Insertion − Deletion, best first)."""
    methods = (
        list(order)
        if order
        else sorted(cells, key=lambda m: -_finite(cells[m]["ins_minus_del"][0]))
    )
    lines = [
        "| method | " + " | ".join(h for _, h, _ in COLUMNS) + " |",
        "|---|" + "---|" * len(COLUMNS),
    ]
    for m in methods:
        texts = []
        for key, _, _ in COLUMNS:
            mean, half, mark = cells[m][key]
            sig = dict(significant=2) if key == "seconds" else dict(decimals=3)
            text = format_mean_ci(mean, half, **sig) if math.isfinite(mean) else "–"
            texts.append(f"**{text} ★**" if mark == "★" else f"{text} {mark}".strip())
        lines.append(f"| {m} | " + " | ".join(texts) + " |")
    return "\n".join(lines) + "\n"


def _finite(x: float) -> float:
    return x if math.isfinite(x) else -math.inf


def run_data(run: Path) -> PerImage:
    """Per-image values of the summary's columns in a run folder's records."""
    records = latest_records(RecordStore(run).read())
    return per_image(records, [key for key, _, _ in COLUMNS])


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="evaluate output folders")
    args = p.parse_args(argv)
    for run in args.runs:
        if not RecordStore(run).files():
            print(f"{run}: no records*.jsonl here", file=sys.stderr)
            return 2
        data = run_data(run)
        n = min((len(v.get("ins_minus_del", {})) for v in data.values()), default=0)
        print(f"\n{run} ({len(data)} methods, at least {n} images each)\n")
        print(table(summarise(data), None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
