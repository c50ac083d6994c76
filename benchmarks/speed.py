"""Seconds per image of every method, against the forward passes it cannot avoid.

For every method of ``captum_vit.methods`` this measures the time of one
``attribute`` call on a batch and divides it by two references measured on the same
machine, batch and model:

- ``x fwd``: one plain forward pass of the batch (``model(x)`` under no_grad);
- ``x floor``: the method's *forward-pass floor*, the model evaluations it needs,
  run bare, with the shapes the method uses (so only the method's own bookkeeping
  is above 1.0x):

  ==============  ==========================================================
  rollout         1 forward (raw-attention too)
  genatt, ixg     1 forward + backward (gradcam, transformer-attribution,
                  gradsam, gradcam-attention, partial-lrp too)
  ig              ``n_steps`` forwards + backwards (Captum batches them by 64)
  skipplus-*      the floor of the wrapped method (the ratio is the wrapper's
                  price over plain IG / IxG)
  vitcx           1 forward + ``2 K`` forwards, ``K`` = the image's mask count
  tis             1 forward + ``M`` forwards on the kept half of the tokens,
                  ``M = min(n_masks, non-constant channels)`` (k-means centroids)
  vit-shapley     1 forward (the classifier's; Covert et al.'s measure)
  leave-one-out   ``N + 1`` forwards (N patches)
  rise            ``n_masks`` forwards of masked images (64 per pass)
  random          none
  legrad          1 forward + backward
  vit-reciprocam  1 forward + N forwards of the last 2 blocks (64 per pass)
  ==============  ==========================================================

Models: ``vit_base_patch16_224`` with random weights (ViT Shapley with an untrained
explainer of the paper's architecture: its cost does not depend on the weights) and
the embedded default with its shipped explainer. Tables: every method at one batch
size; how s/image grows with the batch size; how it grows with the image size
(ViT-B built at each size). Times are the minimum over ``--repeats`` runs for calls
shorter than a second, three for calls up to 20 s, one otherwise; on the CPU the
process CPU time is reported too (robust to other load when ``--threads 1``). With a
GPU (``--device auto`` finds it) the same tables are made on the GPU. Each row is
appended to ``OUT/rows.jsonl`` as soon as it is measured: a run stopped half-way
(the ViT-B tables with every method take hours of one core) resumes where it
stopped when run again with the same settings.

Usage (the run behind benchmarks/RESULTS.md)::

    python benchmarks/speed.py --threads 1 --out benchmarks/results/speed
    python benchmarks/speed.py --quick          # small settings, a few minutes
    python benchmarks/speed.py --threads 1 --models embedded \\
        --out benchmarks/results/speed_default   # after retraining the default
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import timm
import torch
import torch.nn as nn
from torch import Tensor

from captum_vit import TokenMask
from captum_vit.attr import TransformerInputSampling, ViTCX
from captum_vit.methods import (
    DEFAULT_OPTIONS,
    METHODS,
    MethodOptions,
    TrainedParts,
    default_model_extras,
)
from captum_vit.shapley import ShapleyExplainer
from captum_vit.vit import ViTAdapter

GROWTH_METHODS = ["rollout", "genatt", "ixg", "skipplus-ixg", "vit-shapley", "ig"]


# ------------------------------------------------------------------ timing
class Clock:
    """Wall and process-CPU time of a call, synchronising CUDA when used."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __call__(self, fn: Callable[[], Any]) -> Tuple[float, float]:
        if self.cuda:
            torch.cuda.synchronize()
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - w0, time.process_time() - c0


