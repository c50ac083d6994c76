"""Read a ``captum-vit evaluate`` run against the papers' orderings, image by image.

The tables in ``results.md`` give each method's mean with its own 95 % interval; two
methods whose intervals overlap can still differ clearly, because every method is
scored on the same images. This script pairs the per-image values of two methods
(the records of the run folder, all ranks) and reports the mean paired difference with
its 95 % Student-t interval and the share of images on which the claimed winner is
ahead. A claim is

- **reproduced** when the paired interval lies on the claimed side of zero,
- **reversed** when it lies on the other side,
- **level** otherwise (the data cannot tell the two apart).

The claims checked are the ones the papers make and issue 16 asks about: ViT Shapley
best on deletion and faithfulness (Covert et al. 2023; against every other method),
ViT-CX and TIS above attention rollout on insertion − deletion (Xie et al. 2023;
Englebert et al. 2023), SkipPLUS improving IG and IxG (Mehri et al. 2024; on
insertion − deletion, the positive/negative accuracy AOPC and faithfulness); and,
for the baselines of issue 15, TIS above ViT-CX and RISE on insertion − deletion
(Englebert et al. 2023, Table 1) and Transformer Attribution above rollout and raw
attention on the positive/negative perturbation curves (Chefer et al. 2021). For
the methods added since (issue 32): TAM and Beyond Intuition (token and head) above
Transformer Attribution on the perturbation AOPCs (Yuan et al. 2021; Chen et al.
2023), AttnLRP above it on faithfulness (Achtibat et al. 2024), LeGrad above GenAtt
on the perturbation AOPCs (Bousselham et al. 2024), Attention Flow above rollout on
faithfulness correlation (Abnar & Zuidema 2020), and Grad-SAM and partial LRP below
Transformer Attribution on the perturbation AOPCs (their place in Chefer et al.'s
tables).

Usage: python benchmarks/paper_claims.py RUN_DIR [RUN_DIR ...] [--markdown]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from captum_vit._jobs import RecordStore
from captum_vit.evaluate import METRICS
from captum_vit.evaluate._pairs import (  # the one pairing, shared with report.html
    PerImage,
    latest_records,
    paired,
    verdict,
)
from captum_vit.evaluate._pairs import per_image as _per_image

__all__ = ["CLAIMS", "DIRECTION", "check", "paired", "per_image", "verdict"]

#: The positive and negative perturbation tests (Chefer et al.'s AOPCs of accuracy)
_PERTURBATION = ("aopc_acc_positive", "aopc_acc_negative")

#: (paper, winner, loser or "*" for every other method, metrics)
CLAIMS: List[Tuple[str, str, str, Tuple[str, ...]]] = [
    ("Covert et al. 2023", "vit-shapley", "*", ("deletion", "faithfulness")),
    ("Xie et al. 2023", "vitcx", "rollout", ("ins_minus_del",)),
    ("Englebert et al. 2023", "tis", "rollout", ("ins_minus_del",)),
    (
        "Mehri et al. 2024",
        "skipplus-ig",
        "ig",
        ("ins_minus_del", "aopc_acc_positive", "aopc_acc_negative", "faithfulness"),
    ),
    (
        "Mehri et al. 2024",
        "skipplus-ixg",
        "ixg",
        ("ins_minus_del", "aopc_acc_positive", "aopc_acc_negative", "faithfulness"),
    ),
    ("Englebert et al. 2023", "tis", "vitcx", ("ins_minus_del",)),
    ("Englebert et al. 2023", "tis", "rise", ("ins_minus_del",)),
    (
        "Chefer et al. 2021",
        "transformer-attribution",
        "rollout",
        ("aopc_acc_positive", "aopc_acc_negative"),
    ),
    (
        "Chefer et al. 2021",
        "transformer-attribution",
        "raw-attention",
        ("aopc_acc_positive", "aopc_acc_negative"),
    ),
    # the methods of issues 28-30 against the baselines their papers beat
    ("Yuan et al. 2021 (TAM)", "tam", "transformer-attribution", _PERTURBATION),
    (
        "Chen et al. 2023 (Beyond Intuition)",
        "beyond-intuition-token",
        "transformer-attribution",
        _PERTURBATION,
    ),
    (
        "Chen et al. 2023 (Beyond Intuition)",
        "beyond-intuition-head",
        "transformer-attribution",
        _PERTURBATION,
    ),
    (
        "Achtibat et al. 2024 (AttnLRP)",
        "attnlrp",
        "transformer-attribution",
        ("faithfulness",),
    ),
    ("Bousselham et al. 2024 (LeGrad)", "legrad", "genatt", _PERTURBATION),
    ("Abnar & Zuidema 2020", "attention-flow", "rollout", ("faithfulness",)),
    # Grad-SAM and partial LRP are baselines below Transformer Attribution in
    # Chefer et al.'s tables
    ("Chefer et al. 2021", "transformer-attribution", "gradsam", _PERTURBATION),
    ("Chefer et al. 2021", "transformer-attribution", "partial-lrp", _PERTURBATION),
]

#: metric -> +1 when higher is better, -1 when lower is better, for the metrics the
#: claims use (the directions of ``captum-vit evaluate``'s own table)
_BETTER = {key: better for key, _, better in METRICS}
DIRECTION = {
    metric: 1 if _BETTER[metric] == "higher" else -1
    for _, _, _, metrics in CLAIMS
    for metric in metrics
}


def per_image(run: Path) -> PerImage:
    """``{method: {metric: {image key: value}}}`` from a run folder's records: those
    of the run's latest settings, the first record of a (method, chunk) pair winning,
    as in the run's own tables."""
    return _per_image(latest_records(RecordStore(run).read()), DIRECTION)


