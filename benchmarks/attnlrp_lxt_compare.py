"""AttnLRP / CP-LRP beside LXT 2.1 (``pip install lxt==2.1 zennit==0.5.1``).

LXT's efficient mode patches classes (``monkey_patch``), globally, for the process:

- ``monkey_patch(torchvision.models.vision_transformer)`` (LXT's default map for
  torchvision) patches ``nn.GELU`` (identity rule), ``nn.LayerNorm`` (std detached:
  identity rule) and ``nn.MultiheadAttention`` (query and key detached: attention
  constant, CP-LRP). Linear layers keep the plain gradient (LRP-0) unless a zennit
  composite adds the gamma rule (``monkey_patch_zennit``); zennit's hooks reach
  ``nn.Linear`` / ``nn.Conv2d`` modules only, not the projections that
  ``nn.MultiheadAttention`` calls functionally. So ``variant="cp-lrp"`` is compared
  there.
- LXT applies the full AttnLRP attention rules (query and key gradient / 4, value
  / 2: the uniform rule in both matrix products, the softmax's own gradient) only in
  its Hugging Face LLM / BERT maps (whose BERT module does not import under
  transformers 5). For the ViTs here, this script composes LXT's own rule functions
  (``lxt.efficient.rules.divide_gradient``, ``identity_rule_implicit`` and
  ``lxt.efficient.patches.layer_norm_forward``) into an AttnLRP patch map of the
  same shape as LXT's LLM maps: on torchvision's ``nn.MultiheadAttention`` (its
  ``wrap_attention_forward`` applied to the call's query, key and value) and on timm's
  ``Attention`` (the same division on q, k, v before the fused kernel). That is
  compared with ``variant="attnlrp"``.

Every patch is undone after each use (the class attributes are restored), so both
sides run in one process on the same weights and images; timings are taken in the
same run, the two sides called in turn (at least ``--repeats`` calls and
``--seconds`` of calls each), minimum of each.

Usage::

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD \\
        python benchmarks/attnlrp_lxt_compare.py [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import Clock, measure_interleaved  # noqa: E402

from captum_vit import AttnLRP  # noqa: E402


# ------------------------------------------------------------------ LXT patching
def import_lxt() -> None:
    """Import ``lxt.efficient``. Its model registry imports LXT's BERT patches,
    which fail under transformers 5 (``find_pruneable_heads_and_indices`` is gone);
    BERT is not used here, so that one module is replaced by an empty stand-in."""
    import types

    try:
        import lxt.efficient  # noqa: F401
    except ImportError:
        for k in [k for k in sys.modules if k.startswith("lxt.efficient")]:
            del sys.modules[k]
        stub = types.ModuleType("lxt.efficient.models.bert")
        stub.modeling_bert = types.ModuleType("bert_unavailable")  # type: ignore
        stub.attnLRP = {}  # type: ignore[attr-defined]
        sys.modules["lxt.efficient.models.bert"] = stub
        import lxt.efficient  # noqa: F401


@contextlib.contextmanager
def restored(*owners_and_names: Tuple[Any, str]) -> Iterator[None]:
    """Restore the class attributes ``(owner, name)`` on exit (LXT patches classes
    for the whole process)."""
    missing = object()
    saved = [(o, n, o.__dict__.get(n, missing)) for o, n in owners_and_names]
    try:
        yield
    finally:
        for owner, name, value in saved:
            if value is missing:
                if name in owner.__dict__:
                    delattr(owner, name)
            else:
                setattr(owner, name, value)


def _mha_attnlrp_forward(self, query, key, value, *args, **kwargs):
    """LXT's ``wrap_attention_forward`` division for ``nn.MultiheadAttention``."""
    from lxt.efficient.rules import divide_gradient

    query = divide_gradient(query, 4)
    key = divide_gradient(key, 4)
    value = divide_gradient(value, 2)
    return self.original_forward(query, key, value, *args, **kwargs)


def _timm_attention_attnlrp_forward(self, x, attn_mask=None, is_causal=False):
    """timm ``Attention`` with LXT's q/4, k/4, v/2 division before the kernel."""
    from lxt.efficient.rules import divide_gradient

    b, n, _ = x.shape
    qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    q, k = self.q_norm(q), self.k_norm(k)
    q, k, v = divide_gradient(q, 4), divide_gradient(k, 4), divide_gradient(v, 2)
    x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    x = x.transpose(1, 2).reshape(b, n, self.attn_dim)
    return self.proj_drop(self.proj(self.norm(x)))


