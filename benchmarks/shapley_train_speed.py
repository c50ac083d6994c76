"""Training throughput of ViT Shapley: one process against two, and per GPU.

Runs the documented command, ``torchrun --nproc_per_node=P -m captum_vit --
train-shapley ...``, on a random-weight ``vit_small_patch16_224`` (224 px; embedded
training scenes resized and augmented by the model's preprocessing), for a few steps
of the surrogate stage and of the explainer stage, and reports images per second of
each stage in steady state: the global batch times the steps after the first
``--warm`` ones, over their training seconds (``record.json`` history; process start,
model loading, scene generation and checkpoint writing excluded).

- CPU: one process, then two (one thread each, ``OMP_NUM_THREADS=1``), in the same
  run; the speed-up of two over one (target: at least 1.7).
- GPU (``torch.cuda.is_available()``): one process per GPU, float32 and ``--amp
  bf16``.

Usage (on an idle machine)::

    python benchmarks/shapley_train_speed.py --out benchmarks/results/shapley_train
    python benchmarks/shapley_train_speed.py --quick    # tiny model, a smoke test

The table goes to stdout (and ``<out>/shapley_train_speed.md`` with ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]


def train(
    out: Path,
    nproc: int,
    args: argparse.Namespace,
    device: str,
    amp: Optional[str] = None,
    batch_size: Optional[int] = None,
    workers: int = 0,
) -> Dict[str, float]:
    """One ``torchrun ... train-shapley`` run of both stages; images/s per stage."""
    if out.exists():
        shutil.rmtree(out)
    b = batch_size or args.batch_size
    steps = args.warm + args.steps
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "captum_vit",
        "--",
        "train-shapley",
        "--model",
        args.model,
        "--random-weights",
        "--n",
        str(b * steps),
        "--val-n",
        "0",
        "--batch-size",
        str(b),
        "--max-steps",
        str(steps),
        "--save-every",
        str(args.warm),
        "--workers",
        str(workers),
        "--device",
        device,
        "--quiet",
        "--out",
        str(out),
    ]
    if amp:
        cmd += ["--amp", amp]
    env = dict(
        os.environ,
        OMP_NUM_THREADS=str(args.threads),
        PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        MASTER_ADDR="127.0.0.1",
    )
    rates: Dict[str, float] = {}
    stages = [("surrogate", args.surrogate_subsets), ("explainer", args.subsets)]
    for stage, subsets in stages:
        run = cmd + ["--stage", stage, "--subsets", str(subsets)]
        res = subprocess.run(run, env=env, cwd=ROOT, capture_output=True, text=True)
        if res.returncode != 0:
            raise SystemExit(f"{' '.join(run)}\n{res.stderr[-3000:]}")
        hist = json.loads((out / "record.json").read_text())[stage]["history"]
        (s0, s1), (t0, t1) = hist["step"][-2:], hist["seconds"][-2:]
        rates[stage] = (s1 - s0) * b / (t1 - t0)
    return rates


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="vit_small_patch16_224")
    p.add_argument("--batch-size", type=int, default=8, help="global batch on CPU")
    p.add_argument(
        "--gpu-batch-size", type=int, default=64, help="global batch on GPU (paper)"
    )
    p.add_argument("--subsets", type=int, default=32, help="explainer (paper: 32)")
    p.add_argument("--surrogate-subsets", type=int, default=1)
    p.add_argument("--warm", type=int, default=1, help="steps left out of the rate")
    p.add_argument("--steps", type=int, default=3, help="timed steps per stage")
    p.add_argument("--threads", type=int, default=1, help="threads per process")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--quick", action="store_true", help="tiny model: a smoke test")
    args = p.parse_args(argv)
    if args.quick:
        args.model, args.batch_size, args.gpu_batch_size = "test_vit", 2, 4
        args.subsets, args.warm, args.steps = 2, 1, 1
    work = Path(tempfile.mkdtemp(prefix="shapley_speed_"))
    rows = []
    try:
        cpu = {n: train(work / f"cpu{n}", n, args, "cpu") for n in (1, 2)}
        for n, r in cpu.items():
            rows.append(("cpu", n, "fp32", args.batch_size, r))
        if torch.cuda.is_available():
            gpus = torch.cuda.device_count()
            for amp in (None, "bf16"):
                r = train(
                    work / f"gpu{amp}",
                    gpus,
                    args,
                    "cuda",
                    amp,
                    batch_size=args.gpu_batch_size * gpus,
                    workers=4,
                )
                rows.append(
                    (
                        f"{gpus}x {torch.cuda.get_device_name(0)}",
                        gpus,
                        amp or "fp32",
                        args.gpu_batch_size * gpus,
                        r,
                    )
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = [
        f"### ViT Shapley training throughput: {args.model}, random weights "
        f"({platform.processor() or platform.machine()}, torch {torch.__version__})",
        "",
        f"Steady state over {args.steps} steps after {args.warm}; explainer: "
        f"{args.subsets} coalitions per image, surrogate: {args.surrogate_subsets}.",
        "",
        "| device | processes | precision | global batch | surrogate img/s | "
        "explainer img/s |",
        "|---|---|---|---|---|---|",
    ]
    for dev, n, prec, b, r in rows:
        lines.append(
            f"| {dev} | {n} | {prec} | {b} | {r['surrogate']:.3g} | "
            f"{r['explainer']:.3g} |"
        )
    for stage in ("surrogate", "explainer"):
        speedup = cpu[2][stage] / cpu[1][stage]
        lines.append("")
        lines.append(
            f"CPU {stage}: two processes / one = {speedup:.2f}x (target >= 1.7: "
            f"{'met' if speedup >= 1.7 else 'NOT met'})"
        )
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "shapley_train_speed.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
