"""Quality tables of every method on held-out embedded scenes (RESULTS.md §1).

Runs ``captum-vit evaluate`` (see ``captum-vit evaluate -h``) once per removal; the
table, CSV and curves land in ``--out`` (with several ``--removals``, in
``--out/<removal>``). Interrupt and run again to resume.

Protocols (``--protocol``; flags given after it override the preset):

- ``quick`` (default): ``captum-vit evaluate``'s own defaults.
- ``paper``: the papers' settings, meant for a GPU (``--device cuda``): with token
  removal the ViT Shapley surrogate scores the perturbed images for every method
  (§6.2), with pixel removals (``black``, ...) the classifier, as TIS does; curves
  with one patch per step (ViT Shapley); faithfulness over 1000 subsets and
  sensitivity-n over 13 sizes × 1000 subsets (ViT Shapley App. G); non-target
  curves over every other class (ViT Shapley Table 2); the one-pixel pointing game
  (Zhang et al. 2018, ViT-CX §4); TIS with 1024 masks and RISE with 4000 (the
  papers'); ROAD on patches; the randomisation check on 20 scenes. About 15 400
  perturbed forward passes per image and method on the embedded model's 64 patches
  (13 000 of them for sensitivity-n) plus nine extra explanations per image (the
  non-target classes): estimated at about 30 hours of one CPU core for 200 scenes
  and every method (from ≈ 1.8 ms per perturbed pass of the shipped 6-block model
  on one core, measured in the 500-scene evaluation run; not run).
- ``paper-cpu``: the same protocol with fewer random subsets (faithfulness 200,
  sensitivity-n 13 × 100) and the distractor's class as the one non-target class
  (already explained for the distractor pointing column): about 1 900 perturbed
  passes per image and method, estimated at about four hours of one CPU core for
  200 scenes and every method.

Examples (RESULTS.md §1 ran the ``quick`` protocol as ``captum-vit evaluate`` under
``torchrun``, one table per removal; the commands are printed above its tables):
    python benchmarks/quality.py --removals tokens black --n 500 \\
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

#: Flags of each protocol; ``{patches}`` becomes the model's number of patches,
#: ``{evaluator}`` the surrogate for token removal and the classifier for pixels.
PROTOCOLS: Dict[str, List[str]] = {
    "quick": [],
    "paper": [
        "--evaluator", "{evaluator}",
        "--curve-steps", "{patches}",
        "--faith-samples", "1000",
        "--sensitivity-sizes", "13",
        "--sensitivity-samples", "1000",
        "--non-target", "all",
        "--pointing", "first",
        "--road", "patches",
        "--randomization", "20",
        "--tis-masks", "1024",
        "--rise-masks", "4000",
        "--metric-batch", "1024",
    ],
    "paper-cpu": [
        "--evaluator", "{evaluator}",
        "--curve-steps", "{patches}",
        "--faith-samples", "200",
        "--sensitivity-sizes", "13",
        "--sensitivity-samples", "100",
        "--non-target", "auto",
        "--pointing", "first",
        "--road", "patches",
        "--randomization", "20",
        "--tis-masks", "1024",
        "--rise-masks", "4000",
    ],
}  # fmt: skip

#: A smoke run: two scenes, two methods, every column.
QUICK = [
    "--n", "2", "--methods", "random", "rollout", "--curve-steps", "2",
    "--faith-samples", "4", "--sensitivity-sizes", "2", "--sensitivity-samples", "4",
    "--randomization", "1", "--quiet", "--workers", "0",
]  # fmt: skip


def number_of_patches(evaluate_args: List[str]) -> int:
    """Patches of the model the evaluate flags name, at its input size."""
    import torch

    from captum_vit.cli import build_parser
    from captum_vit.models import load_model
    from captum_vit.vit import ViTAdapter

    ns = build_parser().parse_args(["evaluate", *evaluate_args])
    loaded = load_model(
        ns.model, ns.checkpoint, random_weights=ns.random_weights, use_ema=ns.use_ema
    )
    gh, gw = ViTAdapter(loaded.model).grid_for(torch.zeros(1, 3, *loaded.input_size))
    return gh * gw


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
    preset = list(PROTOCOLS[args.protocol]) + (QUICK if args.quick else [])
    if "{patches}" in preset:
        i = preset.index("{patches}")
        if "--curve-steps" in rest or args.quick:  # theirs win: no model load
            del preset[i - 1 : i + 1]
        else:
            preset[i] = str(number_of_patches(rest))
    removals = args.removals or [None]
    out = []
    for removal in removals:
        pixels = (removal or _given(rest, "--removal", "tokens")) != "tokens"
        evaluator = "classifier" if pixels else "surrogate"
        flags = [evaluator if a == "{evaluator}" else a for a in preset]
        if removal is None:
            out.append(["evaluate", *flags, *rest, "--out", args.out])
        else:
            where = str(Path(args.out) / removal)
            out.append(
                ["evaluate", *flags, *rest, "--removal", removal, "--out", where]
            )
    return out


def _given(args: List[str], flag: str, default: str) -> str:
    """The last value of ``flag`` in ``args`` (``--flag V`` or ``--flag=V``)."""
    value = default
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            value = args[i + 1]
        elif a.startswith(flag + "="):
            value = a.split("=", 1)[1]
    return value


if __name__ == "__main__":
    status = 0
    for command in commands(sys.argv[1:]):
        print("captum-vit " + " ".join(command), flush=True)
        status = main(command) or status
    sys.exit(status)
