"""LeGrad (issue 30): side by side with the authors' ``legrad-torch``, and its speed.

1. **Maps.** ``captum_vit.LeGrad`` on ``ZeroShotClassifier(open_clip model,
   text_embeddings=...)`` against ``legrad.LeWrapper(model).compute_legrad(text,
   image)`` on the same random-weight OpenCLIP ``ViT-B-16`` (both with
   ``layer_index=-2``), per-image Pearson of the pixel maps (ours with
   ``interpolate_mode="bilinear"``, which is the authors' upsampling; their min-max
   rescaling does not change a correlation). Ours uses
   ``intermediate_pool="mean"``: the authors' OpenCLIP code pools each layer's
   tokens by their mean (CLS included) before ``ln_post``/``proj``; the default
   ``"head"`` (the model's own CLS pooling) is reported beside it. The score is
   the same up to a positive factor: theirs ``text · normalise(image)``, ours the
   zero-shot logit ``logit_scale · cos``. Both are timed in the same run (theirs
   one image per call, as its API takes one image per prompt set).

   legrad-torch 1.1 pins ``open_clip_torch<=2.23``; with open_clip 3.x (batch-first
   blocks) its own forward feeds sequence-first tokens to every block, which the
   blocks it has not hooked read as batch-first. The copy it wraps here gets
   ``attn.batch_first = False`` on every block, which makes the unhooked blocks
   read the layout it gives them (the hooked ones run its sequence-first
   attention); nothing else is changed. It needs ``cv2``
   (``pip install -c /tmp/constraints.txt opencv-python-headless``).

2. **Speed** (one thread): ``LeGrad(model)`` against one forward + one backward
   (the gradient of the target logits with respect to the input, the cost of
   GenAtt or Grad-CAM), on the embedded default (held-out scenes) and
   ``vit_base_patch16_224`` with random weights, batch 1 and 8.

Usage::

    python benchmarks/legrad_compare.py --threads 1 --out benchmarks/results/legrad
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import timm
import torch
import torch.nn.functional as F
from torch import Tensor

from captum_vit import LeGrad, zoo


def pearson(a: Tensor, b: Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    a, b = a - a.mean(), b - b.mean()
    den = float(a.norm() * b.norm())
    return float((a * b).sum()) / den if den > 0 else float("nan")


def clock(fn: Callable[[], Any], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def forward_backward(model: torch.nn.Module, x: Tensor, target: Tensor):
    def run() -> None:
        xi = x.clone().requires_grad_(True)
        out = model(xi)
        torch.autograd.grad(out.gather(1, target[:, None]).sum(), xi)

    return run


def speed(name: str, model, x: Tensor, repeats: int) -> List[Dict[str, Any]]:
    rows = []
    for b in (1, 8):
        xb = x[:b]
        with torch.no_grad():
            tb = model(xb).argmax(1)
        method = LeGrad(model)
        t_ours = clock(lambda: method.attribute(xb, target=tb), repeats)
        t_floor = clock(forward_backward(model, xb, tb), repeats)
        rows.append(
            dict(
                model=name,
                batch=b,
                ours_s=t_ours,
                fwd_bwd_s=t_floor,
                ratio=t_ours / t_floor,
            )
        )
        print(rows[-1], flush=True)
    return rows


def openclip_side_by_side(n_images: int, repeats: int) -> Dict[str, Any]:
    import open_clip

    try:
        from captum_vit import ZeroShotClassifier
    except ImportError:
        msg = "captum_vit.ZeroShotClassifier is not in this tree (issue 30, item 1)"
        print("OpenCLIP side by side skipped:", msg, flush=True)
        return {"skipped": msg}
    from legrad import LeWrapper

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16", pretrained=None).eval()
    prompts = ["a photo of a cat", "a photo of a dog", "a remote control"]
    with torch.no_grad():
        text = F.normalize(model.encode_text(open_clip.tokenize(prompts)), dim=-1)
    x = torch.randn(n_images, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    zs = ZeroShotClassifier(model, text_embeddings=text)
    with torch.no_grad():
        target = zs(x).argmax(1)

    theirs_model = copy.deepcopy(model)
    for block in theirs_model.visual.transformer.resblocks:
        block.attn.batch_first = False  # see the module docstring
    wrapper = LeWrapper(theirs_model, layer_index=-2)

    def theirs_maps() -> Tensor:
        maps = []
        for i in range(n_images):
            t = int(target[i])
            m = wrapper.compute_legrad(
                text_embedding=text[t : t + 1], image=x[i : i + 1]
            )
            maps.append(m[0, 0].detach())
        return torch.stack(maps)

    mean = LeGrad(zs, layer_index=-2, intermediate_pool="mean")
    head = LeGrad(zs, layer_index=-2)
    ours = mean.attribute(x, target=target, interpolate_mode="bilinear")[:, 0]
    ours_head = head.attribute(x, target=target, interpolate_mode="bilinear")[:, 0]
    ref = theirs_maps()
    out: Dict[str, Any] = {
        "pearson_mean_pool": [pearson(ours[i], ref[i]) for i in range(n_images)],
        "pearson_head_pool": [pearson(ours_head[i], ref[i]) for i in range(n_images)],
        "ours_s": clock(
            lambda: mean.attribute(x, target=target, interpolate_mode="bilinear"),
            repeats,
        ),
        "legrad_torch_s": clock(theirs_maps, repeats),
        "images": n_images,
    }
    print(out, flush=True)
    return out


def main(argv: List[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results: Dict[str, Any] = {
        "openclip": openclip_side_by_side(args.images, repeats=1)
    }
    model = zoo.load_default_model().eval()
    x, _ = zoo.load_default_scenes(n=8, seed=0)
    results["speed"] = speed("embedded", model, x, repeats=5)
    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_224", pretrained=False).eval()
    x = torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    results["speed"] += speed("vit_base_patch16_224", model, x, repeats=2)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