def measure(clock: Clock, fn: Callable[[], Any], repeats: int) -> Dict[str, float]:
    """Minimum wall (and its CPU) time. Calls under 1 s are repeated ``repeats``
    times, millisecond calls more often (about half a second in all, at most 200
    runs), calls of 1–20 s three times and longer ones once, so that a minimum is
    rarely one scheduler hiccup."""
    best = clock(fn)
    if best[0] < 1.0:
        runs = max(repeats, min(200, int(0.5 / max(best[0], 1e-4))))
    else:
        runs = 3 if best[0] < 20.0 else 1
    for _ in range(runs - 1):
        t = clock(fn)
        if t[0] < best[0]:
            best = t
    return {"wall": best[0], "cpu": best[1]}


def measure_interleaved(
    clock: Clock, calls: Dict[str, Callable[[], Any]], seconds: float, min_runs: int
) -> Dict[str, float]:
    """Minimum wall time of each call, the calls timed one after another in turn
    (floor, method, floor, method, ...) until each has had ``seconds`` of runs and at
    least ``min_runs`` of them: a load spike then falls on a floor and a method alike,
    so the ratio of two minima is paired, not two separate measurements."""
    best = {k: float("inf") for k in calls}
    spent = {k: 0.0 for k in calls}
    runs = 0
    while runs < min_runs or min(spent.values()) < seconds:
        for key, fn in calls.items():
            wall = clock(fn)[0]
            best[key] = min(best[key], wall)
            spent[key] += wall
        runs += 1
    return best


# ------------------------------------------------------------------- floors
def _chunks(n: int, size: int):
    for lo in range(0, n, size):
        yield min(size, n - lo)


def forwards(model: nn.Module, like: Tensor, n: int, chunk: int) -> Callable[[], None]:
    """``n`` plain forwards of inputs shaped like ``like[0]``, ``chunk`` at a time."""
    x = torch.randn((chunk,) + tuple(like.shape[1:]), device=like.device)

    def run() -> None:
        with torch.no_grad():
            for m in _chunks(n, chunk):
                model(x[:m])

    return run


def forward_backward(
    model: nn.Module, like: Tensor, n: int, chunk: int
) -> Callable[[], None]:
    """``n`` forwards + backwards of one logit per input to the inputs."""
    x = torch.randn((chunk,) + tuple(like.shape[1:]), device=like.device)

    def run() -> None:
        for m in _chunks(n, chunk):
            xi = x[:m].clone().requires_grad_(True)
            torch.autograd.grad(model(xi)[:, 0].sum(), xi)

    return run


def kept_token_forwards(
    model: nn.Module, like: Tensor, n: int, kept: int, chunk: int
) -> Callable[[], None]:
    """``n`` forwards that keep ``kept`` patch tokens (TokenMask drop mode)."""
    adapter = ViTAdapter(model)
    x = torch.randn((chunk,) + tuple(like.shape[1:]), device=like.device)
    gh, gw = adapter.grid_for(like)
    keep = torch.zeros(chunk, gh * gw, dtype=torch.bool, device=like.device)
    keep[:, :kept] = True

    masked = TokenMask(model, "drop")

    def run() -> None:
        with torch.no_grad():
            for m in _chunks(n, chunk):
                masked(x[:m], keep[:m])

    return run


def block_forwards(
    model: nn.Module, like: Tensor, n: int, start: int, chunk: int
) -> Callable[[], None]:
    """One forward of the batch to block ``start``, then ``n`` forwards of blocks
    ``start..L`` and the head on token maps, ``chunk`` at a time (ViT-ReciproCAM's
    floor)."""
    adapter = ViTAdapter(model)
    with torch.no_grad():
        z = adapter.run_blocks(adapter.embed(like), 0, start)
    maps = z[:1].expand(chunk, -1, -1).clone()

    def run() -> None:
        with torch.no_grad():
            adapter.run_blocks(adapter.embed(like), 0, start)
            for m in _chunks(n, chunk):
                adapter.head(adapter.run_blocks(maps[:m], start))

    return run


