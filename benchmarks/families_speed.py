"""Rollout and GenAtt cost per model family, relative to plain passes.

For every supported family with recorded attention (timm ViT, distilled DeiT, SigLIP
``map`` pooling, Eva, BEiT, torchvision ``vit_b_16``, Hugging Face ViT / DeiT with
teacher / DINOv2 with registers), base-size models with random weights at their
default input size, prints:

- rollout time / one plain forward (no grad, the model's default attention kernel);
- GenAtt time / one forward + backward of the target logit (parameters requiring grad).

Targets (issue 13): rollout <= 1.3x, GenAtt <= 1.5x. Times are the minimum of
``--repeats`` interleaved runs after a warm-up. Hugging Face rows need ``transformers``
(``pip install 'captum-vit[hf]'``) and are skipped with a note otherwise.

Usage: python benchmarks/families_speed.py [--quick] [--batch B] [--repeats N]
       [--threads T] [--families NAME ...]

``--quick`` uses tiny models (2 blocks, width 32, 32x32 images) to check that the
script runs in seconds; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import time
from typing import Callable, Dict, List

import timm
import torch
import torch.nn as nn

from captum_vit import AttentionRollout, GenAtt
from captum_vit.vit import ViTAdapter, logits_of


def _timm(name: str, quick: bool, **kw) -> nn.Module:
    if quick:
        kw = {
            **dict(img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2),
            **kw,
        }
        if name.startswith("eva"):
            kw.update(img_size=28, patch_size=14)
    return timm.create_model(name, pretrained=False, num_classes=1000, **kw)


def _torchvision(quick: bool) -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer, vit_b_16

    if quick:
        return VisionTransformer(32, 8, 2, 2, 32, 64, num_classes=1000)
    return vit_b_16(weights=None)


def _hf(kind: str, quick: bool) -> nn.Module:
    import transformers as tf

    size = (
        dict(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
        )
        if quick
        else {}
    )
    if kind == "vit":
        return tf.ViTForImageClassification(tf.ViTConfig(num_labels=1000, **size))
    if kind == "deit_teacher":
        cfg = tf.DeiTConfig(num_labels=1000, **size)
        return tf.DeiTForImageClassificationWithTeacher(cfg)
    size.pop("intermediate_size", None)
    if not quick:
        size.update(image_size=224, patch_size=14)
    cfg = tf.Dinov2WithRegistersConfig(num_labels=1000, num_register_tokens=4, **size)
    return tf.Dinov2WithRegistersForImageClassification(cfg)


BUILDERS: Dict[str, Callable[[bool], nn.Module]] = {
    "timm vit_base_patch16_224": lambda q: _timm("vit_base_patch16_224", q),
    "timm deit_base_distilled": lambda q: _timm("deit_base_distilled_patch16_224", q),
    "timm siglip (map)": lambda q: _timm("vit_base_patch16_siglip_224", q),
    "timm eva02_base": lambda q: _timm("eva02_base_patch14_224", q),
    "timm beit_base": lambda q: _timm("beit_base_patch16_224", q),
    "torchvision vit_b_16": _torchvision,
    "hf ViT": lambda q: _hf("vit", q),
    "hf DeiT with teacher": lambda q: _hf("deit_teacher", q),
    "hf DINOv2 with registers": lambda q: _hf("dinov2_reg", q),
}


def min_times(fns: List[Callable[[], object]], repeats: int) -> List[float]:
    """Minimum time of each function over ``repeats`` interleaved rounds."""
    for fn in fns:
        fn()  # warm-up
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def measure(model: nn.Module, batch: int, repeats: int) -> List[float]:
    model.eval()
    adapter = ViTAdapter(model)
    x = torch.randn(batch, 3, *adapter.image_size)
    target = torch.zeros(batch, dtype=torch.long)
    rollout, genatt = AttentionRollout(model), GenAtt(model)

    def forward() -> None:
        with torch.no_grad():
            model(x)

    def forward_backward() -> None:
        logits = logits_of(model(x))
        logits.gather(1, target[:, None]).sum().backward()
        model.zero_grad(set_to_none=True)

    return min_times(
        [
            forward,
            lambda: rollout.attribute(x),
            forward_backward,
            lambda: genatt.attribute(x, target=target),
        ],
        repeats,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny models, 1 repeat")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--families", nargs="+", default=list(BUILDERS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else args.repeats
    print(
        f"batch={args.batch} threads={args.threads} repeats={repeats} "
        f"{'(quick: tiny models, numbers meaningless)' if args.quick else ''}"
    )
    print(
        "| family | forward s | rollout s | rollout / fwd (<= 1.3) | fwd+bwd s | "
        "GenAtt s | GenAtt / fwd+bwd (<= 1.5) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in args.families:
        torch.manual_seed(0)
        try:
            model = BUILDERS[name](args.quick)
        except ImportError as err:
            print(f"| {name} | skipped: {err} |||||| ")
            continue
        t_f, t_r, t_fb, t_g = measure(model, args.batch, repeats)
        print(
            f"| {name} | {t_f:.4f} | {t_r:.4f} | {t_r / t_f:.2f} | {t_fb:.4f} | "
            f"{t_g:.4f} | {t_g / t_fb:.2f} |"
        )


if __name__ == "__main__":
    main()
