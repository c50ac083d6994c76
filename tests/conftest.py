"""Shared fixtures: tiny random-weight timm models of every supported family."""

from __future__ import annotations

from typing import Dict, List

import pytest
import timm
import torch
import torch.nn as nn

# Tiny models gain nothing from a second thread, and on a busy 2-core machine two
# threads stall each other (~8x slower); one thread keeps the suite fast and steady.
torch.set_num_threads(1)

_TINY = dict(pretrained=False, depth=2, embed_dim=32, num_heads=2, num_classes=5)

# name -> (timm name, extra kwargs, image size)
FAMILIES: Dict[str, tuple] = {
    "cls": ("vit_tiny_patch16_224", dict(img_size=32, patch_size=8), 32),
    "distilled": (
        "deit_tiny_distilled_patch16_224",
        dict(img_size=32, patch_size=8),
        32,
    ),
    "reg_gap": ("vit_base_patch16_reg4_gap_256", dict(img_size=32, patch_size=8), 32),
    "eva": ("eva02_tiny_patch14_224", dict(img_size=56), 56),
}


def make_model(family: str, seed: int = 0, **overrides) -> nn.Module:
    """A tiny random-weight model of ``family`` in eval mode."""
    name, kwargs, _ = FAMILIES[family]
    torch.manual_seed(seed)
    kw = {**_TINY, **kwargs, **overrides}
    return timm.create_model(name, **kw).eval()


def image_size(family: str) -> int:
    return FAMILIES[family][2]


@pytest.fixture(params=list(FAMILIES))
def family(request) -> str:
    return request.param


def model_state(model: nn.Module) -> List[tuple]:
    """Everything a call must leave unchanged: flags, hooks, modes, grads."""
    state = []
    for name, mod in model.named_modules():
        state.append(
            (
                name,
                mod.training,
                mod.__dict__.get("fused_attn", None),
                tuple(mod._forward_hooks.keys()),
                tuple(mod._forward_pre_hooks.keys()),
                tuple(mod._backward_hooks.keys()),
                tuple(getattr(mod, "_backward_pre_hooks", {}).keys()),
            )
        )
    for name, p in model.named_parameters():
        state.append(
            (name, p.requires_grad, p.grad is None, float(p.detach().double().sum()))
        )
    return state


def write_scene_folder(root, n: int = 4, classes=("right", "left"), seed: int = 21):
    """An ImageFolder of ``n`` embedded scenes saved as PNGs (class folders taken in
    turn) and its boxes rows ``[key, x0, y0, x1, y1]`` (the main item's box)."""
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from captum_vit import zoo

    root = Path(root)
    sc = zoo.make_scenes(n, split="test", seed=seed)
    rows = []
    for i in range(n):
        cls = classes[i % len(classes)]
        (root / cls).mkdir(parents=True, exist_ok=True)
        key = f"{cls}/scene{i}.png"
        img = (sc.images[i].transpose(1, 2, 0) * 255).round().astype(np.uint8)
        Image.fromarray(img).save(root / key)
        rows.append([key, *sc.boxes[i, 0].tolist()])
    return rows
