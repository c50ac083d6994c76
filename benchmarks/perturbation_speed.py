"""Speed of ViT-CX and Transformer Input Sampling relative to their forward-pass floor.

For each model (vit_base_patch16_224 with random weights, and the embedded zoo model
when its weights exist) and one image, prints the time per explanation at default
settings, the number of ViT-CX masks K, and each method's time as a ratio to its
forward-pass floor:

- ViT-CX needs 2K + 1 forward passes (the feature pass, which also gives p(X), and a
  masked + a noise-only pass per mask); floor = (2K + 1) x the per-image forward time
  at the batch size the scoring uses, min(perturbations_per_eval, 2K).
- TIS needs one full forward (activations, predicted class) and one forward per mask
  at int(tokens_ratio * N) patch tokens; floor = 1 x the per-image full forward at
  batch 1 + n_masks x the per-image token-dropped forward (TokenMask "drop") at batch
  min(perturbations_per_eval, n_masks).

The floor is timed alternately with the method (slow methods: once before and once
after, averaged; fast ones: repeated for --min-total seconds, minimum of each), since
the machine may be shared. On a heavily shared CPU small models time more reliably with
--threads 1 (two threads stall on each other). Target
(issue 3): <= 1.3x the floor for both methods.

Usage: python benchmarks/perturbation_speed.py [--tis-masks 1024 256] [--threads 2]
"""

from __future__ import annotations

import argparse
import time
from typing import Callable, List, Optional, Tuple

import timm
import torch
import torch.nn as nn

from captum_vit.attr._tis import TransformerInputSampling
from captum_vit.attr._vitcx import ViTCX
from captum_vit.methods import DEFAULT_OPTIONS
from captum_vit.vit import TokenMask, ViTAdapter


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def paired(
    method: Callable[[], object], floor: Callable[[], float], min_total: float = 5.0
) -> Tuple[float, float]:
    """Time a method and its floor alternately on a possibly shared CPU.

    ``floor()`` runs the reference forwards and returns the floor estimate. Slow
    methods (one call >= ``min_total`` s) run once between two floor measurements,
    whose mean is used; fast ones alternate with the floor until ``min_total`` s and
    report the minimum of each (the least disturbed runs).

    Returns:
        ``(method seconds, floor seconds)``.
    """
    floors = [floor()]
    times: List[float] = []
    while not times or (sum(times) < min_total and len(times) < 50):
        times.append(timed(method))
        floors.append(floor())
    if len(times) == 1:
        return times[0], sum(floors) / len(floors)
    return min(times), min(floors)


def forward_floor(
    model: nn.Module, x: torch.Tensor, batch: int, count: int
) -> Callable[[], float]:
    """A floor function: ``count`` x the per-image forward time at ``batch``."""
    xb = x.expand(batch, -1, -1, -1).contiguous()

    def run() -> float:
        with torch.no_grad():
            return timed(lambda: model(xb)) / batch * count

    run()  # warm-up
    return run


def dropped_floor(
    model: nn.Module, x: torch.Tensor, batch: int, n_keep: int, count: int
) -> Callable[[], float]:
    """A floor function: ``count`` x the per-image time of a forward on ``n_keep``
    patch tokens (TokenMask drop) at ``batch``."""
    n = ViTAdapter(model).num_patches
    g = torch.Generator().manual_seed(0)
    keep = torch.zeros(batch, n, dtype=torch.bool)
    keep.scatter_(1, torch.rand(batch, n, generator=g).argsort(dim=1)[:, :n_keep], True)
    xb = x.expand(batch, -1, -1, -1).contiguous()
    masker = TokenMask(model, mode="drop")

    def run() -> float:
        with torch.no_grad():
            return timed(lambda: masker(xb, keep)) / batch * count

    run()
    return run


def bench_vitcx(
    model: nn.Module, x: torch.Tensor, ppe: int, min_total: float
) -> Tuple[float, int, float, float]:
    """(time per explanation, K, floor, mask-generation time) for one image."""
    explainer = ViTCX(model)
    t_masks = timed(lambda: explainer.masks(x))
    k = explainer.masks(x)[0].shape[0]
    floor = forward_floor(model, x, max(1, min(ppe, 2 * k)), 2 * k + 1)
    t, f = paired(
        lambda: explainer.attribute(x, perturbations_per_eval=ppe, seed=0),
        floor,
        min_total,
    )
    return t, k, f, t_masks