def floor_of(
    name: str,
    model: nn.Module,
    x: Tensor,
    opts: MethodOptions,
) -> Tuple[Optional[Callable[[], None]], str]:
    """The bare model evaluations ``name`` needs for batch ``x``, and a label."""
    b = x.shape[0]
    adapter = ViTAdapter(model)
    n_patches = math.prod(adapter.grid_for(x))
    base = name.replace("skipplus-", "")
    if name == "random":
        return None, "-"
    if base in ("rollout", "raw-attention", "vit-shapley"):
        return forwards(model, x, b, b), "1 fwd"
    if base in ("genatt", "ixg", "gradcam", "transformer-attribution", "legrad"):
        return forward_backward(model, x, b, b), "1 fwd+bwd"
    if base in ("gradsam", "gradcam-attention", "partial-lrp"):
        return forward_backward(model, x, b, b), "1 fwd+bwd"
    if base == "rise":
        masks = opts.rise_masks
        return forwards(model, x, b * masks, 64), f"{masks} fwd"
    if base == "ig":
        steps = opts.n_steps
        return forward_backward(model, x, b * steps, 64), f"{steps} fwd+bwd"
    if base == "leave-one-out":
        return forwards(model, x, b * (n_patches + 1), 64 * b), f"{n_patches + 1} fwd"
    if base == "vitcx":
        k = sum(m.shape[0] for m in ViTCX(model).masks(x))
        two_k = forwards(model, x, 2 * k, 64)
        one = forwards(model, x, b, b)
        return (lambda: (one(), two_k())), f"1 + 2K fwd (K = {k / b:.0f})"
    if base == "tis":
        # k-means gives min(n_masks, non-constant channels) masks per image
        acts = TransformerInputSampling(model).activations(x)  # (B, N, L·D)
        per_image = [
            min(opts.tis_masks, int((a.amax(0) > a.amin(0)).sum())) for a in acts
        ]
        kept = int(0.5 * n_patches)
        drop = kept_token_forwards(model, x, sum(per_image), kept, 64)
        one = forwards(model, x, b, b)
        label = f"1 + M fwd at {kept}/{n_patches} (M = {sum(per_image) / b:.0f})"
        return (lambda: (one(), drop())), label
    if base == "attention-flow":  # plus one max-flow problem per patch, no model
        return forwards(model, x, b, b), "1 fwd + N max-flows"
    if base in ("tam", "beyond-intuition-head", "beyond-intuition-token"):
        steps = opts.n_steps  # issue 28: steps x (forward + backward)
        return forward_backward(model, x, b * steps, b), f"{steps} fwd+bwd"
    if base == "vit-reciprocam":  # its default layer=-2: the last two blocks
        start = adapter.num_layers - 2
        return block_forwards(model, x, b * n_patches, start, 64), (
            f"1 + {n_patches} fwd of the last 2 blocks"
        )
    raise KeyError(name)


# ------------------------------------------------------------------- models
def vit_base(size: int, device: torch.device) -> Tuple[nn.Module, TrainedParts]:
    model = timm.create_model(
        "vit_base_patch16_224", pretrained=False, img_size=size, num_classes=1000
    )
    model = model.to(device).eval()
    torch.manual_seed(0)
    explainer = ShapleyExplainer.from_surrogate(model).to(device).eval()
    return model, TrainedParts(shapley_explainer=explainer, shapley_surrogate=model)


def embedded(device: torch.device) -> Tuple[nn.Module, TrainedParts]:
    from captum_vit.zoo import load_default_model

    model = load_default_model(device)
    parts = {k: v.to(device) for k, v in default_model_extras().items()}
    return model, TrainedParts.from_mapping(parts)


def images(model: nn.Module, batch: int, device: torch.device) -> Tensor:
    size = ViTAdapter.of(model).image_size
    g = torch.Generator().manual_seed(batch)
    return torch.randn(batch, 3, size[0], size[1], generator=g).to(device)


