"""AttnLRP's cost against one forward + one backward, with LXT 2.1 beside it.

Per model and batch size, each round runs, back to back on the same images and
targets: one forward + one backward of the target logits with respect to the images
(the floor: what any gradient method pays), ``AttnLRP(model)``, ``AttnLRP(model,
variant="cp-lrp")`` and LXT's efficient AttnLRP (its rule functions patched into the
model's classes, see ``attnlrp_lxt_compare.py``). Ratios are the median over rounds
of each round's ratio to that round's floor, so that load drifting on a shared
machine cancels. One thread (``torch.set_num_threads(1)``).

Usage::

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD \\
        python benchmarks/attnlrp_speed.py [--rounds-small 15] [--rounds-base 5]
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time
from typing import Callable, Dict, List

import torch

from captum_vit import AttnLRP, zoo

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import attnlrp_lxt_compare as lxt_side  # noqa: E402


def floor(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor) -> None:
    xx = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(xx)
        torch.autograd.grad(logits.gather(1, t[:, None]).sum(), xx)


def run(name: str, model: torch.nn.Module, size: int, batch: int, rounds: int) -> None:
    g = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, 3, size, size, generator=g)
    with torch.no_grad():
        t = model(x).argmax(1)
    attn, cp = AttnLRP(model), AttnLRP(model, variant="cp-lrp")
    calls: Dict[str, Callable[[], object]] = {
        "fwd+bwd": lambda: floor(model, x, t),
        "AttnLRP": lambda: attn.attribute(x, target=t),
        "CP-LRP": lambda: cp.attribute(x, target=t),
        "LXT AttnLRP": lambda: lxt_side.lxt_relevance(model, x, t, "timm", "attnlrp"),
    }
    for f in calls.values():  # warm-up
        f()
    times: Dict[str, List[float]] = {k: [] for k in calls}
    for _ in range(rounds):
        for k, f in calls.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    base = times["fwd+bwd"]
    cells = []
    for k in calls:
        ratio = statistics.median(a / b for a, b in zip(times[k], base))
        cells.append(f"{statistics.median(times[k]):.3f} s ({ratio:.2f}×)")
    print(f"| {name} | {batch} | " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds-small", type=int, default=15)
    parser.add_argument("--rounds-base", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    import timm

    print(f"torch {torch.__version__}, timm {timm.__version__}, 1 thread")
    print("| model | batch | fwd+bwd | AttnLRP | CP-LRP | LXT AttnLRP |")
    print("|---|---|---|---|---|---|")
    default = zoo.load_default_model()
    torch.manual_seed(0)
    base = timm.create_model("vit_base_patch16_224", pretrained=False).eval()
    for batch in (1, 8):
        run("embedded default (64 px)", default, 64, batch, args.rounds_small)
    for batch in (1, 8):
        run("vit_base_patch16_224 (random)", base, 224, batch, args.rounds_base)


if __name__ == "__main__":
    main()
