"""Speed of SkipPLUS / PLUS wrappers relative to the wrapped method on the full model.

Prints, per model, the median wall time of IntegratedGradients (``n_steps``, same
batch, target and ``internal_batch_size``) on the full model and of
``SkipPLUSWrapper(IntegratedGradients(model))`` with the same settings, their ratio,
and the ratio predicted by counting block passes (SkipPLUS runs
``sum_{l >= ceil(L/2)} (L - l)`` blocks per evaluation where the full model runs L;
21 vs 12 on ViT-B). The same for InputXGradient, whose SkipPLUS takes one
forward/backward from block ceil(L/2) for all layers (estimate: a no-grad forward of
the skipped blocks plus forward + backward of the rest, backward = 2 forwards), and
PLUS(IG) with ``--plus``.
Calls of the compared methods are interleaved so that background load affects both
alike; wall and process CPU time are both reported (on a shared machine the CPU
ratio is the steadier one).

Models: vit_base_patch16_224 (random weights, 224x224) and the embedded model
(``captum_vit.zoo.load_default_model()``) when its weights are present.

Usage: python benchmarks/plus_speed.py [--batch B] [--n-steps N] [--repeats R]
       [--threads T] [--plus] [--skip-vitb]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from typing import Callable, Dict, List, Optional, Tuple

import timm
import torch
import torch.nn as nn
from captum.attr import InputXGradient, IntegratedGradients

from captum_vit.attr._plus import PLUSWrapper, SkipPLUSWrapper, skipplus_layers
from captum_vit.methods import DEFAULT_OPTIONS


def interleaved_medians(
    fns: Dict[str, Callable[[], object]], repeats: int
) -> Dict[str, Tuple[float, float]]:
    """Median (wall, CPU) seconds of each function, calls interleaved round-robin.

    CPU time is the process time of all threads; it is less sensitive than wall time
    to other jobs on a shared machine, so both are reported.
    """
    times: Dict[str, List[Tuple[float, float]]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            times[name].append((time.perf_counter() - w0, time.process_time() - c0))
    return {
        k: (
            statistics.median(w for w, _ in v),
            statistics.median(c for _, c in v),
        )
        for k, v in times.items()
    }


def block_ratio(num_layers: int, layers: List[int]) -> float:
    """Per-layer path: block passes of the wrapper per evaluation over the full
    model's (forward and backward alike)."""
    return sum(num_layers - lay for lay in layers) / num_layers


def one_pass_ratio(num_layers: int, first: int) -> float:
    """One-pass path (Saliency/IxG): a no-grad forward of blocks 0..first-1, then
    forward + backward of blocks first..L-1, over forward + backward of all L
    blocks; a backward counted as two forwards."""
    return (first + 3 * (num_layers - first)) / (3 * num_layers)


def load_models(skip_vitb: bool) -> List[Tuple[str, nn.Module, int]]:
    models = []
    if not skip_vitb:
        torch.manual_seed(0)
        vitb = timm.create_model("vit_base_patch16_224", pretrained=False).eval()
        models.append(("vit_base_patch16_224 (random)", vitb, 224))
    try:
        from captum_vit.zoo import load_default_config, load_default_model

        size = int(load_default_config()["image_size"])
        models.append(("embedded default model", load_default_model(), size))
    except (ImportError, FileNotFoundError, AttributeError) as err:
        print(f"embedded model: not available ({type(err).__name__}: {err})")
    return models


def bench_model(
    name: str,
    model: nn.Module,
    size: int,
    batch: int,
    n_steps: int,
    internal_batch_size: Optional[int],
    repeats: int,
    with_plus: bool,
) -> None:
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    target = torch.zeros(batch, dtype=torch.long)
    depth = len(model.blocks)
    ig_kw = dict(
        target=target, n_steps=n_steps, internal_batch_size=internal_batch_size
    )
    ig, ixg = IntegratedGradients(model), InputXGradient(model)
    skip_ig, skip_ixg = SkipPLUSWrapper(ig), SkipPLUSWrapper(ixg)
    runs: Dict[str, Callable[[], object]] = {
        "IG": lambda: ig.attribute(x, **ig_kw),
        "SkipPLUS(IG)": lambda: skip_ig.attribute(x, **ig_kw),
        "IxG": lambda: ixg.attribute(x, target=target),
        "SkipPLUS(IxG)": lambda: skip_ixg.attribute(x, target=target),
    }
    if with_plus:
        plus_ig = PLUSWrapper(ig)
        runs["PLUS(IG)"] = lambda: plus_ig.attribute(x, **ig_kw)
    # warm-up (allocator, thread pools) with one cheap call of each kind
    ig.attribute(x, target=target, n_steps=2)
    skip_ig.attribute(x, target=target, n_steps=2)
    med = interleaved_medians(runs, repeats)
    skip = skipplus_layers(depth)
    expected = {
        "SkipPLUS(IG)": block_ratio(depth, skip),
        "SkipPLUS(IxG)": one_pass_ratio(depth, skip[0]),
        "PLUS(IG)": block_ratio(depth, list(range(depth))),
    }
    base = {"SkipPLUS(IG)": "IG", "SkipPLUS(IxG)": "IxG", "PLUS(IG)": "IG"}
    print(
        f"\n{name}: depth {depth}, {size}x{size}, batch {batch}, n_steps {n_steps}, "
        f"internal_batch_size {internal_batch_size}, SkipPLUS layers "
        f"{skip[0]}..{skip[-1]}, median of {repeats}"
    )
    print("| method | wall s | CPU s | wall ratio | CPU ratio | expected |")
    print("|---|---|---|---|---|---|")
    for key, (wall, cpu) in med.items():
        if key in base:
            ref_wall, ref_cpu = med[base[key]]
            ratios = f"{wall / ref_wall:.2f}x | {cpu / ref_cpu:.2f}x vs {base[key]}"
            exp = f"{expected[key]:.2f}x"
        else:
            ratios, exp = "1.00x | 1.00x", "1.00x"
        print(f"| {key} | {wall:.3f} | {cpu:.3f} | {ratios} | {exp} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--n-steps", type=int, default=DEFAULT_OPTIONS.n_steps)
    ap.add_argument("--internal-batch-size", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--plus", action="store_true", help="also time PLUS(IG)")
    ap.add_argument("--skip-vitb", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require")
    print(f"torch {torch.__version__}, threads={args.threads}, CPU")
    for name, model, size in load_models(args.skip_vitb):
        bench_model(
            name,
            model,
            size,
            args.batch,
            args.n_steps,
            args.internal_batch_size,
            args.repeats,
            args.plus,
        )


if __name__ == "__main__":
    main()
