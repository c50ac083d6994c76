"""Does an explainer trained with ``captum-vit train-shapley`` still match exact
Shapley values? The d = 16 check of ``captum_vit/zoo/SHAPLEY_CARD.md``, end to end
through the command line.

1. A classifier on Fashion-MNIST scenes at 32 px, patch 8 (d = 16 patches), trained
   with ``python -m captum_vit.zoo.train`` (skipped with ``--classifier PATH``);
2. ``captum-vit train-shapley --model default --checkpoint PATH --stage surrogate``;
3. ``captum-vit train-shapley ... --stage explainer`` (both on the embedded training
   scenes, optionally under ``torchrun`` with ``--nproc N``);
4. ``benchmarks/shapley_accuracy.py --ground-truth exact``: the explainer against the
   exact Shapley values of its surrogate's game (all 2^16 coalitions) on held-out test
   scenes.

Target: mean per-image Pearson correlation on the target class >= 0.9. Prints the
commands it runs, the accuracy figures and PASS/FAIL. Measured on an idle 2-core
machine with ``--nproc 2`` (2026-11-29): classifier 4 min (one thread), surrogate 45 s,
explainer 5 min, ground truth 11 min; Pearson 0.918 ± 0.011 (SHAPLEY_CARD.md).

Usage::

    python benchmarks/shapley_cli_accuracy.py --out runs/shapley_d16_cli
    python benchmarks/shapley_cli_accuracy.py --out runs/d16 --classifier \\
        runs/shapley_d16/classifier/default_vit.pt --nproc 2
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


def sh(cmd: List[str], threads: int) -> None:
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    env = dict(
        os.environ,
        OMP_NUM_THREADS=str(threads),
        PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--classifier", type=Path, default=None, help="zoo-format weights")
    p.add_argument("--nproc", type=int, default=1, help="torchrun processes")
    p.add_argument("--threads", type=int, default=1, help="threads per process")
    p.add_argument("--augment", action="store_true", help="the paper's augmentation")
    p.add_argument("--n-images", type=int, default=50)
    args = p.parse_args(argv)
    classifier = args.classifier
    if classifier is None:
        classifier = args.out / "classifier" / "default_vit.pt"
        if not classifier.is_file():
            sh(
                [
                    sys.executable,
                    "-m",
                    "captum_vit.zoo.train",
                    "--out",
                    str(classifier.parent),
                    "--image-size",
                    "32",
                    "--patch-size",
                    "8",
                    "--embed-dim",
                    "96",
                    "--depth",
                    "4",
                    "--heads",
                    "4",
                    "--train-size",
                    "20000",
                    "--epochs",
                    "10",
                    "--eval-size",
                    "2000",
                    "--threads",
                    str(args.threads),
                ],
                args.threads,
            )
    run = args.out / "run"
    launch = [sys.executable, "-m", "captum_vit"]
    if args.nproc > 1:
        launch = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={args.nproc}",
            "-m",
            "captum_vit",
            "--",
        ]
    common = [
        "train-shapley",
        "--model",
        "default",
        "--checkpoint",
        str(classifier),
        "--out",
        str(run),
        "--seed",
        "7",
        "--quiet",
    ] + ([] if args.augment else ["--no-augment"])
    sh(
        launch
        + common
        + "--stage surrogate --n 8000 --epochs 3 --batch-size 64 --subsets 2 "
        "--lr 1e-4".split(),
        args.threads,
    )
    sh(
        launch
        + common
        + "--stage explainer --n 16000 --epochs 3 --batch-size 32 --subsets 32 "
        "--lr 5e-4".split(),
        args.threads,
    )
    import torch

    torch.set_num_threads(args.threads)
    import shapley_accuracy

    result = shapley_accuracy.main(
        [
            "--run",
            str(run),
            "--ground-truth",
            "exact",
            "--n-images",
            str(args.n_images),
            "--race-batch",
            "16",
            "--threads",
            str(args.threads),
        ]
    )
    mean, sem = result["pearson_target"]
    ok = mean >= 0.9
    print(
        f"explainer vs exact Shapley values (target class, {args.n_images} test "
        f"scenes): Pearson {mean:.3f} ± {sem:.3f} -> {'PASS' if ok else 'FAIL'} "
        "(target >= 0.9)"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
