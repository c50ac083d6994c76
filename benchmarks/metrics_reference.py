"""Side by side: captum_vit's segmentation F1 and energy-based pointing game against
the authors' evaluation code, on the same random maps and ground truths.

- mF1: Chen et al. 2023 (jiaminchen-1031/transformerinterp), ``ViT/utils/
  metrices.py``'s ``get_f1_scores`` as ``ViT/baselines/ViT/imagenet_seg_eval.py``
  calls it (14 x 14 patch map upsampled bilinearly to 224, min-max normalised,
  binarised at its mean, ``get_f1_scores(output[0, 1], labels[0])``), against
  ``segmentation_f1(..., average="rows", interpolate_mode="bilinear")`` and the
  default ``average="image"``.
- Energy pointing: Yuan et al. 2021 (XianrenYty/Transition_Attention_Maps),
  ``baselines/ViT/energy_point_game.py``'s ``energy_point_game`` on its binarised map
  (> 0.3 of the normalised map), one image per call (the script's batches mix the
  images' boxes), against ``energy_pointing_game(..., threshold=0.3)``.

The reference files are read from their fetched git mirrors and executed from a
temporary folder (needs scikit-learn, a benchmark-only dependency)::

    python benchmarks/metrics_reference.py \\
        --transformerinterp /work/.mirror/jiaminchen-1031+transformerinterp/repo \\
        --tam /work/.mirror/XianrenYty+Transition_Attention_Maps/repo
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from captum_vit.metrics import energy_pointing_game, segmentation_f1


def _load(repo: str, path: str, name: str, tmp: Path, strip_main: bool = False):
    text = subprocess.run(
        [
            "git",
            (
                f"--git-dir={repo}/.git"
                if Path(repo, ".git").exists()
                else f"--git-dir={repo}"
            ),
            "show",
            f"HEAD:{path}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if strip_main:  # keep the function, drop the script part and its imports
        text = text.split("if __name__ == '__main__':")[0]
        keep = [
            line
            for line in text.splitlines()
            if not line.startswith(("from baselines", "from data", "from utils"))
        ]
        text = "\n".join(keep)
    f = tmp / f"{name}.py"
    f.write_text(text)
    spec = importlib.util.spec_from_file_location(name, f)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _commit(repo: str) -> str:
    git_dir = f"{repo}/.git" if Path(repo, ".git").exists() else repo
    return subprocess.run(
        ["git", f"--git-dir={git_dir}", "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def _cases(n: int, seed: int):
    """n (14 x 14 map, 224 x 224 mask, box) triples: smooth random maps, the mask an
    ellipse, the box around it."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(224.0), torch.arange(224.0), indexing="ij")
    for _ in range(n):
        m = torch.rand(1, 1, 7, 7, generator=g)
        m = F.interpolate(m, size=(14, 14), mode="bilinear", align_corners=False)
        m = m + 0.3 * torch.rand(1, 1, 14, 14, generator=g)
        cy, cx = (40 + 144 * torch.rand(2, generator=g)).tolist()
        ry, rx = (20 + 60 * torch.rand(2, generator=g)).tolist()
        mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
        box = [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]
        yield m, mask, box


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--transformerinterp", required=True)
    ap.add_argument("--tam", required=True)
    ap.add_argument("--n", type=int, default=100)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        ref_seg = _load(args.transformerinterp, "ViT/utils/metrices.py", "ti", tmp)
        ref_epg = _load(
            args.tam, "baselines/ViT/energy_point_game.py", "tam", tmp, True
        )
        ours_rows, ours_img, theirs_f1 = [], [], []
        ours_e, theirs_e = [], []
        for m, mask, box in _cases(args.n, 0):
            # transformerinterp's imagenet_seg_eval.py, batch size 1
            res = F.interpolate(m, scale_factor=16, mode="bilinear")
            res = (res - res.min()) / (res.max() - res.min())
            res_1 = res.gt(res.mean()).type(res.type())
            res_0 = res.le(res.mean()).type(res.type())
            output = torch.cat((res_0, res_1), 1)
            labels = mask[None].long()
            f1 = np.nan_to_num(ref_seg.get_f1_scores(output[0, 1], labels[0]))
            theirs_f1.append(float(np.mean(f1)))
            ours_rows.append(
                float(
                    segmentation_f1(
                        m[0],
                        masks=mask[None],
                        average="rows",
                        interpolate_mode="bilinear",
                    )
                )
            )
            ours_img.append(
                float(
                    segmentation_f1(m[0], masks=mask[None], interpolate_mode="bilinear")
                )
            )
            # TAM's energy_point_game.py, one image per call
            res_b = res.gt(res.max() * 0.3).type(res.type())
            frac = [[[v / 224 for v in box]]]
            p, _, _ = ref_epg.energy_point_game(frac, res_b[:, 0].cpu())
            theirs_e.append(p[0])
            ours_e.append(
                float(
                    energy_pointing_game(
                        m[0],
                        boxes=[box],
                        image_size=(224, 224),
                        threshold=0.3,
                        interpolate_mode="bilinear",
                    )
                )
            )
        a, b, c = map(np.asarray, (ours_rows, theirs_f1, ours_img))
        e1, e2 = np.asarray(ours_e), np.asarray(theirs_e)
        print(f"transformerinterp {_commit(args.transformerinterp)}")
        print(f"Transition_Attention_Maps {_commit(args.tam)}")
        print(f"{args.n} maps (14 x 14, bilinear to 224), ellipse masks and boxes")
        print("| quantity | ours | reference | max abs diff | Pearson |")
        print("|---|---|---|---|---|")
        print(
            f"| mF1, average='rows' vs get_f1_scores | {a.mean():.6f} | "
            f"{b.mean():.6f} | {np.abs(a - b).max():.2e} | "
            f"{np.corrcoef(a, b)[0, 1]:.6f} |"
        )
        print(
            f"| mF1, average='image' (default) vs get_f1_scores | {c.mean():.6f} | "
            f"{b.mean():.6f} | {np.abs(c - b).max():.2e} | "
            f"{np.corrcoef(c, b)[0, 1]:.6f} |"
        )
        print(
            f"| energy pointing, threshold=0.3 vs energy_point_game | "
            f"{e1.mean():.6f} | {e2.mean():.6f} | {np.abs(e1 - e2).max():.2e} | "
            f"{np.corrcoef(e1, e2)[0, 1]:.6f} |"
        )


if __name__ == "__main__":
    sys.exit(main())
