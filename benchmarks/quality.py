"""Quality tables of every method on held-out embedded scenes (RESULTS.md §1).

Runs ``captum-vit evaluate`` (see ``captum-vit evaluate -h``) once per removal; the
table, CSV and curves land in ``--out`` (with several ``--removals``, in
``--out/<removal>``). Interrupt and run again to resume.

Protocols (``--protocol``; flags given after it override the preset): the presets of
``captum-vit evaluate --protocol`` (``captum_vit.evaluate.PROTOCOLS``, the one place
that defines them), passed on as they are:

- ``quick`` (default): ``captum-vit evaluate``'s default, seconds per image and
  method.
- ``standard``: the former defaults (16-step curves, 64 faithfulness subsets,
  sensitivity-n 9 × 32, ROAD on patches), which RESULTS.md §1's tables used.
- ``paper``: the papers' settings, meant for a GPU (``--device cuda``): with token
  removal the ViT Shapley surrogate scores the perturbed images for every method
  (§6.2), with pixel removals (``black``, ...) the classifier, as TIS does; curves
  with one patch per step (ViT Shapley); faithfulness over 1000 subsets and
  sensitivity-n over 13 sizes × 1000 subsets (ViT Shapley App. G); non-target
  curves over every other class (ViT Shapley Table 2); the one-pixel pointing game
  (Zhang et al. 2018, ViT-CX §4); TIS with 1024 masks and RISE with 4000 (the
  papers', and the command's defaults); ROAD on patches; the randomisation check on
  20 scenes. About 15 400 perturbed forward passes per image and method on the
  embedded model's 64 patches (13 000 of them for sensitivity-n) plus nine extra
  explanations per image (the non-target classes): estimated at about 30 hours of
  one CPU core for 200 scenes and every method (from ≈ 1.8 ms per perturbed pass of
  the shipped 6-block model on one core, measured in the 500-scene evaluation run;
  not run).
- ``paper-cpu``: the same protocol with fewer random subsets (faithfulness 200,
  sensitivity-n 13 × 100) and the distractor's class as the one non-target class
  (already explained for the distractor pointing column): about 1 900 perturbed
  passes per image and method, estimated at about four hours of one CPU core for
  200 scenes and every method.

Examples (RESULTS.md §1 ran the ``standard`` protocol, then ``captum-vit evaluate``'s
defaults, under ``torchrun``, one table per removal; the commands are printed above
its tables):
    python benchmarks/quality.py --protocol standard --removals tokens black --n 500 \\
        --out benchmarks/results/quality
    python benchmarks/quality.py --protocol paper --removals tokens black --n 200 \\
        --device cuda --out benchmarks/results/paper
    python benchmarks/quality.py --quick          # a smoke run of a few seconds
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List

from captum_vit.cli import main
from captum_vit.evaluate import PROTOCOLS as PRESETS

#: The presets: ``captum-vit evaluate --protocol NAME`` (defined in one place).
PROTOCOLS: Dict[str, List[str]] = {name: ["--protocol", name] for name in PRESETS}

#: A smoke run: two scenes, two methods, every column.
QUICK = [
    "--n", "2", "--methods", "random", "rollout", "--curve-steps", "2",
    "--faith-samples", "4", "--sensitivity-sizes", "2", "--sensitivity-samples", "4",
    "--randomization", "1", "--quiet", "--workers", "0",
]  # fmt: skip


def commands(argv: List[str]) -> List[List[str]]:
    """The ``captum-vit evaluate`` command lines this run makes."""
    p = argparse.ArgumentParser(
        allow_abbrev=False,  # --removal goes to evaluate, --removals is ours
        description=__doc__.split("\n\n")[0],
        epilog="Other flags go to captum-vit evaluate.",
    )
    p.add_argument("--protocol", choices=list(PROTOCOLS), default="quick")
    p.add_argument(
        "--removals",
        nargs="+",
        default=None,
        choices=["tokens", "black", "mean", "blur", "uniform"],
        help="one table per removal, in --out/<removal>",
    )
    p.add_argument("--quick", action="store_true", help="a smoke run of seconds")
    p.add_argument(
        "--out",
        default=None,
        help="output folder (default benchmarks/results/quality; with --quick a "
        "temporary folder)",
    )
    args, rest = p.parse_known_args(argv)
    if args.out is None:
        if args.quick:
            import tempfile

            args.out = tempfile.mkdtemp(prefix="quality-quick-")
        else:
            args.out = "benchmarks/results/quality"
    flags = list(PROTOCOLS[args.protocol]) + (QUICK if args.quick else [])
    removals = args.removals or [None]
    out = []
    for removal in removals:
        if removal is None:
            out.append(["evaluate", *flags, *rest, "--out", args.out])
        else:
            where = str(Path(args.out) / removal)
            out.append(
                ["evaluate", *flags, *rest, "--removal", removal, "--out", where]
            )
    return out


if __name__ == "__main__":
    status = 0
    for command in commands(sys.argv[1:]):
        print("captum-vit " + " ".join(command), flush=True)
        status = main(command) or status
    sys.exit(status)
