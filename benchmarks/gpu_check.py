"""GPU check: every method on the GPU against the CPU, and mixed-precision smoke runs.

The CUDA path (device placement of every method's buffers, CUDA autocast, pinned
memory, nccl) is exercised by no test of a machine without a GPU. Given one GPU, this
script checks it in a few minutes (well under 8 on one GPU at the default settings):

1. **Placement.** ``zoo.load_default_model(device)`` and ``load_model("default",
   device=...)`` put every parameter and buffer, those of the shipped ViT Shapley
   explainer and surrogate included, on the device; ``data.make_loader`` pins its
   batches (CUDA only) and a non-blocking copy of a pinned batch arrives intact; a
   one-process group (nccl on CUDA, gloo on the CPU) all-reduces a tensor on the
   device; the model's logits under autocast (bf16, and fp16 on CUDA) stay close to
   float32.
2. **Maps.** Every method of ``captum_vit.methods.METHODS`` explains the same
   held-out scenes of the embedded default model on the CPU and on the device, with
   the same seeds (the random masks of TIS, ViT-CX and RISE are drawn from seeded CPU
   generators, so both devices use the same masks; ``random`` gets per-image seeds).
   The maps must agree up to float noise: Pearson r >= ``--min-r`` over all pixels,
   finite values, the input's shape and device. TF32 is switched off for this part,
   so that float noise means float32 noise. The device call runs twice: the second
   is timed (the first pays for CUDA's kernel loading) and must give the same map.
3. **Smoke runs** through the command line (``captum_vit.cli.main``) with tiny
   settings: ``evaluate`` on the CPU in float32 (the reference) and on the device in
   float32, bf16 and fp16, and ``train-shapley`` on the device in float32, bf16 and
   fp16 (two steps per stage on a folder of 8 training scenes), whose explainer is
   then loaded back (``--shapley``) and run on the device. fp16 needs CUDA: on
   another device it is skipped with a note.

It prints one table per part (methods: ``method | cpu s | <device> s | pearson |
max|diff| | ok``), writes everything to ``--out`` as JSON, and exits 1 when any check
fails (0 otherwise, 2 on bad arguments).

Usage::

    python benchmarks/gpu_check.py --out benchmarks/results/gpu_check.json
    python benchmarks/gpu_check.py --device cpu --n 1 --quick   # the code path, on CPU

``--device cpu`` compares the CPU with itself: it cannot find CUDA bugs, but it runs
every line of the script (tests/test_gpu_check.py does so, so the script cannot rot).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

#: Methods of the evaluate smoke runs: a class-agnostic one, a gradient one and a
#: perturbation one (the forward passes that run under autocast).
SMOKE_METHODS = ("rollout", "genatt", "tis")
#: Largest |bf16 - fp32| and |fp16 - fp32| of the softmax probabilities accepted in
#: the autocast placement check (bf16 keeps 8 bits of mantissa).
AUTOCAST_TOLERANCE = {"bf16": 0.1, "fp16": 0.02}
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: Largest |difference| of an evaluate smoke run's mean insertion and deletion from
#: the CPU float32 run's, by precision: a sanity bound that catches broken numbers,
#: not a precision claim (4 images, and TIS's masks follow the features).
EVALUATE_TOLERANCE = {"fp32": 0.02, "bf16": 0.2, "fp16": 0.2}


class CheckError(ValueError):
    """A bad argument, reported in one line."""


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    from captum_vit.methods import DEFAULT_OPTIONS, METHODS

    p = argparse.ArgumentParser(
        prog="gpu_check.py",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--device", default="cuda", help="device checked against the CPU")
    p.add_argument("--n", type=int, default=4, help="held-out scenes explained")
    p.add_argument("--seed", type=int, default=0, help="scene and method seed")
    p.add_argument(
        "--methods", nargs="+", default=["all"], help=f"of {', '.join(METHODS)}"
    )
    p.add_argument("--tis-masks", type=int, default=DEFAULT_OPTIONS.tis_masks)
    p.add_argument("--rise-masks", type=int, default=DEFAULT_OPTIONS.rise_masks)
    p.add_argument("--ig-steps", type=int, default=DEFAULT_OPTIONS.n_steps)
    p.add_argument(
        "--min-r", type=float, default=0.99, help="least Pearson r per method"
    )
    p.add_argument("--smoke-n", type=int, default=4, help="images of the smoke runs")
    p.add_argument(
        "--no-smoke", action="store_true", help="skip the evaluate/train-shapley runs"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny mask and step counts (the code path only: tests, CPU)",
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads")
    p.add_argument("--work", type=Path, default=None, help="folder of the smoke runs")
    p.add_argument("--out", type=Path, default=None, help="JSON file of the results")
    args = p.parse_args(argv)
    if args.quick:
        args.tis_masks, args.rise_masks, args.ig_steps = 8, 8, 2
    for name in ("n", "smoke_n", "tis_masks", "rise_masks", "ig_steps"):
        if getattr(args, name) < 1:
            flag = "--" + name.replace("_", "-")
            raise CheckError(f"{flag} must be a positive integer")
    if not 0.0 <= args.min_r <= 1.0:
        raise CheckError(f"--min-r must be in [0, 1], got {args.min_r}")
    if args.threads is not None and args.threads < 1:
        raise CheckError("--threads must be a positive integer")
    return args


# ----------------------------------------------------------------------- helpers
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device: torch.device, call: Callable[[], Any]) -> tuple:
    _sync(device)
    start = time.perf_counter()
    out = call()
    _sync(device)
    return out, time.perf_counter() - start


@contextlib.contextmanager
def _no_tf32() -> Iterator[None]:
    """float32 matmuls and convolutions in full float32 (no TF32) inside."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def compare_maps(ref: torch.Tensor, got: torch.Tensor) -> Dict[str, Any]:
    """How far ``got`` (any device) is from the reference map ``ref``.

    Args:
        ref: The CPU map.
        got: The device map, of the same shape.

    Returns:
        ``pearson`` (over all values; 1.0 for two equal constant maps, 0.0 for a
        constant map against a varying one), ``max_abs_diff``, ``rel_diff``
        (``max_abs_diff`` over the largest |value| of ``ref``), ``finite`` and
        ``same_shape``.
    """
    a = ref.detach().to("cpu", torch.float64).flatten()
    b = got.detach().to("cpu", torch.float64).flatten()
    out: Dict[str, Any] = {
        "same_shape": tuple(ref.shape) == tuple(got.shape),
        "finite": bool(torch.isfinite(a).all() and torch.isfinite(b).all()),
    }
    if not out["same_shape"] or not out["finite"]:
        out.update(pearson=float("nan"), max_abs_diff=float("nan"))
        out["rel_diff"] = float("nan")
        return out
    diff = float((a - b).abs().max()) if a.numel() else 0.0
    scale = float(a.abs().max()) if a.numel() else 0.0
    da, db = a - a.mean(), b - b.mean()
    na, nb = float(da.norm()), float(db.norm())
    tiny = 1e-12 * max(scale, 1e-30) * math.sqrt(max(a.numel(), 1))
    if na <= tiny or nb <= tiny:  # a constant map: r is undefined
        r = 1.0 if (na <= tiny and nb <= tiny and diff <= 1e-6 * max(scale, 1)) else 0.0
    else:
        r = float((da @ db) / (na * nb))
    out.update(pearson=r, max_abs_diff=diff, rel_diff=diff / scale if scale else diff)
    return out


