"""Paired comparisons of two methods on the same images.

Every method of an evaluation is scored on the same images, so two methods whose own
95 % intervals overlap can still differ clearly. :func:`paired` pairs the per-image
values of two methods and gives the mean paired difference with its 95 % Student-t
interval; :func:`verdict` reads it (``"reproduced"``: the first is ahead,
``"reversed"``: the second is, ``"level"``: the data cannot tell them
apart). The HTML report marks the
methods level with each column's best with it, and ``benchmarks/paper_claims.py``
checks the papers' orderings with it.
"""

from __future__ import annotations

import math
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence

import numpy as np

from ._report import _dedupe, mean_ci

#: ``{method: {metric: {image key: value}}}``
PerImage = Dict[str, Dict[str, Dict[str, float]]]


class Paired(NamedTuple):
    """A paired comparison of methods A and B over the images both have."""

    mean_a: float
    mean_b: float
    diff: float  #: mean of ``direction * (a - b)``: > 0 when A is ahead
    half: float  #: half-width of its 95 % Student-t interval
    share: float  #: share of images where A is strictly ahead
    n: int  #: images paired


def latest_records(records: Sequence[dict]) -> List[dict]:
    """The records of the latest settings (those of the last record), the first
    record of a (method, chunk) pair winning, as in the run's own tables."""
    settings = records[-1].get("settings") if records else None
    return _dedupe([r for r in records if r.get("settings") == settings])


def per_image(records: Iterable[dict], metrics: Iterable[str]) -> PerImage:
    """``{method: {metric: {image key: value}}}`` of the given records (one value
    per image key; records without images or with a value list of another length are
    left out)."""
    wanted = list(metrics)
    out: PerImage = {}
    for rec in records:
        if not rec.get("keys"):
            continue
        by_metric = out.setdefault(rec["method"], {})
        for metric in wanted:
            values = rec.get(metric)
            if values is None or len(values) != len(rec["keys"]):
                continue
            by_metric.setdefault(metric, {}).update(zip(rec["keys"], values))
    return out


def paired(
    a: Dict[str, float], b: Dict[str, float], direction: int
) -> Optional[Paired]:
    """Means of a and b, the mean of ``direction * (a - b)``, its 95 % half-width
    and the share of images where a is strictly ahead, over the images where both
    are finite; None when fewer than two images pair up.

    Args:
        a: ``{image key: value}`` of method A.
        b: The same of method B.
        direction: +1 when higher is better, -1 when lower is better.
    """
    keys = [k for k in a if k in b and math.isfinite(a[k]) and math.isfinite(b[k])]
    if len(keys) < 2:
        return None
    x = np.array([a[k] for k in keys], dtype=np.float64)
    y = np.array([b[k] for k in keys], dtype=np.float64)
    d = direction * (x - y)
    diff, half = mean_ci(d)
    return Paired(
        float(x.mean()), float(y.mean()), diff, half, float((d > 0).mean()), d.size
    )


def verdict(diff: float, half: float) -> str:
    """``"reproduced"`` / ``"reversed"`` when the interval excludes zero (A ahead /
    behind), else ``"level"``."""
    if not math.isfinite(half):
        return "level"
    if diff - half > 0:
        return "reproduced"
    if diff + half < 0:
        return "reversed"
    return "level"