def bench_tis(
    model: nn.Module, x: torch.Tensor, n_masks: int, ppe: int, min_total: float
) -> Tuple[float, int, float, float]:
    """(time per explanation, masks, floor, mask-generation time) for one image."""
    explainer = TransformerInputSampling(model, n_masks=n_masks)
    t_masks = timed(lambda: explainer.masks(x, seed=0))
    m = explainer.masks(x, seed=0)[0].shape[0]
    n_keep = explainer.n_keep(ViTAdapter(model).num_patches)
    full = forward_floor(model, x, 1, 1)
    dropped = dropped_floor(model, x, max(1, min(ppe, m)), n_keep, m)
    t, f = paired(
        lambda: explainer.attribute(x, perturbations_per_eval=ppe, seed=0),
        lambda: full() + dropped(),
        min_total,
    )
    return t, m, f, t_masks


def report(
    label: str,
    model: nn.Module,
    x: torch.Tensor,
    tis_masks: List[int],
    ppe: int,
    min_total: float,
) -> None:
    print(f"\n## {label}: input {tuple(x.shape)}, perturbations_per_eval={ppe}")
    with torch.no_grad():  # warm-up, so the first timed call pays no allocation cost
        model(x)
    print("| method | setting | masks | s / explanation | floor s | ratio | masks s |")
    print("|---|---|---|---|---|---|---|")
    t, k, floor, t_m = bench_vitcx(model, x, ppe, min_total)
    print(
        f"| ViT-CX | default (threshold 0.1, sigma 0.1) | K={k} | {t:.2f} | "
        f"{floor:.2f} | {t / floor:.2f}x | {t_m:.2f} |",
        flush=True,
    )
    for n in tis_masks:
        setting = "default" if n == DEFAULT_OPTIONS.tis_masks else "REDUCED"
        t, m, floor, t_m = bench_tis(model, x, n, ppe, min_total)
        print(
            f"| TIS | {setting} (n_masks={n}, ratio 0.5) | {m} | {t:.2f} | "
            f"{floor:.2f} | {t / floor:.2f}x | {t_m:.2f} |",
            flush=True,
        )


def embedded(weights: Optional[str]) -> Optional[Tuple[nn.Module, torch.Tensor]]:
    """The zoo's trained model and one held-out scene, if the weights exist."""
    try:
        from captum_vit.zoo import (
            load_default_config,
            load_default_model,
            load_default_scenes,
        )

        model = load_default_model(weights=weights)
        size = int(load_default_config(weights=weights).get("image_size", 64))
        inputs, _ = load_default_scenes(n=1, seed=0, image_size=size)
        return model, inputs
    except Exception as err:  # no weights yet, no data: skip with a note
        print(f"\n(embedded model skipped: {type(err).__name__}: {err})")
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vit_base_patch16_224")
    ap.add_argument(
        "--tis-masks", type=int, nargs="+", default=[DEFAULT_OPTIONS.tis_masks]
    )
    ap.add_argument("--ppe", type=int, default=64, help="perturbations_per_eval")
    ap.add_argument(
        "--min-total",
        type=float,
        default=5.0,
        help="repeat fast methods (alternating with their floor) for this many seconds",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-random", action="store_true")
    ap.add_argument("--weights", default=None, help="zoo weights (default: shipped)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads={args.threads} torch={torch.__version__} timm={timm.__version__}")
    if not args.skip_random:
        torch.manual_seed(0)
        model = timm.create_model(args.model, pretrained=False).eval()
        size = ViTAdapter(model).image_size
        x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))
        report(
            f"{args.model} (random weights)",
            model,
            x,
            args.tis_masks,
            args.ppe,
            args.min_total,
        )
    found = embedded(args.weights)
    if found is not None:
        model, x = found
        report("embedded zoo model", model, x, args.tis_masks, args.ppe, args.min_total)


if __name__ == "__main__":
    main()
