"""The surrogate's KL divergence to the classifier as patches are removed.

Covert et al. (ICLR 2023), Figure 2: for held-out images, remove a random fraction of
the patches (attention masking, prefix tokens kept) and measure
``KL(f(x) ‖ g(x_s))`` between the classifier on the full image and

- the fine-tuned surrogate ``g`` on the kept patches, and
- the original classifier ``f`` itself with the same attention masking (no
  fine-tuning),

averaged over images and random subsets. Also the top-1 agreement with the full-image
prediction. Usage::

    python benchmarks/shapley_kl_curve.py --run runs/shapley_d16 --threads 1
    python benchmarks/shapley_kl_curve.py            # shipped default surrogate
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch

from captum_vit.shapley import SurrogateGame, UniformSizeSampler, subsets_of_sizes
from captum_vit.shapley.training import surrogate_loss


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", type=Path, default=None, help="training run (default: zoo)")
    p.add_argument("--n-images", type=int, default=200)
    p.add_argument("--subsets", type=int, default=4, help="random subsets per image")
    p.add_argument("--image-seed", type=int, default=2025)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from shapley_accuracy import load_models

    from captum_vit.zoo import make_scenes, preprocess

    classifier, surrogate, _, size = load_models(args.run)
    scenes = make_scenes(
        args.n_images, split="test", seed=args.image_seed, image_size=size
    )
    x = preprocess(scenes.images)
    games = {
        "surrogate": SurrogateGame(surrogate, mode="attention", batch_size=512),
        "classifier": SurrogateGame(classifier, mode="attention", batch_size=512),
    }
    d = games["surrogate"].adapter.num_patches
    with torch.no_grad():
        p_full = classifier(x).softmax(-1)
    top = p_full.argmax(-1)
    gen = torch.Generator().manual_seed(0)
    rows = []
    k = args.subsets
    for pct in range(0, 101, 10):
        removed = int(round(pct / 100 * d))
        keep = subsets_of_sizes(torch.full((len(x) * k,), d - removed), d, gen)
        xr = x.repeat_interleave(k, 0)
        pr = p_full.repeat_interleave(k, 0)
        row = {"removed_pct": pct, "removed": removed}
        for name, game in games.items():
            q = game(xr, keep).clamp_min(1e-12)
            kl = (torch.special.xlogy(pr, pr) - pr * q.log()).sum(-1)
            row[f"kl_{name}"] = float(kl.mean())
            row[f"kl_{name}_sem"] = float(kl.std() / math.sqrt(len(kl)))
            row[f"agree_{name}"] = float(
                (q.argmax(-1) == top.repeat_interleave(k)).float().mean()
            )
        rows.append(row)
        print(
            f"{pct:3d}% removed  KL surrogate {row['kl_surrogate']:.4f}  "
            f"classifier {row['kl_classifier']:.4f}  top-1 agreement "
            f"{row['agree_surrogate']:.3f} / {row['agree_classifier']:.3f}",
            flush=True,
        )
    # the same curve integrated over the surrogate's training distribution
    keep = UniformSizeSampler(d).sample(len(x) * k, generator=gen)
    summary = {}
    for name, game in games.items():
        q = game(x.repeat_interleave(k, 0), keep).clamp_min(1e-12)
        summary[name] = float(surrogate_loss(p_full.repeat_interleave(k, 0), q.log()))
    result = {
        "num_patches": d,
        "n_images": args.n_images,
        "rows": rows,
        "mean_kl_uniform_sizes": summary,
    }
    out = args.out or (args.run or Path("runs/shapley_default")) / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "kl_curve.json").write_text(json.dumps(result, indent=1))
    print("mean KL over uniform subset sizes:", summary)
    return result


if __name__ == "__main__":
    main()
