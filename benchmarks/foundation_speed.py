"""Speed of AttentionRollout and GenAtt relative to plain forward/backward passes.

Prints, for vit_base_patch16_224 (random weights, 224x224) at batch 1 and 8:
rollout time / one plain forward (no grad, model's default fused attention), and
GenAtt time / one forward + backward of the target logit (parameters requiring grad).
Targets (issue 2): rollout <= 1.3x, GenAtt <= 1.5x.

Usage: python benchmarks/foundation_speed.py [--model NAME] [--repeats N] [--threads T]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import timm
import torch

from captum_vit import AttentionRollout, GenAtt
from captum_vit.vit import ViTAdapter


def median_time(fn: Callable[[], object], repeats: int, clock: Callable[[], float]):
    """Median of ``repeats`` timings of ``fn`` (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vit_base_patch16_224")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--cpu-time",
        action="store_true",
        help="time with process CPU time (steadier than wall time on a shared CPU)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False).eval()
    size = ViTAdapter(model).image_size
    rollout, genatt = AttentionRollout(model), GenAtt(model)
    clock = time.process_time if args.cpu_time else time.perf_counter
    unit = "CPU s" if args.cpu_time else "s"
    print(f"model={args.model} (random weights) threads={args.threads} clock={unit}")
    print(
        f"| batch | forward {unit} | rollout {unit} | ratio | fwd+bwd {unit} | "
        f"GenAtt {unit} | ratio |"
    )
    print("|---|---|---|---|---|---|---|")
    for b in args.batches:
        x = torch.randn(b, 3, *size)
        target = torch.zeros(b, dtype=torch.long)

        def forward() -> None:
            with torch.no_grad():
                model(x)

        def forward_backward() -> None:
            logits = model(x)
            logits.gather(1, target[:, None]).sum().backward()
            model.zero_grad(set_to_none=True)

        t_f = median_time(forward, args.repeats, clock)
        t_r = median_time(lambda: rollout.attribute(x), args.repeats, clock)
        t_fb = median_time(forward_backward, args.repeats, clock)
        t_g = median_time(
            lambda: genatt.attribute(x, target=target), args.repeats, clock
        )
        print(
            f"| {b} | {t_f:.3f} | {t_r:.3f} | {t_r / t_f:.2f}x | {t_fb:.3f} | "
            f"{t_g:.3f} | {t_g / t_fb:.2f}x |"
        )


if __name__ == "__main__":
    main()
