"""How close are ViT Shapley's amortised values to the true Shapley values?

Two settings (Covert et al., ICLR 2023, appendix H.2):

- ``--ground-truth exact`` (d <= 16 patches): exact Shapley values of the surrogate game
  by enumerating all 2**d coalitions;
- ``--ground-truth kernelshap`` (e.g. the embedded default, d = 64): KernelSHAP with
  paired sampling run to convergence (``--threshold``, Covert & Lee's criterion on the
  target class).

For each held-out test-split scene, the explainer's values (one forward pass) are
compared with the ground truth for the target (true) class and for the other classes:
Pearson and Spearman correlation over patches and L2 distance. Then an *independent*
KernelSHAP run (other seed, paired sampling) is followed batch by batch to count how
many game evaluations it needs to be as close to the ground truth as the explainer
(per image; and where the mean L2 curve crosses the explainer's mean L2).

Ground truth is cached per image in ``<out>/ground_truth_<kind>.pt``, with the digest
of the surrogate and the threshold it was computed for, so an interrupted run continues
and a cache of another game is refused. Usage::

    python benchmarks/shapley_accuracy.py --run runs/shapley_d16 --ground-truth exact \\
        --n-images 50 --threads 1
    python benchmarks/shapley_accuracy.py --ground-truth kernelshap --n-images 20
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from captum_vit.attr._vit_shapley import ViTShapley
from captum_vit.shapley import (
    SurrogateGame,
    classifier_digest,
    exact_shapley,
    kernel_shap,
    load_explainer,
    load_surrogate,
)


def pearson(a: Tensor, b: Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    den = float(a.norm() * b.norm())
    return float((a * b).sum()) / den if den > 0 else float("nan")


def spearman(a: Tensor, b: Tensor) -> float:
    ra = a.double().argsort().argsort().double()
    rb = b.double().argsort().argsort().double()
    return pearson(ra, rb)


def load_models(run: Optional[Path]):
    """(classifier, surrogate, explainer, image size) of a ``captum-vit
    train-shapley`` run folder, or of the shipped default."""
    from captum_vit.models import load_model
    from captum_vit.zoo import (
        load_default_config,
        load_default_explainer,
        load_default_model,
    )

    if run is None:
        explainer, surrogate = load_default_explainer()
        size = int(load_default_config()["image_size"])
        return load_default_model(), surrogate, explainer, size
    record = json.loads((run / "record.json").read_text())["classifier"]
    loaded = load_model(
        record["model"],
        record["checkpoint"],
        random_weights=record["weights"] == "random",
    )
    surrogate = load_surrogate(run / "surrogate.pt", loaded.model)
    explainer = None
    if (run / "explainer.pt").is_file():
        explainer = load_explainer(run / "explainer.pt", surrogate)
    return loaded.model, surrogate, explainer, int(loaded.input_size[0])


def crossing(curve: Sequence[Tuple[int, float]], level: float) -> Optional[int]:
    """First evaluation count whose error is <= level (None if never)."""
    for n, err in curve:
        if err <= level:
            return n
    return None


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", type=Path, default=None, help="training run (default: zoo)")
    p.add_argument("--ground-truth", choices=["exact", "kernelshap"], required=True)
    p.add_argument("--n-images", type=int, default=50)
    p.add_argument("--image-seed", type=int, default=2024)
    p.add_argument("--threshold", type=float, default=0.1, help="KernelSHAP GT")
    p.add_argument("--gt-max-evals", type=int, default=400_000)
    p.add_argument("--gt-batch", type=int, default=512)
    p.add_argument("--race-batch", type=int, default=64)
    p.add_argument("--race-max-evals", type=int, default=50_000)
    p.add_argument("--forward-batch", type=int, default=2048)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--gt-only", action="store_true", help="only the ground truth")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = args.out or (args.run or Path("runs/shapley_default")) / "bench"
    out.mkdir(parents=True, exist_ok=True)

    from captum_vit.zoo import make_scenes, preprocess

    classifier, surrogate, explainer, size = load_models(args.run)
    scenes = make_scenes(
        args.n_images, split="test", seed=args.image_seed, image_size=size
    )
    x = preprocess(scenes.images)
    labels = torch.as_tensor(scenes.labels)
    game = SurrogateGame(surrogate, mode="drop", batch_size=args.forward_batch)
    d = game.adapter.num_patches
    with torch.no_grad():
        acc = float((classifier(x).argmax(1) == labels).float().mean())
        sur_acc = float((surrogate(x).argmax(1) == labels).float().mean())
    if explainer is None and not args.gt_only:
        raise SystemExit("no explainer.pt in the run folder (use --gt-only)")

    gt_path = out / f"ground_truth_{args.ground_truth}.pt"
    cache: Dict[str, Dict] = (
        torch.load(gt_path, weights_only=True) if gt_path.is_file() else {}
    )
    # the ground truth belongs to one surrogate game and one convergence threshold:
    # a cache made for others must not be read as this run's truth
    meta = {
        "surrogate": classifier_digest(surrogate),
        "threshold": None if args.ground_truth == "exact" else args.threshold,
    }
    if "meta" in cache and cache["meta"] != meta:
        raise SystemExit(
            f"{gt_path} holds ground truth for another surrogate or threshold "
            f"({cache['meta']} there, {meta} here): use another --out"
        )
    if cache and "meta" not in cache:
        print(
            f"{gt_path}: made before caches recorded their surrogate; assumed to "
            "be this run's (the surrogate file must be the same)",
            flush=True,
        )
    cache["meta"] = meta
    key_fmt = "{seed}:{i}"
    for i in range(args.n_images):
        key = key_fmt.format(seed=args.image_seed, i=i)
        if key in cache:
            continue
        t0 = time.perf_counter()
        g = game.for_image(x[i])
        if args.ground_truth == "exact":
            values = exact_shapley(g, d, batch_size=4096).float()
            entry = {"values": values, "evals": 2**d, "converged": True}
        else:
            res = kernel_shap(
                g,
                d,
                batch_size=args.gt_batch,
                threshold=args.threshold,
                max_evals=args.gt_max_evals,
                converge_on=[int(labels[i])],
                seed=10_000 + i,
            )
            entry = {
                "values": res.values.float(),
                "evals": res.num_evals,
                "converged": res.converged,
            }
        entry["seconds"] = time.perf_counter() - t0
        cache[key] = entry
        torch.save(cache, gt_path)
        print(
            f"ground truth {i + 1}/{args.n_images}: {entry['evals']} evals, "
            f"{entry['seconds']:.0f}s, converged={entry['converged']}",
            flush=True,
        )
    truth = torch.stack(
        [
            cache[key_fmt.format(seed=args.image_seed, i=i)]["values"]
            for i in range(args.n_images)
        ]
    )  # (B, d, C)
    if args.gt_only:
        return {}
    t0 = time.perf_counter()
    phi_exp = ViTShapley(explainer, surrogate).shapley_values(x)  # (B, d, C)
    explainer_s = time.perf_counter() - t0

    # ---- explainer vs ground truth (target = true label; also the predicted class)
    with torch.no_grad():
        pred = surrogate(x).argmax(1)  # the surrogate's predicted class
    rows = []
    for i in range(args.n_images):
        y = int(labels[i])
        others = [c for c in range(truth.shape[2]) if c != y]
        rows.append(
            {
                "pearson_target": pearson(phi_exp[i, :, y], truth[i, :, y]),
                "spearman_target": spearman(phi_exp[i, :, y], truth[i, :, y]),
                "l2_target": float((phi_exp[i, :, y] - truth[i, :, y]).norm()),
                "norm_target": float(truth[i, :, y].norm()),
                "pearson_predicted": pearson(
                    phi_exp[i, :, int(pred[i])], truth[i, :, int(pred[i])]
                ),
                "l2_predicted": float(
                    (phi_exp[i, :, int(pred[i])] - truth[i, :, int(pred[i])]).norm()
                ),
                "pearson_nontarget": float(
                    np.nanmean(
                        [pearson(phi_exp[i, :, c], truth[i, :, c]) for c in others]
                    )
                ),
                "l2_nontarget": float(
                    np.mean(
                        [
                            float((phi_exp[i, :, c] - truth[i, :, c]).norm())
                            for c in others
                        ]
                    )
                ),
            }
        )

    def mean_sem(key: str) -> Tuple[float, float]:
        v = np.array([r[key] for r in rows], dtype=float)
        v = v[np.isfinite(v)]
        return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v)))

    ys = labels.tolist()
    pooled = pearson(
        torch.cat([phi_exp[i, :, ys[i]] for i in range(args.n_images)]),
        torch.cat([truth[i, :, ys[i]] for i in range(args.n_images)]),
    )

    # ---- KernelSHAP race: evaluations to reach the explainer's L2 error
    race_path = out / f"race_{args.ground_truth}.pt"
    races: Dict[str, List] = (
        torch.load(race_path, weights_only=True) if race_path.is_file() else {}
    )
    for i in range(args.n_images):
        key = key_fmt.format(seed=args.image_seed, i=i)
        if key in races:
            continue
        y = int(labels[i])
        target_err = rows[i]["l2_target"]
        curve: List[Tuple[int, float, float]] = []
        below = [0]

        def track(n: int, values: Tensor) -> bool:
            v = values[:, y].float()
            err = float((v - truth[i, :, y]).norm())
            curve.append((n, err, pearson(v, truth[i, :, y])))
            below[0] = below[0] + 1 if err <= 0.5 * target_err else 0
            return below[0] >= 3  # comfortably past the explainer: stop

        kernel_shap(
            game.for_image(x[i]),
            d,
            batch_size=args.race_batch,
            threshold=0,
            max_evals=args.race_max_evals,
            seed=20_000 + i,
            callback=track,
        )
        races[key] = curve
        torch.save(races, race_path)
    curves = [
        races[key_fmt.format(seed=args.image_seed, i=i)] for i in range(args.n_images)
    ]
    per_image = [
        crossing([(n, e) for n, e, _ in c], r["l2_target"])
        for c, r in zip(curves, rows)
    ]
    reached = [n for n in per_image if n is not None]
    # mean L2 curve over images (an image whose race stopped early keeps its last
    # error, which is below half the explainer's, so the mean is an upper bound)
    grid = sorted({n for c in curves for n, _, _ in c})
    mean_curve = []
    for n in grid:
        errs = []
        for c in curves:
            past = [e for m, e, _ in c if m <= n]
            errs.append(past[-1] if past else float("inf"))
        mean_curve.append((n, float(np.mean(errs))))
    mean_l2 = mean_sem("l2_target")[0]
    mean_cross = crossing(mean_curve, mean_l2)

    result = {
        "setting": {
            "run": str(args.run or "captum_vit.zoo default"),
            "ground_truth": args.ground_truth,
            "num_patches": d,
            "n_images": args.n_images,
            "image_seed": args.image_seed,
            "threshold": args.threshold if args.ground_truth == "kernelshap" else None,
        },
        "classifier_acc": acc,
        "surrogate_acc": sur_acc,
        "explainer_seconds_batch": explainer_s,
        "gt_evals_mean": float(
            np.mean(
                [
                    cache[key_fmt.format(seed=args.image_seed, i=i)]["evals"]
                    for i in range(args.n_images)
                ]
            )
        ),
        "gt_converged": int(
            sum(
                bool(cache[key_fmt.format(seed=args.image_seed, i=i)]["converged"])
                for i in range(args.n_images)
            )
        ),
        "pearson_target": mean_sem("pearson_target"),
        "pearson_target_pooled": pooled,
        "spearman_target": mean_sem("spearman_target"),
        "l2_target": mean_sem("l2_target"),
        "gt_norm_target": mean_sem("norm_target"),
        "pearson_predicted": mean_sem("pearson_predicted"),
        "l2_predicted": mean_sem("l2_predicted"),
        "pearson_nontarget": mean_sem("pearson_nontarget"),
        "l2_nontarget": mean_sem("l2_nontarget"),
        "kernelshap_evals_to_match_l2": {
            "median_per_image": float(np.median(reached)) if reached else None,
            "reached": f"{len(reached)}/{len(per_image)}",
            "mean_curve_crossing": mean_cross,
            "mean_curve": [
                mean_curve[j]
                for j in range(0, len(mean_curve), max(1, len(mean_curve) // 40))
            ],
        },
    }
    (out / f"accuracy_{args.ground_truth}.json").write_text(
        json.dumps(result, indent=1)
    )
    print(
        json.dumps(
            {k: v for k, v in result.items() if k != "kernelshap_evals_to_match_l2"},
            indent=1,
        )
    )
    ks = dict(result["kernelshap_evals_to_match_l2"])
    ks.pop("mean_curve")
    print("KernelSHAP evaluations to match the explainer's L2:", ks)
    return result


if __name__ == "__main__":
    main()