# -------------------------------------------------------------------- runs
def run_one(
    model: nn.Module,
    trained: TrainedParts,
    name: str,
    x: Tensor,
    opts: MethodOptions,
    clock: Clock,
    repeats: int,
    with_floor: bool = True,
) -> Dict[str, Any]:
    explain = METHODS[name].explainer(model, opts, trained)
    with torch.no_grad():
        target = model(x).argmax(dim=1)
    t = measure(clock, lambda: explain(x, target), repeats)
    fwd = measure(clock, forwards(model, x, x.shape[0], x.shape[0]), max(repeats, 5))
    row: Dict[str, Any] = {
        "method": name,
        "batch": int(x.shape[0]),
        "size": int(x.shape[-1]),
        "s_per_image": t["wall"] / x.shape[0],
        "cpu_s_per_image": t["cpu"] / x.shape[0],
        "x_forward": t["wall"] / fwd["wall"],
        "floor": None,
        "floor_label": None,
        "x_floor": None,
    }
    if with_floor:
        floor_fn, label = floor_of(name, model, x, opts)
        row["floor_label"] = label
        if floor_fn is not None:
            f = measure(clock, floor_fn, repeats)
            row["floor"] = f["wall"] / x.shape[0]
            row["x_floor"] = t["wall"] / f["wall"]
    print(
        f"  {name:14s} B={row['batch']:<3d} {row['size']}px  "
        f"{row['s_per_image']:9.4f} s/img  {row['x_forward']:8.1f}x fwd  "
        + (f"{row['x_floor']:5.2f}x floor ({label})" if row["x_floor"] else ""),
        flush=True,
    )
    return row


def _fmt(v: Optional[float], spec: str) -> str:
    return "-" if v is None else format(v, spec)


def markdown(title: str, rows: List[Dict[str, Any]]) -> str:
    lines = [
        f"### {title}",
        "",
        "| method | batch | size | s / image | CPU s / image | x fwd | floor "
        "| x floor |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['batch']} | {r['size']} | "
            f"{_fmt(r['s_per_image'], '.4g')} | {_fmt(r['cpu_s_per_image'], '.4g')} | "
            f"{_fmt(r['x_forward'], '.3g')} | {r['floor_label'] or '-'} | "
            f"{_fmt(r['x_floor'], '.2f')} |"
        )
    return "\n".join(lines) + "\n"


