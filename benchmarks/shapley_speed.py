"""Inference cost of ViTShapley.attribute relative to one classifier forward.

``ViTShapley.attribute`` runs the explainer (backbone + one extra block + MLP head)
and the surrogate's full-image forward (for ``v(1)``; ``v(0)`` is cached). The ratio to
a plain classifier forward on the same batch is reported per batch size, minimum of
``--repeats`` interleaved timed runs after a warm-up, under ``torch.no_grad()``. Usage::

    python benchmarks/shapley_speed.py --threads 2             # shipped default
    python benchmarks/shapley_speed.py --run runs/shapley_d16
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import torch

from captum_vit.attr._vit_shapley import ViTShapley


def timeit(fns: Dict[str, Callable[[], object]], repeats: int) -> Dict[str, float]:
    """Minimum wall time of each function over ``repeats`` interleaved runs.

    Interleaving (a, b, c, a, b, c, ...) exposes every function to the same load, and
    the minimum is the least disturbed run on a shared machine.
    """
    for fn in fns.values():
        fn()
    times: Dict[str, list] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: min(v) for k, v in times.items()}


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", type=Path, default=None)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from shapley_accuracy import load_models

    from captum_vit.zoo import make_scenes, preprocess

    classifier, surrogate, explainer, size = load_models(args.run)
    vs = ViTShapley(explainer, surrogate)
    rows = []
    for b in args.batch_sizes:
        x = preprocess(make_scenes(b, split="test", seed=5, image_size=size).images)
        target = torch.zeros(b, dtype=torch.long)
        with torch.no_grad():
            t = timeit(
                {
                    "classifier": lambda: classifier(x),
                    "explainer": lambda: explainer(x),
                    "attribute": lambda: vs.attribute(x, target=target),
                },
                args.repeats,
            )
        t_cls, t_exp, t_attr = t["classifier"], t["explainer"], t["attribute"]
        row = {
            "batch": b,
            "classifier_s": t_cls,
            "explainer_forward_s": t_exp,
            "attribute_s": t_attr,
            "ratio": t_attr / t_cls,
        }
        rows.append(row)
        print(
            f"batch {b:3d}: classifier {t_cls * 1e3:8.2f} ms  explainer "
            f"{t_exp * 1e3:8.2f} ms  attribute {t_attr * 1e3:8.2f} ms  "
            f"ratio {row['ratio']:.2f}x",
            flush=True,
        )
    out = args.out or (args.run or Path("runs/shapley_default")) / "bench"
    out.mkdir(parents=True, exist_ok=True)
    result = {"threads": args.threads, "rows": rows}
    (out / "speed.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
