"""Side by side with Chefer et al.'s baselines (hila-chefer/Transformer-Explainability):
Partial LRP, attention Grad-CAM and Grad-SAM on the same timm weights.

The reference files (``baselines/ViT/ViT_LRP.py``, ``ViT_orig_LRP.py``, ``ViT_new.py``,
``ViT_explanation_generator.py``, ``modules/``) are copied from a local clone into a
temporary folder at run time, with small CPU edits applied there (``.cuda()`` removed;
``generate_cam_attn``'s hard-coded 14×14 grid replaced by the flat patch row, which
gives the same numbers). Nothing of theirs is imported by the package. The timm
weights are loaded into each reference model (same parameter names; every LayerNorm
set to the timm model's epsilon) and the logits compared first.

Per image, the Pearson correlation of the patch maps:

- ``partial-lrp`` vs ``LRP(ViT_LRP).generate_LRP(method="last_layer")`` (the rules of
  Chefer et al.'s paper) and vs the same call on ``ViT_orig_LRP`` (what their
  evaluation script ``generate_visualizations.py`` runs for this baseline);
- ``gradcam-attention`` vs ``Baselines(ViT_new).generate_cam_attn``;
- ``gradsam``: Grad-SAM has no official code; its eq. 11 is evaluated on the attention
  maps and gradients that the reference ViT (``ViT_new``, ``register_hook=True``)
  saves, an independent forward/backward, for every reading.

The reference LRP runs one image at a time (``layers_ours.Add`` normalises over the
whole batch tensor); ours runs the whole batch.

Usage::

    python benchmarks/chefer_baselines_compare.py \\
        --reference /work/.mirror/hila-chefer+Transformer-Explainability/repo
    python benchmarks/chefer_baselines_compare.py --n 8 --vit-base   # adds ViT-B

``--reference`` is a clone (or bare git directory) of the repository; fetch it with
``git clone https://github.com/hila-chefer/Transformer-Explainability``.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np
import timm
import torch
import torch.nn as nn

from captum_vit import GradSAM, PartialLRP, ViTGradCAM, patch_scores

FILES = [
    "baselines/ViT/ViT_LRP.py",
    "baselines/ViT/ViT_orig_LRP.py",
    "baselines/ViT/ViT_new.py",
    "baselines/ViT/ViT_explanation_generator.py",
    "baselines/ViT/helpers.py",
    "baselines/ViT/layer_helpers.py",
    "baselines/ViT/weight_init.py",
    "modules/__init__.py",
    "modules/layers_ours.py",
    "modules/layers_lrp.py",
]

# (file, old, new): the CPU edits, applied to the temporary copy only
EDITS = [
    ("baselines/ViT/ViT_explanation_generator.py", "one_hot.cuda()", "one_hot"),
    ("baselines/ViT/ViT_explanation_generator.py", "input.cuda()", "input"),
    (
        "baselines/ViT/ViT_explanation_generator.py",
        "cam = cam[0, :, 0, 1:].reshape(-1, 14, 14)",
        "cam = cam[0, :, 0, 1:]",
    ),
    (
        "baselines/ViT/ViT_explanation_generator.py",
        "grad = grad[0, :, 0, 1:].reshape(-1, 14, 14)",
        "grad = grad[0, :, 0, 1:]",
    ),
    (
        "baselines/ViT/ViT_explanation_generator.py",
        "grad = grad.mean(dim=[1, 2], keepdim=True)",
        "grad = grad.mean(dim=1, keepdim=True)",
    ),
]


def _git(reference: Path, *args: str) -> str:
    git_dir = reference / ".git" if (reference / ".git").exists() else reference
    out = subprocess.run(
        ["git", f"--git-dir={git_dir}", *args], capture_output=True, check=True
    )
    return out.stdout.decode()


def install_reference(reference: Path, into: Path) -> str:
    """Copy the reference files into ``into`` with the CPU edits; return the commit."""
    commit = _git(reference, "rev-parse", "HEAD").strip()
    for f in FILES:
        text = _git(reference, "show", f"HEAD:{f}")
        dest = into / f
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text)
    (into / "baselines" / "__init__.py").write_text("")
    (into / "baselines" / "ViT" / "__init__.py").write_text("")
    for f, old, new in EDITS:
        path = into / f
        text = path.read_text()
        if old not in text:
            raise RuntimeError(f"reference edit not applicable in {f}: {old!r}")
        path.write_text(text.replace(old, new))
    sys.path.insert(0, str(into))
    return commit


def reference_models(model: nn.Module) -> Dict[str, nn.Module]:
    """ViT_LRP, ViT_orig_LRP and ViT_new built like ``model``, with its weights, and
    two ViT_LRP hybrids whose ``Add`` or ``Linear`` modules follow ``layers_lrp``
    (ViT_orig_LRP's rules) instead: which of the two differences moves the map."""
    blk = model.blocks[0]
    cfg = dict(
        img_size=model.patch_embed.img_size[0],
        patch_size=model.patch_embed.patch_size[0],
        embed_dim=model.embed_dim,
        depth=len(model.blocks),
        num_heads=blk.attn.num_heads,
        mlp_ratio=blk.mlp.fc1.out_features / blk.mlp.fc1.in_features,
        qkv_bias=blk.attn.qkv.bias is not None,
        num_classes=model.num_classes,
    )
    eps = blk.norm1.eps
    state = model.state_dict()
    out = {}
    ours = importlib.import_module("modules.layers_ours")
    orig = importlib.import_module("modules.layers_lrp")
    for name in ("ViT_LRP", "ViT_orig_LRP", "ViT_new", "orig Add", "orig Linear"):
        file = name if name.startswith("ViT") else "ViT_LRP"
        mod = importlib.import_module(f"baselines.ViT.{file}")
        ref = mod.VisionTransformer(**cfg)
        if not name.startswith("ViT"):
            layer = name.split()[1]
            for m in ref.modules():
                if type(m) is getattr(ours, layer):
                    m.__class__ = getattr(orig, layer)
        missing, unexpected = ref.load_state_dict(state, strict=False)
        if missing or [k for k in unexpected if "norm" in k or "blocks" in k]:
            raise RuntimeError(f"{name}: missing {missing}, unexpected {unexpected}")
        for m in ref.modules():
            if isinstance(m, nn.LayerNorm):
                m.eps = eps
        out[name] = ref.eval()
    return out


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    a, b = a - a.mean(), b - b.mean()
    den = a.norm() * b.norm()
    if den == 0:
        return float("nan")
    return float((a @ b) / den)


def gradsam_on_reference(ref: nn.Module, x: torch.Tensor, t: int, reading: str):
    """Eq. 11 on the attention maps and gradients that ViT_new saves."""
    x = x.clone().requires_grad_(True)
    logits = ref(x, register_hook=True)
    ref.zero_grad()
    logits[0, t].backward()
    total = 0.0
    for blk in ref.blocks:
        a = blk.attn.get_attention_map()[0].detach()
        g = blk.attn.get_attn_gradients()[0]
        total = total + (a * g.clamp(min=0)).sum(0)
    if reading == "query":
        r = total.sum(1)
    elif reading == "key":
        r = total.sum(0)
    else:
        r = total[0]
    return r[1:]


def compare(
    label: str, model: nn.Module, x: torch.Tensor, refs: Dict[str, nn.Module]
) -> List[Dict[str, float]]:
    from baselines.ViT.ViT_explanation_generator import LRP, Baselines

    with torch.no_grad():
        logits = model(x)
    # (the LRP models register hooks in their forward: they need grad enabled)
    diffs = {k: float((r(x).detach() - logits).abs().max()) for k, r in refs.items()}
    targets = logits.argmax(1)
    print(
        f"\n### {label}: {x.shape[0]} images, logits max |diff| "
        + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items())
    )
    ours = {
        "partial-lrp": PartialLRP(model).attribute(x, target=targets),
        "gradcam-attention": ViTGradCAM(model, on="attention").attribute(
            x, target=targets
        ),
    }
    for reading in ("query", "key", "readout"):
        ours[f"gradsam {reading}"] = GradSAM(model, reading=reading).attribute(
            x, target=targets
        )
    ours = {k: patch_scores(v, model).flatten(1) for k, v in ours.items()}
    cross = [
        pearson(ours["gradsam query"][i], ours["gradsam readout"][i])
        for i in range(x.shape[0])
    ]
    print(
        "Grad-SAM query vs readout reading (ours, per image): "
        + " ".join(f"{v:.3f}" for v in cross)
    )
    lrp = LRP(refs["ViT_LRP"])
    orig = LRP(refs["ViT_orig_LRP"])
    base = Baselines(refs["ViT_new"])
    orig_add = LRP(refs["orig Add"])
    orig_linear = LRP(refs["orig Linear"])
    pairs: List[Tuple[str, str, Callable[[torch.Tensor, int], torch.Tensor]]] = [
        (
            "partial-lrp",
            'ViT_LRP generate_LRP("last_layer")',
            lambda xi, t: lrp.generate_LRP(xi, index=t, method="last_layer"),
        ),
        (
            "partial-lrp",
            'ViT_orig_LRP generate_LRP("last_layer")',
            lambda xi, t: orig.generate_LRP(xi, index=t, method="last_layer"),
        ),
        (
            "partial-lrp",
            "ViT_LRP with ViT_orig_LRP's Add (no renormalisation)",
            lambda xi, t: orig_add.generate_LRP(xi, index=t, method="last_layer"),
        ),
        (
            "partial-lrp",
            "ViT_LRP with ViT_orig_LRP's Linear (x+w+, x-w- apart)",
            lambda xi, t: orig_linear.generate_LRP(xi, index=t, method="last_layer"),
        ),
        (
            "gradcam-attention",
            "ViT_new generate_cam_attn",
            lambda xi, t: base.generate_cam_attn(xi, index=t),
        ),
    ]
    for reading in ("query", "key", "readout"):
        pairs.append(
            (
                f"gradsam {reading}",
                f"eq. 11 ({reading}) on ViT_new's saved attention",
                lambda xi, t, r=reading: gradsam_on_reference(
                    refs["ViT_new"], xi, t, r
                ),
            )
        )
    rows = []
    print("| method | reference | per-image Pearson | min |")
    print("|---|---|---|---|")
    for name, ref_name, run in pairs:
        rs, flat = [], 0
        for i in range(x.shape[0]):
            r = run(x[i : i + 1], int(targets[i])).detach().flatten()
            mine = ours[name][i]
            if not bool((mine != mine[0]).any()):
                # a constant map (all zero after the ReLU): the reference's min-max
                # normalisation gives NaN, Pearson is undefined on both sides
                flat += 1
                rs.append(float("nan"))
                assert bool(torch.isnan(r).all() | (r == r[0]).all()), (name, r)
                continue
            rs.append(pearson(mine, r))
        arr = np.array(rs)
        cells = " ".join("flat" if np.isnan(v) else f"{v:.5f}" for v in arr)
        low = float(np.nanmin(arr)) if flat < len(arr) else float("nan")
        print(f"| {name} | {ref_name} | {cells} | {low:.5f} |")
        rows.append(dict(model=label, method=name, reference=ref_name, min=low))
    return rows