def _on_device(module: nn.Module, device: torch.device) -> List[str]:
    """Names of ``module``'s parameters and buffers that are not on ``device``."""
    wrong = []
    for kind, items in (
        ("param", module.named_parameters()),
        ("buffer", module.named_buffers()),
    ):
        for name, t in items:
            if t.device.type != device.type or (
                device.index is not None and t.device.index != device.index
            ):
                wrong.append(f"{kind} {name} on {t.device}")
    return wrong


def _row(check: str, ok: bool, detail: str) -> Dict[str, Any]:
    return {"check": check, "ok": bool(ok), "detail": detail}


def environment(device: torch.device) -> Dict[str, Any]:
    import captum_vit

    env: Dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "captum_vit": getattr(captum_vit, "__version__", "?"),
        "cpu_threads": torch.get_num_threads(),
        "device": str(device),
        "cuda_available": torch.cuda.is_available(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            capability=f"{props.major}.{props.minor}",
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            bf16_supported=torch.cuda.is_bf16_supported(),
        )
    return env


# --------------------------------------------------------------- 1. placement
def check_placement(
    device: torch.device, cpu_loaded: Any, dev_loaded: Any, work: Path
) -> List[Dict[str, Any]]:
    """Cheap checks of where things live and of the device's collectives."""
    from captum_vit import zoo

    rows = []
    wrong = _on_device(zoo.load_default_model(device), device)
    detail = "; ".join(wrong[:5]) or f"every parameter and buffer on {device}"
    rows.append(_row("zoo.load_default_model(device)", not wrong, detail))
    wrong = _on_device(dev_loaded.model, device)
    for key, part in dev_loaded.extras.items():
        if isinstance(part, nn.Module):
            wrong += [f"{key}: {w}" for w in _on_device(part, device)]
    parts = ", ".join(
        k for k, v in dev_loaded.extras.items() if isinstance(v, nn.Module)
    )
    rows.append(
        _row(
            "load_model('default', device) + extras",
            not wrong,
            "; ".join(wrong[:5]) or f"model and {parts or 'no extras'}",
        )
    )
    rows.append(_pinned_loader(device))
    rows.append(_process_group(device, work))
    x, _ = zoo.load_default_scenes(n=2, seed=0)
    x = x.to(device)
    with torch.no_grad(), _no_tf32():
        ref = dev_loaded.model(x).float().softmax(-1)
    for amp, dtype in AMP_DTYPES.items():
        name = f"autocast {amp} forward"
        if amp == "fp16" and device.type != "cuda":
            rows.append(_row(name, True, "skipped: fp16 autocast needs CUDA"))
            continue
        try:
            with torch.no_grad(), torch.autocast(device.type, dtype=dtype):
                logits = dev_loaded.model(x)
            err = float((logits.float().softmax(-1) - ref).abs().max())
            ok = logits.dtype == dtype and err <= AUTOCAST_TOLERANCE[amp]
            detail = f"logits {logits.dtype}, max |p - p_fp32| = {err:.2e}"
        except Exception as exc:  # report, go on with the other checks
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        rows.append(_row(name, ok, detail))
    return rows