@contextlib.contextmanager
def lxt_patched(kind: str, variant: str) -> Iterator[None]:
    """LXT's patches for ``kind`` (``"torchvision"`` or ``"timm"``) and ``variant``
    (``"cp-lrp"``: LXT's own torchvision map; ``"attnlrp"``: LXT's rule functions
    in its LLM maps' shape), undone on exit."""
    from functools import partial

    import_lxt()
    from lxt.efficient import monkey_patch
    from lxt.efficient.patches import (
        cp_multi_head_attention_forward,
        layer_norm_forward,
        non_linear_forward,
        patch_method,
    )

    import timm.layers.attention as timm_attention
    import timm.layers.norm as timm_norm

    owners = [
        (timm_norm.LayerNorm, "forward"),
        (nn.GELU, "forward"),
        (nn.GELU, "original_forward"),
        (nn.LayerNorm, "forward"),
        (nn.MultiheadAttention, "forward"),
        (nn.MultiheadAttention, "original_forward"),
        (timm_attention.Attention, "forward"),
    ]
    with restored(*owners):
        if kind == "torchvision" and variant == "cp-lrp":
            from torchvision.models import vision_transformer

            monkey_patch(vision_transformer)  # LXT's default map (CP-LRP inside)
        else:
            attention: Dict[Any, Callable] = {}
            if kind == "torchvision":
                attention = {
                    nn.MultiheadAttention: partial(
                        patch_method,
                        (
                            _mha_attnlrp_forward
                            if variant == "attnlrp"
                            else cp_multi_head_attention_forward
                        ),
                        keep_original=True,
                    )
                }
            else:
                assert variant == "attnlrp"
                attention = {
                    timm_attention.Attention: partial(
                        patch_method, _timm_attention_attnlrp_forward
                    ),
                    # timm's LayerNorm subclass has its own forward
                    timm_norm.LayerNorm: partial(patch_method, layer_norm_forward),
                }
            monkey_patch(
                nn,  # named in messages only: the patch map is given
                {
                    nn.GELU: partial(
                        patch_method, non_linear_forward, keep_original=True
                    ),
                    nn.LayerNorm: partial(patch_method, layer_norm_forward),
                    **attention,
                },
            )
        yield


def lxt_relevance(
    model: nn.Module,
    images: torch.Tensor,
    target: torch.Tensor,
    kind: str,
    variant: str,
    lin_gamma: Optional[float] = None,
    conv_gamma: Optional[float] = None,
) -> torch.Tensor:
    """LXT's input × gradient relevance (B, C, H, W) of the target logits; with
    gammas, zennit's Gamma rule on ``nn.Linear`` / ``nn.Conv2d`` (LXT's ViT
    example)."""
    with lxt_patched(kind, variant), contextlib.ExitStack() as stack:
        if lin_gamma is not None:
            import zennit.rules as z_rules
            from lxt.efficient import monkey_patch_zennit
            from zennit.composites import LayerMapComposite
            from zennit.core import BasicHook

            stack.enter_context(
                restored((BasicHook, "forward"), (BasicHook, "backward"))
            )
            monkey_patch_zennit()
            comp = LayerMapComposite(
                [
                    (nn.Conv2d, z_rules.Gamma(conv_gamma)),
                    (nn.Linear, z_rules.Gamma(lin_gamma)),
                ]
            )
            comp.register(model)
            stack.callback(comp.remove)
        x = images.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            out = model(x)
            out = getattr(out, "logits", out)
            (g,) = torch.autograd.grad(out.gather(1, target[:, None]).sum(), x)
        return (x * g).detach()


# ------------------------------------------------------------------ comparison
def pearson(a: torch.Tensor, b: torch.Tensor) -> List[float]:
    """Per-image Pearson correlation of two (B, ...) maps."""
    a = a.flatten(1).double()
    b = b.flatten(1).double()
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    den = (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-300)
    return ((a * b).sum(1) / den).tolist()


