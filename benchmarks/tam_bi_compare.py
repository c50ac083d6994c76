"""TAM and Beyond Intuition side by side with their authors' code, and their speed.

The authors' code is read from the ``fetch`` mirrors of

- XianrenYty/Transition_Attention_Maps (``baselines/ViT/ViT_new.py``,
  ``baselines/ViT/interpret_methods.py``: ``transition_attention_maps``),
- jiaminchen-1031/transformerinterp (``ViT/baselines/ViT/ViT_new.py``,
  ``ViT/baselines/ViT/ViT_explanation_generator.py``: ``generate_ours`` (head-wise)
  and ``generate_ours_c`` (token-wise)),

copied into a temporary directory at run time with CPU edits only (``.cuda()``
removed, their pretrained-weight helpers not imported); nothing of it is part of
the package. The same timm weights are loaded into their ``VisionTransformer`` (the
key names are timm's; the outputs are checked equal), and the per-image Pearson
correlation of their patch maps with ours is printed, at the authors' defaults
(TAM: start_layer 4; BI: start_layer 4 head / 6 token in their 1-based count, i.e.
3 / 5 here; 20 steps).

``--speed`` times, on one thread, ours, the authors' code and the floor
``steps × (forward + backward)`` (one forward and one full backward of the batch,
as the authors' loop does it) on the embedded default and a random-weight
``vit_base_patch16_224``, batches 1 and 8. The authors' head-wise and token-wise
code handles one image per call (their head weights are normalised over the whole
batch and reshaped to one image), so at batch 8 it runs once per image.

Usage::

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD \\
        python benchmarks/tam_bi_compare.py            # Pearson tables
    OMP_NUM_THREADS=1 PYTHONPATH=$PWD \\
        python benchmarks/tam_bi_compare.py --speed    # timings
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import timm
import torch
import torch.nn as nn

from captum_vit import BeyondIntuition, TransitionAttentionMaps, patch_scores, zoo

MIRRORS = Path("/work/.mirror")
TAM_REPO = MIRRORS / "XianrenYty+Transition_Attention_Maps" / "repo"
BI_REPO = MIRRORS / "jiaminchen-1031+transformerinterp" / "repo"


# ------------------------------------------------------------- the authors' code
def _show(repo: Path, path: str) -> str:
    return subprocess.run(
        ["git", f"--git-dir={repo}", "show", f"HEAD:{path}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def commit(repo: Path) -> str:
    out = subprocess.run(
        ["git", f"--git-dir={repo}", "rev-parse", "HEAD"],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def _cpu(src: str) -> str:
    """The CPU edits: no ``.cuda()``; the pretrained-weight helpers of ViT_new
    (never used here) replaced by the two small functions the module needs."""
    src = src.replace(".cuda()", "")
    src = src.replace(
        "from baselines.ViT.helpers import load_pretrained\n",
        "load_pretrained = None\n",
    )
    src = src.replace(
        "from baselines.ViT.weight_init import trunc_normal_\n",
        "from torch.nn.init import trunc_normal_\n",
    )
    src = src.replace(
        "from baselines.ViT.layer_helpers import to_2tuple\n",
        "to_2tuple = lambda x: tuple(x) if isinstance(x, (tuple, list)) else (x, x)\n",
    )
    return src


def _load(name: str, src: str, tmp: Path) -> Any:
    path = tmp / f"{name}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference_modules(tmp: Path) -> Dict[str, Any]:
    return {
        "tam_vit": _load(
            "ref_tam_vit", _cpu(_show(TAM_REPO, "baselines/ViT/ViT_new.py")), tmp
        ),
        "tam": _load(
            "ref_tam",
            _cpu(_show(TAM_REPO, "baselines/ViT/interpret_methods.py")),
            tmp,
        ),
        "bi_vit": _load(
            "ref_bi_vit", _cpu(_show(BI_REPO, "ViT/baselines/ViT/ViT_new.py")), tmp
        ),
        "bi": _load(
            "ref_bi",
            _cpu(_show(BI_REPO, "ViT/baselines/ViT/ViT_explanation_generator.py")),
            tmp,
        ),
    }


def reference_model(module: Any, model: nn.Module) -> nn.Module:
    """The authors' ``VisionTransformer`` with ``model``'s (timm) weights."""
    pe = model.patch_embed
    ref = module.VisionTransformer(
        img_size=pe.img_size[0],
        patch_size=pe.patch_size[0],
        num_classes=model.num_classes,
        embed_dim=model.embed_dim,
        depth=len(model.blocks),
        num_heads=model.blocks[0].attn.num_heads,
        mlp_ratio=model.blocks[0].mlp.fc1.out_features / model.embed_dim,
        qkv_bias=model.blocks[0].attn.qkv.bias is not None,
        norm_layer=partial(nn.LayerNorm, eps=model.norm.eps),
    )
    missing, unexpected = ref.load_state_dict(model.state_dict(), strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    return ref.eval()


# ------------------------------------------------------------------ the models
def embedded() -> Tuple[nn.Module, torch.Tensor]:
    model = zoo.load_default_model().eval()
    scenes = zoo.make_scenes(8, split="test", seed=1234)
    return model, zoo.preprocess(scenes.images)


def random_small(seed: int = 0) -> Tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    model = timm.create_model(
        "vit_small_patch16_224",
        pretrained=False,
        img_size=64,
        patch_size=8,
        depth=8,
        num_classes=10,
    ).eval()
    x = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(seed + 1))
    return model, x


def vit_base() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_base_patch16_224", pretrained=False).eval()


# -------------------------------------------------------------------- methods
def ours(kind: str, model: nn.Module, start: Optional[int] = None) -> Callable:
    """Our method; ``start`` our (0-based) start_layer, None: the defaults."""
    if kind == "tam":
        m = TransitionAttentionMaps(model, start_layer=start)
    else:
        m = BeyondIntuition(model, mode=kind, start_layer=start)
    return lambda x, t: patch_scores(m.attribute(x, target=t), model).flatten(1)


def theirs(
    kind: str, refs: Dict[str, Any], model: nn.Module, start: Optional[int] = None
) -> Callable:
    """The authors' call, (B, N) patch maps; ``start`` is our start_layer (their
    BI code counts blocks from 1), None: their defaults."""
    if kind == "tam":
        interp = refs["tam"].InterpretTransformer(
            reference_model(refs["tam_vit"], model)
        )
        kw = {} if start is None else {"start_layer": start}
        return lambda x, t: interp.transition_attention_maps(x, index=t.tolist(), **kw)
    base = refs["bi"].Baselines(reference_model(refs["bi_vit"], model))
    fn = base.generate_ours if kind == "head" else base.generate_ours_c
    call = fn if start is None else partial(fn, start_layer=start + 1)

    def per_image(x, t):  # their BI code serves one image per call
        return torch.cat([call(x[i : i + 1], index=int(t[i])) for i in range(len(x))])

    return per_image


def pearson(a: torch.Tensor, b: torch.Tensor) -> List[float]:
    out = []
    for u, v in zip(a.double(), b.double()):
        u, v = u - u.mean(), v - v.mean()
        den = float(u.norm() * v.norm())
        out.append(float((u * v).sum()) / den if den > 0 else float("nan"))
    return out


def compare(refs: Dict[str, Any]) -> None:
    cases = {
        "embedded default": embedded(),
        "random-weight ViT-S/8 (64 px, depth 8)": random_small(),
    }
    for name, (model, x) in cases.items():
        ref = reference_model(refs["tam_vit"], model)
        with torch.no_grad():
            same = torch.allclose(ref(x), model(x), atol=1e-4)
            t = model(x).argmax(dim=1)
        print(
            f"\n### {name}: authors' model output == ours: {same}; targets {t.tolist()}"
        )
        print("| method | per-image Pearson (8 images) | min | max abs diff / max |")
        print("|---|---|---|---|")
        for kind in ("tam", "head", "token"):
            for start in (None, 1):
                a = ours(kind, model, start)(x, t)
                b = theirs(kind, refs, model, start)(x, t).detach()
                r = pearson(a, b)
                rel = float((a - b).abs().max() / b.abs().max())
                label = {"tam": "TAM", "head": "BI head", "token": "BI token"}[kind]
                label += " (defaults)" if start is None else f", start_layer={start}"
                cells = " ".join(f"{v:.6f}" for v in r)
                print(f"| {label} | {cells} | {min(r):.6f} | {rel:.1e} |")


# ---------------------------------------------------------------------- speed
def _timed(fn: Callable[[], Any], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def floor(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> Callable[[], None]:
    """One forward and one full backward of the batch (the target logit, summed),
    the unit of the authors' loop."""

    def run() -> None:
        xs = x.detach().requires_grad_(True)
        out = model(xs)
        out.gather(1, t[:, None]).sum().backward()
        model.zero_grad(set_to_none=True)

    return run


