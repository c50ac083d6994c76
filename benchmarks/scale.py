"""Throughput of ``captum-vit evaluate`` in one process against two, and per GPU.

Runs the command the README documents, ``torchrun --nproc_per_node=P -m captum_vit --
evaluate ...``, with rollout, GenAtt and TIS at 64 masks on a random-weight
``vit_small_patch16_224`` (224 px; the embedded scenes resized by the model's
preprocessing), every metric included, and reports images per second:

- ``work img/s``: images over the span of the records' own timestamps (first chunk
  started to last chunk finished, over all ranks): the split work itself;
- ``end-to-end img/s``: images over the whole command (process start, imports, model
  loading, merge);
- scaling: two processes' work throughput over one process's, and the efficiency
  (speed-up / 2). Target on the 2-core CPU: a speed-up of at least 1.8.

On the CPU each process gets one thread (``OMP_NUM_THREADS=1``), the same run measures
one and two processes, and the merged tables are checked to be equal (timing columns
excluded). With a GPU (``torch.cuda.is_available()``) the same command runs with one
process per GPU, in float32 and with ``--amp bf16``; the largest difference between
the bf16 and float32 table means is reported (the effect of autocast on the numbers).

Each image costs about 110 s of one CPU core (every metric of ``evaluate --protocol
standard``, the command's former defaults, on 196 patches), so the default is 8 images:
two chunks of 4, one per process with two.

Usage (the run behind benchmarks/RESULTS.md, on an idle machine)::

    python benchmarks/scale.py --out benchmarks/results/scale
    python benchmarks/scale.py --quick          # tiny model and data, a smoke test
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
TIMING = ("seconds", "seconds_ci95")


def run_evaluate(
    out: Path,
    nproc: int,
    args: argparse.Namespace,
    device: str,
    amp: Optional[str] = None,
) -> Dict[str, float]:
    """One ``torchrun ... evaluate`` run in a fresh folder; its throughput figures."""
    if out.exists():
        shutil.rmtree(out)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "captum_vit",
        "--",
        "evaluate",
        "--protocol",
        "standard",  # the metrics' settings of RESULTS.md's scaling table
        "--model",
        args.model,
        "--random-weights",
        "--methods",
        "rollout",
        "genatt",
        "tis",
        "--tis-masks",
        str(args.tis_masks),
        "--n",
        str(args.n),
        "--batch-size",
        str(args.batch_size),
        "--device",
        device,
        "--workers",
        str(args.workers),
        "--quiet",
        "--out",
        str(out),
    ]
    if amp:
        cmd += ["--amp", amp]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"evaluate failed ({nproc} processes):\n{res.stderr[-3000:]}")
    starts, ends = [], []
    for path in out.glob("records*.jsonl"):
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            starts.append(rec["wall"][0])
            ends.append(rec["wall"][1])
    span = max(ends) - min(starts)
    return {
        "processes": nproc,
        "device": device,
        "amp": amp or "off",
        "work_s": span,
        "wall_s": wall,
        "work_img_s": args.n / span,
        "end_to_end_img_s": args.n / wall,
    }


def table(out: Path) -> Dict[str, Dict[str, float]]:
    with (out / "results.csv").open() as fh:
        return {
            r["method"]: {
                k: float(v) for k, v in r.items() if k not in TIMING + ("method",)
            }
            for r in csv.DictReader(fh)
        }


def max_difference(a: Dict[str, Dict[str, float]], b: Dict[str, Dict[str, float]]):
    """Largest |a - b| over the mean columns, and where."""
    worst, where = 0.0, ""
    for m in a:
        for k, v in a[m].items():
            if k.endswith("_ci95") or k == "n":
                continue
            d = abs(v - b[m][k])
            if d > worst:
                worst, where = d, f"{m} {k}"
    return worst, where


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="vit_small_patch16_224")
    ap.add_argument(
        "--n", type=int, default=8, help="images per run (about 110 s each on one core)"
    )
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--tis-masks", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="threads per process")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    ap.add_argument("--out", default="benchmarks/results/scale")
    ap.add_argument(
        "--quick", action="store_true", help="test_vit, 4 images, 8 masks (smoke test)"
    )
    ap.add_argument("--no-cpu", action="store_true", help="skip the CPU runs")
    ap.add_argument(
        "--cpu-bf16",
        action="store_true",
        help="also run the 2-process CPU case with --amp bf16 and report the change",
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.model, args.n, args.tis_masks, args.batch_size = "test_vit", 4, 8, 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: List[Dict[str, float]] = []
    notes: List[str] = []
    if not args.no_cpu:
        one = run_evaluate(out / "cpu_1", 1, args, "cpu")
        two = run_evaluate(out / "cpu_2", 2, args, "cpu")
        speedup = two["work_img_s"] / one["work_img_s"]
        two["speedup"], two["efficiency"] = speedup, speedup / 2
        rows += [one, two]
        same = table(out / "cpu_1") == table(out / "cpu_2")
        notes.append(
            f"CPU: 2 processes / 1 process = {speedup:.2f}x work throughput "
            f"(efficiency {speedup / 2:.0%}; target >= 1.8x); merged table equals the "
            f"one-process table: {same}"
        )
        if args.cpu_bf16:
            bf = run_evaluate(out / "cpu_2_bf16", 2, args, "cpu", amp="bf16")
            rows.append(bf)
            worst, where = max_difference(
                table(out / "cpu_2"), table(out / "cpu_2_bf16")
            )
            notes.append(
                f"CPU: bf16 autocast changes the table means by at most {worst:.4f} "
                f"({where})"
            )
    if torch.cuda.is_available():
        gpus = torch.cuda.device_count()
        name = torch.cuda.get_device_name(0)
        f32 = run_evaluate(out / "gpu_f32", gpus, args, "cuda")
        bf16 = run_evaluate(out / "gpu_bf16", gpus, args, "cuda", amp="bf16")
        for r in (f32, bf16):
            r["per_gpu_img_s"] = r["work_img_s"] / gpus
        rows += [f32, bf16]
        worst, where = max_difference(table(out / "gpu_f32"), table(out / "gpu_bf16"))
        notes.append(
            f"GPU ({gpus}x {name}): bf16 autocast changes the table means by at most "
            f"{worst:.4f} ({where}); bf16 / float32 work throughput "
            f"{bf16['work_img_s'] / f32['work_img_s']:.2f}x"
        )
    head = (
        "| device | processes | AMP | work s | work img/s | end-to-end img/s | "
        "speed-up |"
    )
    lines = [
        f"# evaluate throughput: {args.model}, rollout + GenAtt + TIS ({args.tis_masks}"
        f" masks), {args.n} images, batch {args.batch_size}, {args.threads} thread(s) "
        "per process",
        "",
        f"Machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}",
        "",
        head,
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['device']} | {r['processes']} | {r['amp']} | {r['work_s']:.1f} | "
            f"{r['work_img_s']:.3g} | {r['end_to_end_img_s']:.3g} | "
            + (f"{r['speedup']:.2f}x |" if "speedup" in r else "|")
        )
    lines += [""] + [f"- {n}" for n in notes]
    text = "\n".join(lines) + "\n"
    (out / "scale.md").write_text(text)
    (out / "scale.json").write_text(
        json.dumps({"rows": rows, "notes": notes}, indent=1)
    )
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
