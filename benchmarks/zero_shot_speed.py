"""What the zero-shot head costs (issue 30): ``ZeroShotClassifier(x)`` against the
image tower's own forward, text embeddings cached.

Models (random weights, nothing downloaded): OpenCLIP ``ViT-B-32`` at 224 px with
1000 prompts (an ImageNet-sized head), Hugging Face ``CLIPModel`` with
``CLIPConfig()``'s default (ViT-B/32) towers and 1000 prompts, and the embedded
image–text model (64 px) with its 10 class prompts. Per model, the tower's forward
(``clip.visual(x)``; HF: ``get_image_features``; embedded: ``encode_image``) and the
classifier's forward alternate, ``--repeats`` times each; the ratio of the medians is
reported. ``torch.set_num_threads(1)``, run under the shared heavy lock:

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD \\
        python benchmarks/zero_shot_speed.py
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, List

import torch


def _time(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    with torch.no_grad():
        fn()
    return time.perf_counter() - t0


def compare(name: str, tower: Callable, zs: Callable, x, repeats: int) -> dict:
    _time(lambda: tower(x))
    _time(lambda: zs(x))  # warm-up
    a: List[float] = []
    b: List[float] = []
    for _ in range(repeats):
        a.append(_time(lambda: tower(x)))
        b.append(_time(lambda: zs(x)))
    ta, tb = statistics.median(a), statistics.median(b)
    return dict(name=name, tower_ms=1000 * ta, zs_ms=1000 * tb, ratio=tb / ta)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(1)
    import open_clip
    import transformers as tf

    from captum_vit import ZeroShotClassifier
    from captum_vit.zoo import load_default_scenes
    from captum_vit.zoo.image_text import load_default_image_text
    from captum_vit.zoo.train_image_text import class_prompts

    rows = []
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    # OpenCLIP ViT-B-32, 1000 prompts given as embeddings of its text width
    oc = open_clip.create_model("ViT-B-32").eval()
    emb = torch.randn(1000, 512, generator=gen)
    zs = ZeroShotClassifier(
        oc, text_embeddings=emb, logit_scale=oc.logit_scale.exp().item()
    ).eval()
    x = torch.randn(args.batch, 3, 224, 224, generator=gen)
    rows.append(
        compare("OpenCLIP ViT-B-32, 1000 prompts", oc.visual, zs, x, args.repeats)
    )
    # Hugging Face CLIP (ViT-B/32 towers), 1000 prompts
    hf = tf.CLIPModel(tf.CLIPConfig()).eval()
    zs = ZeroShotClassifier(hf, text_embeddings=torch.randn(1000, 512, generator=gen))
    rows.append(
        compare(
            "HF CLIPModel (ViT-B/32 towers), 1000 prompts",
            lambda z: hf.get_image_features(pixel_values=z),
            zs,
            x,
            args.repeats,
        )
    )
    # the embedded image-text model, its 10 class prompts
    it = load_default_image_text()
    zs = ZeroShotClassifier(it, class_prompts()).eval()
    xs, _ = load_default_scenes(n=32)
    rows.append(
        compare(
            "embedded image-text, 10 prompts, 32 scenes",
            it.encode_image,
            zs,
            xs,
            args.repeats,
        )
    )
    print(
        "| model | tower forward (ms) | ZeroShotClassifier (ms) | ratio |\n"
        "|---|---|---|---|"
    )
    for r in rows:
        print(
            f"| {r['name']} | {r['tower_ms']:.1f} | {r['zs_ms']:.1f} | "
            f"{r['ratio']:.3f}× |"
        )


if __name__ == "__main__":
    main()