class RowLog:
    """The rows of a speed run, one JSON line each, appended as they are measured."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def rows(self, settings: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
        """``{json.dumps(where): row}`` of the earlier rows with these settings."""
        out: Dict[str, Dict[str, Any]] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a kill
                    continue
                if rec.get("settings") == settings:
                    out.setdefault(json.dumps(rec["where"]), rec["row"])
        return out

    def append(self, record: Dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto", help="auto (cpu, + cuda if present)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--growth-methods", nargs="+", default=GROWTH_METHODS)
    p.add_argument("--batch", type=int, default=1, help="batch of the main table")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--base-batch-sizes", type=int, nargs="+", default=[1, 4])
    p.add_argument("--image-sizes", type=int, nargs="+", default=[160, 224, 288])
    p.add_argument("--tis-masks", type=int, default=DEFAULT_OPTIONS.tis_masks)
    p.add_argument("--ig-steps", type=int, default=DEFAULT_OPTIONS.n_steps)
    p.add_argument("--rise-masks", type=int, default=DEFAULT_OPTIONS.rise_masks)
    p.add_argument("--quick", action="store_true", help="small settings")
    p.add_argument(
        "--models",
        nargs="+",
        choices=["embedded", "vit_base"],
        default=["embedded", "vit_base"],
        help="which models' tables to make (the embedded default's change with it; "
        "ViT-B's, with random weights, do not)",
    )
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/speed"))
    args = p.parse_args(argv)
    if args.quick:
        args.tis_masks, args.ig_steps, args.rise_masks = 64, 4, 64
        args.batch_sizes, args.base_batch_sizes = [1, 4], [1]
        args.image_sizes, args.repeats = [224], 2
    torch.set_num_threads(args.threads)
    opts = MethodOptions(
        tis_masks=args.tis_masks, n_steps=args.ig_steps, rise_masks=args.rise_masks
    )
    devices = [torch.device("cpu")]
    if args.device == "auto":
        if torch.cuda.is_available():
            devices.append(torch.device("cuda"))
    else:
        devices = [torch.device(args.device)]
    result: Dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "torch": torch.__version__,
            "timm": timm.__version__,
            "threads": args.threads,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "settings": {k: str(v) for k, v in vars(args).items()},
        "tables": {},
    }
    md = [f"<!-- made by benchmarks/speed.py; machine: {result['machine']} -->\n"]
    # every row is appended to rows.jsonl as it is measured; a rerun with the same
    # settings and versions takes the rows measured before and measures the rest
    settings = {
        k: result["machine"][k] for k in ("platform", "torch", "timm", "threads")
    }
    settings.update(
        {k: str(getattr(args, k)) for k in ("repeats", "tis_masks", "ig_steps")}
    )
    settings["rise_masks"] = str(args.rise_masks)
    log = RowLog(args.out / "rows.jsonl")
    done = log.rows(settings)
    if done:
        print(f"resuming: {len(done)} rows measured before in {log.path}", flush=True)
    for device in devices:
        clock = Clock(device)
        tables: Dict[str, List[Dict[str, Any]]] = {}

        def table(model, extras, methods, batches, floor, key):
            rows = []
            size = ViTAdapter.of(model).image_size[1]
            for m in methods:
                for b in batches:
                    where = [str(device), key, m, b, size]
                    row = done.get(json.dumps(where))
                    if row is None:
                        x = images(model, b, device)
                        row = run_one(
                            model, extras, m, x, opts, clock, args.repeats, floor
                        )
                        log.append({"settings": settings, "where": where, "row": row})
                    rows.append(row)
            return rows

        if "embedded" in args.models:
            print(f"== {device}: embedded default model", flush=True)
            model, extras = embedded(device)
            tables["embedded"] = table(
                model, extras, args.methods, [args.batch], True, "embedded"
            )
            print(f"== {device}: embedded, batch growth", flush=True)
            tables["embedded_batch"] = table(
                model, extras, args.methods, args.batch_sizes, False, "embedded_batch"
            )
        if "vit_base" in args.models:
            print(f"== {device}: vit_base_patch16_224 at 224", flush=True)
            model, extras = vit_base(224, device)
            tables["vit_base"] = table(
                model, extras, args.methods, [args.batch], True, "vit_base"
            )
            print(f"== {device}: vit_base, batch growth", flush=True)
            tables["vit_base_batch"] = table(
                model,
                extras,
                args.growth_methods,
                args.base_batch_sizes,
                False,
                "vit_base_batch",
            )
            print(f"== {device}: vit_base, image-size growth", flush=True)
            rows = []
            for size in args.image_sizes:
                model, extras = vit_base(size, device)
                rows += table(
                    model, extras, args.growth_methods, [args.batch], False, "size"
                )
            tables["vit_base_size"] = sorted(
                rows, key=lambda r: (r["method"], r["size"])
            )
        result["tables"][str(device)] = tables
        titles = {
            "embedded": f"Embedded default (64 px, 64 patches), batch {args.batch}",
            "embedded_batch": "Embedded default: batch-size growth",
            "vit_base": f"vit_base_patch16_224 (random weights), batch {args.batch}",
            "vit_base_batch": "vit_base_patch16_224: batch-size growth",
            "vit_base_size": f"vit_base_patch16: image-size growth, batch {args.batch}",
        }
        for key, title in titles.items():
            if key in tables:
                md.append(markdown(f"{title} ({device})", tables[key]))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed.json").write_text(json.dumps(result, indent=1))
    (args.out / "speed.md").write_text("\n".join(md))
    print("\n".join(md))
    return result


if __name__ == "__main__":
    main()