def models(quick: bool) -> List[Tuple[str, str, nn.Module, int]]:
    """``(name, kind, model, image size)``: random-weight and embedded-size models."""
    import timm
    from torchvision.models.vision_transformer import VisionTransformer

    out = []
    torch.manual_seed(0)
    tv = VisionTransformer(
        image_size=64,
        patch_size=8,
        num_layers=4,
        num_heads=4,
        hidden_dim=64,
        mlp_dim=128,
        num_classes=10,
    )
    tv.heads.head.reset_parameters()  # torchvision zero-initialises its head
    out.append(("torchvision ViT 64px d4 (random)", "torchvision", tv.eval(), 64))
    torch.manual_seed(0)
    small = timm.create_model(
        "vit_small_patch16_224",
        pretrained=False,
        img_size=64,
        patch_size=8,
        depth=4,
        num_classes=10,
    )
    out.append(("timm vit_small 64px d4 (random)", "timm", small.eval(), 64))
    from captum_vit import zoo

    out.append(("embedded default (trained)", "timm", zoo.load_default_model(), 64))
    if not quick:
        torch.manual_seed(0)
        tvb = VisionTransformer(
            image_size=224,
            patch_size=16,
            num_layers=12,
            num_heads=12,
            hidden_dim=768,
            mlp_dim=3072,
            num_classes=1000,
        )
        tvb.heads.head.reset_parameters()
        out.append(("torchvision vit_b_16 (random)", "torchvision", tvb.eval(), 224))
        torch.manual_seed(0)
        vb = timm.create_model("vit_base_patch16_224", pretrained=False)
        out.append(("timm vit_base_patch16_224 (random)", "timm", vb.eval(), 224))
    return out


def compare(
    model: nn.Module,
    kind: str,
    size: int,
    batch: int,
    variant: str,
    gammas: Optional[Tuple[float, float]] = None,
    seed: int = 1,
) -> Tuple[List[float], List[float], torch.Tensor, torch.Tensor]:
    """Per-image Pearson of our map and LXT's (pixel maps summed over channels, and
    patch sums), and both maps."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, size, size, generator=g)
    with torch.no_grad():
        out = model(x)
        t = getattr(out, "logits", out).argmax(1)
    kw: Dict[str, Any] = {}
    if gammas is not None:
        kw = dict(lin_gamma=gammas[0], conv_gamma=gammas[1])
    ours = AttnLRP(model, variant=variant, **kw).attribute(x, target=t)
    lin, conv = gammas if gammas is not None else (None, None)
    ref = lxt_relevance(model, x, t, kind, variant, lin, conv)
    pix = pearson(ours.sum(1), ref.sum(1))
    p = 16 if size == 224 else 8
    pool = lambda r: F.avg_pool2d(r.sum(1, keepdim=True), p)  # noqa: E731
    return pix, pearson(pool(ours), pool(ref)), ours, ref


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small models only")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="calls each, at least")
    parser.add_argument(
        "--seconds", type=float, default=2.0, help="seconds of calls each, at least"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    import lxt

    print(f"# lxt {getattr(lxt, '__version__', '2.1')}, torch {torch.__version__}")
    print(
        "| model | variant | gamma (lin, conv) | Pearson pixel min / mean |"
        " Pearson patch min | ours s | LXT s |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, kind, model, size in models(args.quick):
        for param in model.parameters():
            param.requires_grad_(False)
        settings: List[Tuple[str, Optional[Tuple[float, float]]]] = [
            ("attnlrp", None),
            ("attnlrp", (0.05, 0.25)),
        ]
        if kind == "torchvision":
            settings = [("cp-lrp", None), ("cp-lrp", (0.05, 0.25)), ("attnlrp", None)]
        for variant, gammas in settings:
            pix, patch, _, _ = compare(model, kind, size, args.batch, variant, gammas)
            x = torch.randn(args.batch, 3, size, size)
            t = torch.zeros(args.batch, dtype=torch.long)
            kw = (
                {}
                if gammas is None
                else dict(lin_gamma=gammas[0], conv_gamma=gammas[1])
            )
            method = AttnLRP(model, variant=variant, **kw)
            lin, conv = gammas if gammas is not None else (None, None)
            best = measure_interleaved(
                Clock(torch.device("cpu")),
                {
                    "ours": lambda: method.attribute(x, target=t),
                    "lxt": lambda: lxt_relevance(model, x, t, kind, variant, lin, conv),
                },
                args.seconds,
                args.repeats,
            )
            g = "eps" if gammas is None else f"{gammas[0]}, {gammas[1]}"
            print(
                f"| {name} | {variant} | {g} | {min(pix):.5f} / "
                f"{statistics.mean(pix):.5f} | {min(patch):.5f} | "
                f"{best['ours']:.4f} | {best['lxt']:.4f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
