"""Which fill should ViT-CX hide pixels with? Measured per fill on the same masks.

For every fill (``zero`` = the reference code's ``x · M`` in normalised input space,
``black``, ``mean`` = the image's mean colour, ``blur``) ViT-CX is run on the same
masks and noise, and the script prints per fill:

- contrast: ``(mean saliency on the main item − mean off it) / std`` of the map
  (mean over scenes) and the number of scenes where it is positive (the object is
  brighter than the background); only meaningful for a trained model;
- area bias: Pearson correlation, over one image's masks, between the mask scores
  ``s_k`` and the mask areas (mean of ``M_k``), averaged over images; a fill that
  leaves the hidden region informative makes larger masks score higher;
- insertion, deletion and insertion − deletion of the maps under true token
  removal (17 points, trapezoid; a fill-independent yardstick of faithfulness);
- pointing game: the single highest pixel inside the main item's box (first
  maximum in row-major order, as the reference codes' ``argmax``).

Parts:

- ``embedded``: the embedded default model on held-out scenes (64 px);
- ``vitb``: a random-weight timm ``vit_base_patch16_224`` on the same scenes resized
  to 224 px (mean = std = 0.5 as its timm config). Its contrast carries no meaning
  (untrained); the area bias and insertion − deletion do. Heavy on a CPU (ViT-CX
  needs 2K + 2 ViT-B forwards per image with K around 60-100).

Usage::

    python benchmarks/vitcx_fill.py --quick             # 4 scenes, embedded only
    python benchmarks/vitcx_fill.py --part embedded     # 16 scenes
    python benchmarks/vitcx_fill.py --part vitb --n 16  # the heavy part
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Dict, List

import numpy as np
import torch
import torch.nn.functional as F

from captum_vit import metrics
from captum_vit.attr._vitcx import ViTCX, coverage_corrected_saliency

FILLS = ("zero", "black", "mean", "blur")


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def measure(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    obj_masks: torch.Tensor,
    boxes: torch.Tensor,
    mean_std,
    ppe: int,
) -> Dict[str, Dict[str, float]]:
    """Every statistic per fill, on the same masks and noise."""
    e = ViTCX(model, input_mean=mean_std[0], input_std=mean_std[1])
    rows: Dict[str, Dict[str, List[float]]] = {f: {} for f in FILLS}
    t0 = time.perf_counter()
    masks = e.masks(inputs)
    print(
        f"  masks: {time.perf_counter() - t0:.1f} s, K per image "
        f"{[m.shape[0] for m in masks]}",
        flush=True,
    )
    for fill in FILLS:
        t0 = time.perf_counter()
        scores, areas = e.scores(
            inputs,
            masks,
            labels,
            perturbations_per_eval=ppe,
            seed=0,
            baselines=fill,
            return_areas=True,
        )
        sal = torch.stack(
            [coverage_corrected_saliency(m, s) for m, s in zip(masks, scores)]
        )  # (B, H, W)
        seconds = time.perf_counter() - t0
        r = rows[fill]
        for i in range(inputs.shape[0]):
            s = sal[i].double()
            on = obj_masks[i]
            std = float(s.std())
            c = (float(s[on].mean()) - float(s[~on].mean())) / std if std else 0.0
            r.setdefault("contrast", []).append(c)
            r.setdefault("object_brighter", []).append(float(c > 0))
            r.setdefault("area_bias", []).append(
                _pearson(scores[i].numpy(), areas[i].numpy())
            )
        attr = sal[:, None].expand_as(inputs)
        curves = metrics.insertion_deletion_curves(
            model, inputs, attr, labels, fractions=[i / 16 for i in range(17)]
        )
        ins = metrics.area_under_curve(curves.fractions, curves.insertion)
        dele = metrics.area_under_curve(curves.fractions, curves.deletion)
        point = metrics.pointing_game(attr, boxes=boxes, ties="first")
        r["insertion"] = ins.tolist()
        r["deletion"] = dele.tolist()
        r["ins_minus_del"] = (ins - dele).tolist()
        r["pointing"] = point.tolist()
        r["seconds_per_image"] = [seconds / inputs.shape[0]]
        print(f"  {fill}: {seconds:.1f} s", flush=True)
    out: Dict[str, Dict[str, float]] = {}
    for fill, r in rows.items():
        out[fill] = {}
        for k, v in r.items():
            a = np.asarray([x for x in v if not math.isnan(x)], dtype=np.float64)
            out[fill][k] = float(a.mean()) if a.size else float("nan")
            if k == "object_brighter":
                out[fill][k] = float(a.sum())
            if k in ("contrast", "area_bias", "ins_minus_del") and a.size > 1:
                out[fill][k + "_sem"] = float(a.std(ddof=1) / math.sqrt(a.size))
    return out


def print_table(title: str, res: Dict[str, Dict[str, float]], n: int) -> None:
    print(f"\n### {title} ({n} scenes)\n")
    print(
        "| fill | contrast ↑ | object brighter | area bias (r) | insertion ↑ | "
        "deletion ↓ | ins − del ↑ | pointing ↑ | s / image |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for fill, r in res.items():
        print(
            f"| {fill} | {r['contrast']:+.2f} ± {r.get('contrast_sem', 0):.2f} | "
            f"{int(r['object_brighter'])}/{n} | "
            f"{r['area_bias']:+.2f} ± {r.get('area_bias_sem', 0):.2f} | "
            f"{r['insertion']:.3f} | {r['deletion']:.3f} | "
            f"{r['ins_minus_del']:+.3f} ± {r.get('ins_minus_del_sem', 0):.3f} | "
            f"{r['pointing']:.2f} | {r['seconds_per_image']:.2f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("embedded", "vitb", "all"), default="all")
    parser.add_argument("--n", type=int, default=16, help="scenes")
    parser.add_argument("--seed", type=int, default=1234, help="scene seed")
    parser.add_argument("--ppe", type=int, default=64, help="forward batch")
    parser.add_argument("--quick", action="store_true", help="4 scenes, embedded")
    parser.add_argument(
        "--arch",
        default="vit_base_patch16_224",
        help="timm model of the 'vitb' part (random weights, 224 px)",
    )
    args = parser.parse_args()
    if args.quick:
        args.n, args.part = 4, "embedded"
    from captum_vit import zoo

    torch.manual_seed(0)
    model = zoo.load_default_model()
    scenes = zoo.make_scenes(args.n, split="test", seed=args.seed)
    images = torch.as_tensor(scenes.images)
    labels = torch.as_tensor(scenes.labels).long()
    obj = torch.as_tensor(scenes.masks[:, 0])
    boxes = torch.as_tensor(scenes.boxes[:, 0]).long()
    print(f"torch threads: {torch.get_num_threads()}")
    if args.part in ("embedded", "all"):
        print("embedded default model", flush=True)
        res = measure(
            model,
            zoo.preprocess(images),
            labels,
            obj,
            boxes,
            (zoo.MEAN, zoo.STD),
            args.ppe,
        )
        print_table("embedded default model (64 px, 8 px patches)", res, args.n)
    if args.part in ("vitb", "all"):
        import timm

        print(f"\nrandom-weight {args.arch}", flush=True)
        torch.manual_seed(0)
        model = timm.create_model(args.arch, pretrained=False, num_classes=10).eval()
        cfg = model.pretrained_cfg
        big = F.interpolate(images, size=(224, 224), mode="bilinear")
        big = big.clamp(0, 1)
        mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
        std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
        inputs = (big - mean) / std
        obj_big = (
            F.interpolate(obj[:, None].float(), size=(224, 224), mode="nearest")[:, 0]
            > 0.5
        )
        res = measure(
            model,
            inputs,
            labels,
            obj_big,
            boxes * 224 // 64,
            (cfg["mean"], cfg["std"]),
            args.ppe,
        )
        print_table(f"random-weight {args.arch} (224 px)", res, args.n)


if __name__ == "__main__":
    main()