def speed(refs: Dict[str, Any], repeats: int) -> None:
    model_e, x_e = embedded()
    cases = {"embedded default": (model_e, x_e), "ViT-B/16 random": (vit_base(), None)}
    print(
        "\n| model | batch | method | ours s | authors' s | floor s | ours / floor "
        "| ours / authors' | Pearson min |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, (model, xs) in cases.items():
        for b in (1, 8):
            if xs is None:
                x = torch.randn(
                    b, 3, 224, 224, generator=torch.Generator().manual_seed(5)
                )
            else:
                x = xs[:b]
            with torch.no_grad():
                t = model(x).argmax(dim=1)
            f = 20 * _timed(floor(model, x, t), repeats)
            for kind in ("tam", "head", "token"):
                mine, ref = ours(kind, model), theirs(kind, refs, model)
                out = {}
                n = repeats if name.startswith("embedded") else 1
                s_ours = _timed(lambda: out.__setitem__("a", mine(x, t)), n)
                s_ref = _timed(lambda: out.__setitem__("b", ref(x, t)), n)
                r = min(pearson(out["a"], out["b"].detach()))
                label = {"tam": "TAM", "head": "BI head", "token": "BI token"}[kind]
                print(
                    f"| {name} | {b} | {label} | {s_ours:.3f} | {s_ref:.3f} | {f:.3f} "
                    f"| {s_ours / f:.2f} | {s_ours / s_ref:.2f} | {r:.6f} |",
                    flush=True,
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--speed", action="store_true", help="timings instead")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, timm {timm.__version__}, threads 1")
    print(f"TAM reference: XianrenYty/Transition_Attention_Maps@{commit(TAM_REPO)}")
    print(f"BI reference: jiaminchen-1031/transformerinterp@{commit(BI_REPO)}")
    with tempfile.TemporaryDirectory() as tmp:
        refs = reference_modules(Path(tmp))
        if args.speed:
            speed(refs, args.repeats)
        else:
            compare(refs)
    sys.stdout.flush()


if __name__ == "__main__":
    np.set_printoptions(precision=6)
    main()
