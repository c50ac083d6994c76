"""Deletion / insertion of IG vs SkipPLUS(IG) and IxG vs SkipPLUS(IxG) on the
embedded model.

Held-out Fashion-MNIST scenes (``captum_vit.zoo.load_default_scenes``), target = the
scene's label, attributions of every method scored with ``captum_vit.metrics``
insertion and deletion at their defaults (patch tokens removed from the transformer,
softmax probability of the target, trapezoid area on a [0, 1] axis; pixel-level
attributions such as plain IG are summed per patch). Insertion: higher is better;
deletion: lower is better. Also shown for context: PLUS(IG), PLUS(IxG) (= CAT),
GenAtt, SkipPLUS(GenAtt) and random scores. Printed: mean ± standard error over the
images, and the paired difference SkipPLUS - plain with the share of images where
SkipPLUS is better. The figures are what they are; nothing is tuned to them.

Usage: python benchmarks/plus_quality.py [--n 200] [--batch 25] [--n-steps 20]
       [--weights PATH] [--threads 2]
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from typing import Callable, Dict, List, Tuple

import torch
from captum.attr import InputXGradient, IntegratedGradients

from captum_vit import GenAtt
from captum_vit.attr._plus import PLUSWrapper, SkipPLUSWrapper
from captum_vit.methods import DEFAULT_OPTIONS


def mean_sem(v: torch.Tensor) -> Tuple[float, float]:
    v = v.double()
    sem = float(v.std(unbiased=True)) / math.sqrt(v.numel()) if v.numel() > 1 else 0.0
    return float(v.mean()), sem


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="number of scenes")
    ap.add_argument("--batch", type=int, default=25)
    ap.add_argument(
        "--n-steps", type=int, default=DEFAULT_OPTIONS.n_steps, help="IG steps"
    )
    ap.add_argument("--seed", type=int, default=0, help="scene seed")
    ap.add_argument("--weights", default=None, help="weights file (default: shipped)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require")

    from captum_vit.metrics import deletion, insertion
    from captum_vit.zoo import (
        load_default_config,
        load_default_model,
        load_default_scenes,
    )

    model = load_default_model(weights=args.weights)
    inputs, scenes = load_default_scenes(n=args.n, seed=args.seed)
    labels = torch.as_tensor(scenes.labels)
    with torch.no_grad():
        acc = float((model(inputs).argmax(1) == labels).float().mean())
    ig, ixg = IntegratedGradients(model), InputXGradient(model)
    skip = SkipPLUSWrapper(ig)
    ig_kw = dict(n_steps=args.n_steps)
    methods: Dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
        "IG": lambda x, t: ig.attribute(x, target=t, **ig_kw),
        "SkipPLUS(IG)": lambda x, t: skip.attribute(x, target=t, **ig_kw),
        "PLUS(IG)": lambda x, t: PLUSWrapper(ig).attribute(x, target=t, **ig_kw),
        "IxG": lambda x, t: ixg.attribute(x, target=t),
        "SkipPLUS(IxG)": lambda x, t: SkipPLUSWrapper(ixg).attribute(x, target=t),
        "PLUS(IxG) = CAT": lambda x, t: PLUSWrapper(ixg).attribute(x, target=t),
        "GenAtt": lambda x, t: GenAtt(model).attribute(x, target=t),
        "SkipPLUS(GenAtt)": lambda x, t: SkipPLUSWrapper(GenAtt(model)).attribute(
            x, target=t
        ),
    }
    gen = torch.Generator().manual_seed(1)
    methods["random"] = lambda x, t: torch.rand(x.shape, generator=gen)

    scores: Dict[str, Dict[str, List[torch.Tensor]]] = {
        k: {"insertion": [], "deletion": [], "seconds": []} for k in methods
    }
    for start in range(0, args.n, args.batch):
        x = inputs[start : start + args.batch]
        t = labels[start : start + args.batch]
        for name, fn in methods.items():
            t0 = time.perf_counter()
            attr = fn(x, t)
            scores[name]["seconds"].append(torch.tensor([time.perf_counter() - t0]))
            scores[name]["insertion"].append(insertion(model, x, attr, target=t))
            scores[name]["deletion"].append(deletion(model, x, attr, target=t))
    res = {
        k: {m: torch.cat(v[m]) for m in ("insertion", "deletion", "seconds")}
        for k, v in scores.items()
    }
    cfg = load_default_config(weights=args.weights)
    print(
        f"embedded model: depth {cfg.get('depth')}, embed {cfg.get('embed_dim')}, "
        f"patch {cfg.get('patch_size')}, {cfg.get('image_size')}px; "
        f"{args.n} held-out scenes (seed {args.seed}), accuracy {acc:.3f}; "
        f"IG n_steps={args.n_steps}; target = label; token removal, probability"
    )
    print(
        "\n| method | insertion (higher better) | deletion (lower better) | s/batch |"
    )
    print("|---|---|---|---|")
    for name, r in res.items():
        ins, ins_se = mean_sem(r["insertion"])
        dele, dele_se = mean_sem(r["deletion"])
        sec = float(r["seconds"].mean())
        print(
            f"| {name} | {ins:.4f} ± {ins_se:.4f} | {dele:.4f} ± {dele_se:.4f} | "
            f"{sec:.2f} |"
        )
    print("\nPaired, SkipPLUS minus plain (same images):")
    print("| pair | Δ insertion | SkipPLUS better | Δ deletion | SkipPLUS better |")
    print("|---|---|---|---|---|")
    for plain in ("IG", "IxG", "GenAtt"):
        a, b = res[plain], res[f"SkipPLUS({plain})"]
        d_ins = b["insertion"] - a["insertion"]
        d_del = b["deletion"] - a["deletion"]
        mi, si = mean_sem(d_ins)
        md, sd = mean_sem(d_del)
        print(
            f"| SkipPLUS({plain}) - {plain} | {mi:+.4f} ± {si:.4f} | "
            f"{float((d_ins > 0).float().mean()):.0%} | {md:+.4f} ± {sd:.4f} | "
            f"{float((d_del < 0).float().mean()):.0%} |"
        )


if __name__ == "__main__":
    main()