class _Images(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        return {"image": self.images[i], "index": i}


def _pinned_loader(device: torch.device) -> Dict[str, Any]:
    """``data.make_loader(..., pin_memory=True)`` pins its batches, and a
    non-blocking copy of one arrives intact (CUDA only)."""
    from captum_vit.data import make_loader

    name = "pinned loader batch -> device"
    if device.type != "cuda":
        return _row(name, True, "skipped: pinned memory needs CUDA")
    images = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    try:
        batch = next(iter(make_loader(_Images(images), [[0, 1, 2, 3]], 0, True)))
        pinned = batch["image"].is_pinned()
        moved = batch["image"].to(device, non_blocking=True)
        _sync(device)
        same = torch.equal(moved.cpu(), images)
        return _row(name, pinned and same, f"pinned={pinned}, copy intact={same}")
    except Exception as exc:
        return _row(name, False, f"{type(exc).__name__}: {exc}")


def _process_group(device: torch.device, work: Path) -> Dict[str, Any]:
    """A one-process group on the device's backend all-reduces a device tensor."""
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    name = f"{backend} process group (1 rank)"
    if dist.is_initialized():
        return _row(name, True, "skipped: a process group is already running")
    if not dist.is_available() or (backend == "nccl" and not dist.is_nccl_available()):
        return _row(name, False, f"torch.distributed has no {backend}")
    store = work / "dist_store"
    try:
        kw = {"device_id": device} if device.type == "cuda" else {}
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(
            backend,
            init_method=f"file://{store}",
            rank=0,
            world_size=1,
            timeout=datetime.timedelta(seconds=60),
            **kw,
        )
        t = torch.arange(4.0, device=device)
        dist.all_reduce(t)
        ok = torch.equal(t.cpu(), torch.arange(4.0))
        return _row(name, ok, f"all_reduce on {t.device}: {t.tolist()}")
    except Exception as exc:
        return _row(name, False, f"{type(exc).__name__}: {exc}")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


# ------------------------------------------------------------------- 2. maps
def check_methods(
    args: argparse.Namespace,
    device: torch.device,
    cpu_loaded: Any,
    dev_loaded: Any,
) -> List[Dict[str, Any]]:
    """Every method's maps on the CPU and on ``device`` for the same scenes."""
    from captum_vit import zoo
    from captum_vit.methods import (
        MethodOptions,
        MethodUnavailable,
        TrainedParts,
        resolve_methods,
    )

    methods = resolve_methods(args.methods)
    inputs, scenes = zoo.load_default_scenes(n=args.n, seed=args.seed)
    target = torch.as_tensor(scenes.labels).long()
    seeds = [args.seed * 100_003 + i for i in range(args.n)]
    options = MethodOptions(
        tis_masks=args.tis_masks, rise_masks=args.rise_masks, n_steps=args.ig_steps
    )
    cpu_parts = TrainedParts.from_mapping(cpu_loaded.extras)
    dev_parts = TrainedParts.from_mapping(dev_loaded.extras)
    x_dev, t_dev = inputs.to(device), target.to(device)
    with torch.no_grad():  # load CUDA's kernels before anything is timed
        dev_loaded.model(x_dev[:1])
    rows = []
    for method in methods:
        row: Dict[str, Any] = {"method": method.name}
        try:
            cpu_fn = method.explainer(cpu_loaded.model, options, cpu_parts)
            dev_fn = method.explainer(dev_loaded.model, options, dev_parts)
        except MethodUnavailable as exc:
            row.update(ok=True, skipped=" ".join(str(exc).split()))
            rows.append(row)
            print(f"  {method.name}: skipped ({row['skipped']})", flush=True)
            continue
        try:
            with _no_tf32():
                torch.manual_seed(args.seed)
                ref, cpu_s = _timed(
                    torch.device("cpu"), lambda: cpu_fn(inputs, target, seeds)
                )
                torch.manual_seed(args.seed)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                first = dev_fn(x_dev, t_dev, seeds)
                torch.manual_seed(args.seed)
                got, dev_s = _timed(device, lambda: dev_fn(x_dev, t_dev, seeds))
        except Exception as exc:  # one method's failure must not hide the others'
            row.update(ok=False, error=f"{type(exc).__name__}: {exc}")
            rows.append(row)
            print(f"  {method.name}: FAILED {row['error']}", flush=True)
            continue
        cmp = compare_maps(ref, got)
        repeat = compare_maps(first, got)
        row.update(
            cpu_s=cpu_s,
            device_s=dev_s,
            **cmp,
            map_device=str(got.device),
            repeat_max_abs_diff=repeat["max_abs_diff"],
        )
        if device.type == "cuda":
            row["peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        row["ok"] = bool(
            cmp["same_shape"]
            and cmp["finite"]
            and got.device.type == device.type
            and cmp["pearson"] >= args.min_r
            and repeat["pearson"] >= args.min_r
        )
        rows.append(row)
        print(
            f"  {method.name}: r = {cmp['pearson']:.6f}, "
            f"max|diff| = {cmp['max_abs_diff']:.2e}, {cpu_s:.2f} s / {dev_s:.2f} s"
            + ("" if row["ok"] else "  <-- NOT OK"),
            flush=True,
        )
    return rows


# --------------------------------------------------------------- 3. smoke runs
def _cli(argv: List[str], log: Path) -> tuple:
    """Run ``captum-vit ARGV`` in this process, its stdout into ``log`` (the tables
    the commands print); returns ``(exit status, seconds)``."""
    from captum_vit.cli import main as cli_main

    print(f"  $ captum-vit {' '.join(argv)}", flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log.open("w") as f, contextlib.redirect_stdout(f):
        try:
            rc = cli_main(argv)
        except SystemExit as exc:  # argparse errors
            rc = exc.code if isinstance(exc.code, int) else 1
    seconds = time.perf_counter() - start
    if rc != 0:
        tail = log.read_text().strip().splitlines()[-5:]
        print("\n".join(f"    {line}" for line in tail), flush=True)
    return rc, seconds


def _read_results(folder: Path) -> Dict[str, Dict[str, float]]:
    path = folder / "results.csv"
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        return {
            r["method"]: {k: float(r[k]) for k in ("insertion", "deletion")}
            for r in csv.DictReader(f)
        }


def _amps(device: torch.device) -> List[Optional[str]]:
    return [None, "bf16"] + (["fp16"] if device.type == "cuda" else [])


def smoke_evaluate(
    args: argparse.Namespace, device: torch.device, work: Path
) -> List[Dict[str, Any]]:
    """``captum-vit evaluate`` on the CPU (float32 reference) and on ``device``."""
    runs = [(torch.device("cpu"), None)]
    runs += [(device, amp) for amp in _amps(device) if device.type != "cpu" or amp]
    rows, reference = [], None
    for dev, amp in runs:
        label = f"evaluate {dev.type} {amp or 'fp32'}"
        out = work / label.replace(" ", "_")
        argv = ["evaluate", "--n", str(args.smoke_n), "--method", *SMOKE_METHODS]
        argv += ["--tis-masks", "16" if args.quick else "64", "--seed", "0"]
        argv += ["--device", str(dev), "--workers", "0", "--out", str(out), "--quiet"]
        argv += ["--amp", amp] if amp else []
        rc, seconds = _cli(argv, work / f"{out.name}.log")
        results = _read_results(out)
        values = [v for r in results.values() for v in r.values()]
        ok = (
            rc == 0
            and sorted(results) == sorted(SMOKE_METHODS)
            and all(math.isfinite(v) for v in values)
        )
        row: Dict[str, Any] = {"run": label, "rc": rc, "seconds": seconds}
        row["results"] = results
        if reference is None:
            reference = results
        elif results and reference:
            diff = max(
                abs(results[m][k] - reference[m][k])
                for m in results
                for k in results[m]
                if m in reference
            )
            row["max_abs_diff_vs_cpu"] = diff
            ok = ok and diff <= EVALUATE_TOLERANCE[amp or "fp32"]
        row["ok"] = bool(ok)
        rows.append(row)
    return rows


def _scene_folder(folder: Path, n: int) -> Path:
    """``n`` training scenes as PNG files (train-shapley's ``--data``)."""
    from PIL import Image

    from captum_vit import zoo

    folder.mkdir(parents=True, exist_ok=True)
    scenes = zoo.make_scenes(n, split="train", seed=0)
    for i, image in enumerate(scenes.images):
        pixels = (image.transpose(1, 2, 0) * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"scene{i:02d}.png")
    return folder


def smoke_train_shapley(
    args: argparse.Namespace, device: torch.device, work: Path
) -> List[Dict[str, Any]]:
    """``captum-vit train-shapley`` on ``device``, two steps per stage, and the
    trained explainer loaded back and run there."""
    from captum_vit.methods import METHODS, TrainedParts
    from captum_vit.models import load_model
    from captum_vit.train_shapley import attach_shapley

    data = _scene_folder(work / "train_scenes", 8)
    rows = []
    for amp in _amps(device):
        label = f"train-shapley {device.type} {amp or 'fp32'}"
        out = work / label.replace(" ", "_")
        argv = ["train-shapley", "--data", str(data), "--val-n", "2"]
        argv += ["--batch-size", "2", "--max-steps", "2", "--subsets", "2"]
        argv += ["--workers", "0", "--seed", "0", "--device", str(device)]
        argv += ["--out", str(out), "--quiet"] + (["--amp", amp] if amp else [])
        rc, seconds = _cli(argv, work / f"{out.name}.log")
        row: Dict[str, Any] = {"run": label, "rc": rc, "seconds": seconds}
        ok = rc == 0
        try:
            record = json.loads((out / "record.json").read_text())
            losses = {
                f"{stage} {key}": record[stage]["history"][key]
                for stage in ("surrogate", "explainer")
                for key in ("train_loss", "val_loss")
            }
            row["losses"] = losses
            values = [v for vs in losses.values() for v in vs]
            ok = ok and bool(values) and all(math.isfinite(v) for v in values)
            loaded = load_model("default", device=device)
            attach_shapley(loaded, out)
            explain = METHODS["vit-shapley"].explainer(
                loaded.model, trained=TrainedParts.from_mapping(loaded.extras)
            )
            from captum_vit import zoo

            x, scenes = zoo.load_default_scenes(n=2, seed=0)
            maps = explain(x.to(device), torch.as_tensor(scenes.labels).to(device))
            row["explainer_map_finite"] = bool(torch.isfinite(maps).all())
            row["explainer_map_device"] = str(maps.device)
            ok = ok and row["explainer_map_finite"] and maps.device.type == device.type
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {exc}"
            ok = False
        row["ok"] = bool(ok)
        rows.append(row)
    return rows


# --------------------------------------------------------------------- output
def _fmt(v: Any, spec: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|")


def format_tables(report: Dict[str, Any]) -> str:
    """The report as Markdown tables."""
    dev = report["environment"]["device"]
    lines = [f"GPU check on {report['environment'].get('gpu', dev)}", ""]
    lines += ["| check | ok | detail |", "|---|---|---|"]
    for r in report["placement"]:
        ok = "yes" if r["ok"] else "NO"
        lines.append(f"| {_cell(r['check'])} | {ok} | {_cell(r['detail'])} |")
    lines += ["", f"| method | cpu s | {dev} s | pearson | max\\|diff\\| | ok |"]
    lines.append("|---|---:|---:|---:|---:|---|")
    for r in report["methods"]:
        if "skipped" in r:
            why = _cell(r["skipped"])
            lines.append(f"| {r['method']} | - | - | - | - | skipped: {why} |")
            continue
        if "error" in r:
            lines.append(f"| {r['method']} | - | - | - | - | NO: {_cell(r['error'])} |")
            continue
        lines.append(
            f"| {r['method']} | {r['cpu_s']:.3f} | {r['device_s']:.3f} | "
            f"{_fmt(r['pearson'], '.6f')} | {_fmt(r['max_abs_diff'], '.2e')} | "
            f"{'yes' if r['ok'] else 'NO'} |"
        )
    if report["smoke"]:
        lines += [
            "",
            "| smoke run | exit | s | detail | ok |",
            "|---|---:|---:|---|---|",
        ]
        for r in report["smoke"]:
            if "error" in r:
                detail = r["error"]
            elif "results" in r:
                ins = ", ".join(
                    f"{m} {v['insertion']:.3f}" for m, v in r["results"].items()
                )
                detail = f"insertion: {ins}" if ins else "no results.csv"
                if "max_abs_diff_vs_cpu" in r:
                    detail += f"; max diff vs cpu fp32 {r['max_abs_diff_vs_cpu']:.3f}"
            else:
                detail = "validation loss: " + ", ".join(
                    f"{k.split()[0]} {v[-1]:.4f}"
                    for k, v in r.get("losses", {}).items()
                    if k.endswith("val_loss") and v
                )
            lines.append(
                f"| {r['run']} | {r['rc']} | {r['seconds']:.1f} | {_cell(detail)} | "
                f"{'yes' if r['ok'] else 'NO'} |"
            )
    lines += ["", f"all ok: {report['ok']} ({report['total_s']:.0f} s)"]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the check; returns 0 (all ok), 1 (a check failed) or 2 (bad arguments)."""
    from captum_vit.distributed import parse_device

    start = time.perf_counter()
    try:
        args = parse_args(argv)
        try:
            device = parse_device(args.device)
        except ValueError as exc:
            raise CheckError(str(exc)) from None
        if args.out is not None and args.out.is_dir():
            raise CheckError(f"--out {args.out}: is a folder; name a JSON file")
    except CheckError as exc:
        print(f"gpu_check.py: error: {exc}", file=sys.stderr)
        return 2
    threads = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:  # the caller's RNG state and thread count are left as they were
        with torch.random.fork_rng(devices=[]):
            report = _run(args, device, start)
    finally:
        torch.set_num_threads(threads)
    print()
    print(format_tables(report), flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"wrote {args.out}")
    return 0 if report["ok"] else 1


def _run(
    args: argparse.Namespace, device: torch.device, start: float
) -> Dict[str, Any]:
    """The three parts of the check; returns the report."""
    from captum_vit.models import load_model

    report: Dict[str, Any] = {"environment": environment(device)}
    report["settings"] = {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
    }
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = Path(args.work) if args.work is not None else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        print(f"== placement on {device}", flush=True)
        cpu_loaded = load_model("default", device="cpu")
        dev_loaded = load_model("default", device=device)
        report["placement"] = check_placement(device, cpu_loaded, dev_loaded, work)
        print(f"== methods: cpu against {device}", flush=True)
        report["methods"] = check_methods(args, device, cpu_loaded, dev_loaded)
        report["smoke"] = []
        if not args.no_smoke:
            print("== smoke runs", flush=True)
            report["smoke"] += smoke_evaluate(args, device, work)
            report["smoke"] += smoke_train_shapley(args, device, work)
            if device.type != "cuda":
                print("  (fp16 runs skipped: fp16 autocast needs CUDA)", flush=True)
    parts = report["placement"] + report["methods"] + report["smoke"]
    report["ok"] = all(r["ok"] for r in parts)
    report["total_s"] = time.perf_counter() - start
    return report


if __name__ == "__main__":
    sys.exit(main())