def check(run: Path) -> List[List[str]]:
    """One row per (claim, loser, metric) present in the run."""
    data = per_image(run)
    rows: List[List[str]] = []
    for paper, winner, loser, metrics in CLAIMS:
        if winner not in data:
            continue
        losers = [m for m in data if m != winner] if loser == "*" else [loser]
        for metric in metrics:
            if metric not in data[winner]:
                continue
            direction = DIRECTION[metric]
            results = []
            for other in losers:
                if metric not in data.get(other, {}):
                    continue
                got = paired(data[winner][metric], data[other][metric], direction)
                if got is not None:
                    results.append((other, got))
            if loser == "*" and results:
                # the closest competitor decides "best"; all others are reported in
                # the count of methods beaten clearly
                beaten = sum(verdict(g[2], g[3]) == "reproduced" for _, g in results)
                other, got = min(results, key=lambda r: r[1][2])
                rows.append(
                    _row(paper, winner, other, metric, got, f"{beaten}/{len(results)}")
                )
            else:
                rows.extend(_row(paper, winner, o, metric, g, "") for o, g in results)
    return rows


def _row(
    paper: str,
    winner: str,
    other: str,
    metric: str,
    got: Tuple[float, float, float, float, float, int],
    beaten: str,
) -> List[str]:
    a, b, diff, half, share, n = got
    arrow = "↑" if DIRECTION[metric] > 0 else "↓"
    return [
        paper,
        f"{winner} vs {other}",
        f"{metric} {arrow}",
        f"{a:.3f} vs {b:.3f}",
        f"{diff:+.3f} ± {half:.3f}",
        f"{share:.0%}",
        str(n),
        verdict(diff, half) + (f" (beats {beaten} clearly)" if beaten else ""),
    ]


HEADER = [
    "paper",
    "claim: A above B",
    "metric",
    "A vs B (means)",
    "A ahead by (paired, 95 %)",
    "images A strictly ahead",
    "n",
    "verdict",
]


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="evaluate output folders")
    args = p.parse_args(argv)
    for run in args.runs:
        if not RecordStore(run).files():
            print(f"{run}: no records*.jsonl here", file=sys.stderr)
            return 2
        print(f"\n{run}\n")
        print("| " + " | ".join(HEADER) + " |")
        print("|" + "---|" * len(HEADER))
        for row in check(run):
            print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