def random_model(name: str, seed: int, **kw) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, **kw).eval()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--reference",
        type=Path,
        default=Path("/work/.mirror/hila-chefer+Transformer-Explainability/repo"),
        help="a clone (or git directory) of hila-chefer/Transformer-Explainability",
    )
    parser.add_argument("--n", type=int, default=4, help="images per model")
    parser.add_argument("--vit-base", action="store_true", help="also ViT-B/16")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="chefer_ref_"))
    try:
        commit = install_reference(args.reference, work)
        print(f"reference: hila-chefer/Transformer-Explainability @ {commit}")
        print(f"torch {torch.__version__}, timm {timm.__version__}")
        g = torch.Generator().manual_seed(0)
        models = []
        for seed in (0, 1):
            m = random_model(
                "vit_small_patch16_224",
                seed,
                img_size=64,
                patch_size=8,
                depth=4,
                embed_dim=96,
                num_heads=4,
                num_classes=10,
            )
            x = torch.randn(args.n, 3, 64, 64, generator=g)
            models.append((f"random-weight ViT (64 px, 4 blocks, seed {seed})", m, x))
        from captum_vit.zoo import load_default_model, load_default_scenes

        x, _ = load_default_scenes(n=args.n, seed=0)
        models.append(("embedded default (scenes)", load_default_model(), x))
        if args.vit_base:
            m = random_model("vit_base_patch16_224", 0)
            x = torch.randn(min(args.n, 2), 3, 224, 224, generator=g)
            models.append(("random-weight vit_base_patch16_224", m, x))
        rows = []
        for label, model, x in models:
            rows += compare(label, model, x, reference_models(model))
        print("\nminimum per-image Pearson (flat: both maps constant, left out):")
        for r in rows:
            print(
                f"  {r['model']:48s} {r['method']:18s} {r['min']:.5f}  {r['reference']}"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
