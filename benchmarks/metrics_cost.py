"""Cost of insertion + deletion on vit_base_patch16_224 (random weights).

The floor is one full-image forward pass per curve point: ``2 * (S + 1)`` forwards per
image for both curves with ``S`` steps, timed at the same batch size as the metric.
Token removal (TokenMask "drop") runs shorter sequences (deletion at step k keeps
N - k tokens, insertion keeps k), reuses the clean forward for the full-input points
and evaluates the empty input once; pixel baselines run full-size images at every
point. Printed: wall and CPU time (CPU time of this process, robust to other load on
the machine), ratios to the floor, and the cost per curve point.

    python benchmarks/metrics_cost.py --images 2 --n-steps 14 --batch 30
"""

from __future__ import annotations

import argparse
import time

import timm
import torch

from captum_vit.metrics import insertion_deletion_curves


def clocks():
    """(wall, CPU) seconds; CPU time of this process is robust to other load."""
    return time.perf_counter(), time.process_time()


def forward_time_per_image(model, batch: int, repeats: int):
    x = torch.randn(batch, 3, 224, 224)
    with torch.no_grad():
        model(x[:2])  # warm-up
        wall, cpu = [], []
        for _ in range(repeats):
            w0, c0 = clocks()
            model(x)
            w1, c1 = clocks()
            wall.append(w1 - w0)
            cpu.append(c1 - c0)
    return min(wall) / batch, min(cpu) / batch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--n-steps", type=int, default=14)
    p.add_argument("--batch", type=int, default=30, help="max_examples_per_batch")
    p.add_argument("--repeats", type=int, default=2, help="floor timing repeats")
    p.add_argument("--baselines", default="black,blur")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared machine, multi-threaded runs "
        "spend their time waiting for preempted sibling threads; 0 keeps torch's)",
    )
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_224", pretrained=False).eval()
    b, s = args.images, args.n_steps
    images = torch.randn(b, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    attr = torch.randn(b, 196, generator=torch.Generator().manual_seed(2))
    points = b * 2 * (s + 1)
    print(
        f"vit_base_patch16_224 (random weights), {b} images, {s} steps "
        f"({s + 1} points per curve, {points} curve points), batch {args.batch}, "
        f"{torch.get_num_threads()} threads"
    )

    floor_before = forward_time_per_image(model, args.batch, args.repeats)
    rows = []
    variants = [("tokens", "tokens")] + [
        (name, name) for name in args.baselines.split(",") if name
    ]
    for label, removal in variants:
        w0, c0 = clocks()
        insertion_deletion_curves(
            model,
            images,
            attr,
            n_steps=s,
            removal=removal,
            max_examples_per_batch=args.batch,
        )
        w1, c1 = clocks()
        rows.append((label, w1 - w0, c1 - c0))
    floor_after = forward_time_per_image(model, args.batch, args.repeats)
    floors = []
    for k, name in enumerate(("wall", "CPU")):
        per_image = (floor_before[k] + floor_after[k]) / 2
        floors.append(per_image * points)
        print(
            f"forward floor ({name}): {per_image * 1e3:.0f} ms/image (before "
            f"{floor_before[k] * 1e3:.0f}, after {floor_after[k] * 1e3:.0f}) -> "
            f"{floors[-1]:.1f} s for {points} points"
        )
    print(
        f"\n{'removal':<10s} {'wall (s)':>9s} {'x floor':>8s} {'CPU (s)':>8s} "
        f"{'x floor':>8s} {'CPU ms/point':>13s}"
    )
    for label, wall, cpu in rows:
        print(
            f"{label:<10s} {wall:9.1f} {wall / floors[0]:8.2f} {cpu:8.1f} "
            f"{cpu / floors[1]:8.2f} {cpu / points * 1e3:13.0f}"
        )
    tok = rows[0]
    for label, wall, cpu in rows[1:]:
        print(
            f"per point, tokens are {cpu / tok[2]:.2f}x cheaper than {label} (CPU), "
            f"{wall / tok[1]:.2f}x (wall)"
        )


if __name__ == "__main__":
    main()
