"""Grad-SAM, Partial LRP and attention Grad-CAM against their floors (issue 28).

For each model (the embedded default; ``vit_base_patch16_224`` with random weights)
and batch size (1 and 8) this times, in the same run and on the same inputs:

- ``fwd+bwd``: one plain forward pass of the batch (timm's own attention kernel) and
  one backward of the summed target logits to the inputs: the floor of Grad-SAM and
  attention Grad-CAM;
- ``fwd + LRP``: one plain forward under ``no_grad`` plus one pass of
  :func:`captum_vit.vit.lrp.propagate` down through the last block on a trace
  recorded beforehand: the floor of Partial LRP ("one LRP pass");
- ``gradsam``, ``gradcam-attention`` and ``partial-lrp`` as the registry builds them
  (``captum_vit.methods.METHODS``: validation, eval mode and the guard included).

Times are the minimum over repeated calls, the floors and the methods called in
turn one call at a time (:func:`speed.measure_interleaved`: at least ``--min-runs``
calls and ``--seconds`` of calls each), so that a load spike falls on both sides of
a ratio. Run it with one thread on an otherwise idle machine::

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD \\
        python benchmarks/chefer_baselines_speed.py --threads 1
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List

import timm
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import Clock, measure_interleaved  # noqa: E402

from captum_vit.methods import METHODS  # noqa: E402
from captum_vit.vit import ViTAdapter, record_attention  # noqa: E402
from captum_vit.vit.lrp import lrp_trace, propagate  # noqa: E402

NAMES = ["gradsam", "gradcam-attention", "partial-lrp"]


def fwd_bwd(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> Callable[[], Any]:
    def run() -> None:
        xi = x.clone().requires_grad_(True)
        torch.autograd.grad(model(xi).gather(1, t[:, None]).sum(), xi)

    return run


def fwd_lrp(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> Callable[[], Any]:
    adapter = ViTAdapter(model)
    last = adapter.num_layers - 1
    with torch.no_grad(), record_attention(adapter, layers=[last]) as rec, lrp_trace(
        adapter
    ) as trace:
        adapter.logits(x)
    attentions = rec.attentions

    def run() -> None:
        with torch.no_grad():
            model(x)
        propagate(adapter, trace, attentions, t, stop=last)

    return run


def models(names: List[str]) -> List[tuple]:
    from captum_vit.zoo import load_default_model

    out = []
    if "embedded" in names:
        out.append(("embedded default", load_default_model()))
    if "vit-b" in names:
        torch.manual_seed(0)
        vit_b = timm.create_model("vit_base_patch16_224", pretrained=False).eval()
        out.append(("ViT-B/16 (random weights)", vit_b))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument(
        "--seconds", type=float, default=3.0, help="timed runs per call, at least"
    )
    parser.add_argument("--min-runs", type=int, default=5, help="runs per call")
    parser.add_argument(
        "--models",
        nargs="+",
        default=["embedded", "vit-b"],
        choices=["embedded", "vit-b"],
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    clock = Clock(torch.device("cpu"))
    print(
        f"torch {torch.__version__}, timm {timm.__version__}, "
        f"{torch.get_num_threads()} thread(s), {platform.processor() or 'cpu'}"
    )
    print("| model | batch | method | s / image | floor | floor s / image | x floor |")
    print("|---|---|---|---|---|---|---|")
    for label, model in models(args.models):
        size = ViTAdapter(model).image_size
        for b in args.batches:
            g = torch.Generator().manual_seed(b)
            x = torch.randn(b, 3, size[0], size[1], generator=g)
            with torch.no_grad():
                t = model(x).argmax(1)
            calls: Dict[str, Callable[[], Any]] = {
                "fwd+bwd": fwd_bwd(model, x, t),
                "fwd + LRP": fwd_lrp(model, x, t),
            }
            for name in NAMES:
                explain = METHODS[name].build(model)
                calls[name] = lambda e=explain: e(x, t)
            for call in calls.values():  # warm-up
                call()
            best = measure_interleaved(clock, calls, args.seconds, args.min_runs)
            for name in NAMES:
                floor = "fwd + LRP" if name == "partial-lrp" else "fwd+bwd"
                ratio = best[name] / best[floor]
                extra = ""
                if name == "partial-lrp":
                    extra = f" ({best[name] / best['fwd+bwd']:.2f}x fwd+bwd)"
                print(
                    f"| {label} | {b} | {name} | {best[name] / b:.4g} | {floor} | "
                    f"{best[floor] / b:.4g} | {ratio:.2f}{extra} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
