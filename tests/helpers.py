"""Helpers shared by the test files: tiny random-weight models of every supported
family, model-state snapshots, image folders, and oracles written directly against
the libraries (never through captum_vit's adapters).

Test files import them with ``from helpers import ...``: pytest puts ``tests/`` on
``sys.path`` (the folder holds ``conftest.py`` and no ``__init__.py``). Fixtures live
in ``conftest.py``.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import timm
import torch
import torch.nn as nn
from PIL import Image

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
    # SigLIP: no CLS token, attention-pooled head (global_pool="map")
    "siglip": ("vit_base_patch16_siglip_224", dict(img_size=32, patch_size=8), 32),
    # BEiT: relative position bias in every block, mean-pooled head
    "beit": (
        "beit_base_patch16_224",
        dict(img_size=32, patch_size=8, head_init_scale=1.0),  # logits of order 1
        32,
    ),
}

#: Families built from small configs of other libraries (and timm's Swin).
OTHER_FAMILIES = (
    "torchvision",
    "hf_vit",
    "hf_deit",
    "hf_deit_teacher",
    "hf_dinov2",
    "hf_dinov2_reg",
    "swin",
)
#: Image-text models as ``ZeroShotClassifier`` s over 5 prompts (issue 30).
IMAGE_TEXT_FAMILIES = ("zs_hf_clip", "zs_hf_siglip", "zs_open_clip", "zs_timm")
#: Every family of the supported-models matrix.
ALL_FAMILIES = tuple(FAMILIES) + OTHER_FAMILIES + IMAGE_TEXT_FAMILIES


def _hf_model(kind: str, depth: int, num_classes: int) -> nn.Module:
    import transformers as tf

    common = dict(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=depth,
        num_attention_heads=2,
        num_labels=num_classes,
    )
    if kind == "hf_vit":
        return tf.ViTForImageClassification(
            tf.ViTConfig(intermediate_size=64, **common)
        )
    if kind == "hf_deit":
        cfg = tf.DeiTConfig(intermediate_size=64, **common)
        return tf.DeiTForImageClassification(cfg)
    if kind == "hf_deit_teacher":
        cfg = tf.DeiTConfig(intermediate_size=64, **common)
        return tf.DeiTForImageClassificationWithTeacher(cfg)
    if kind == "hf_dinov2":
        return tf.Dinov2ForImageClassification(tf.Dinov2Config(mlp_ratio=2, **common))
    cfg = tf.Dinov2WithRegistersConfig(mlp_ratio=2, num_register_tokens=2, **common)
    return tf.Dinov2WithRegistersForImageClassification(cfg)


def _other_model(family: str, depth: int = 2, num_classes: int = 5) -> nn.Module:
    if family == "torchvision":
        from torchvision.models.vision_transformer import VisionTransformer

        return VisionTransformer(
            image_size=32,
            patch_size=8,
            num_layers=depth,
            num_heads=2,
            hidden_dim=32,
            mlp_dim=64,
            num_classes=max(num_classes, 1),
        )
    if family == "swin":
        return timm.create_model(
            "swin_tiny_patch4_window7_224",
            pretrained=False,
            img_size=32,
            window_size=2,
            depths=(1,) * (depth - 1) + (1,),
            num_heads=(2,) * depth,
            embed_dim=16,
            num_classes=num_classes,
        )
    return _hf_model(family, depth, num_classes)


def make_model(family: str, seed: int = 0, **overrides) -> nn.Module:
    """A tiny random-weight model of ``family`` in eval mode.

    timm families take timm keyword overrides; the others take ``depth`` and
    ``num_classes`` (0 = headless: ``nn.Identity`` heads for torchvision).
    """
    torch.manual_seed(seed)
    if family in IMAGE_TEXT_FAMILIES:
        return zero_shot_model(family, seed=seed, **overrides)
    if family in OTHER_FAMILIES:
        num_classes = overrides.pop("num_classes", 5)
        model = _other_model(family, overrides.pop("depth", 2), num_classes)
        assert not overrides, f"unknown overrides for {family}: {overrides}"
        if family == "torchvision" and num_classes == 0:
            model.heads = nn.Identity()
        elif family == "torchvision":  # torchvision zero-initialises its head
            _visible_head(model.heads.head)
        return model.eval()
    name, kwargs, _ = FAMILIES[family]
    kw = {**_TINY, **kwargs, **overrides}
    model = timm.create_model(name, **kw)
    if family in ("eva", "siglip") and isinstance(model.head, nn.Linear):
        _visible_head(model.head)  # their heads start ~1e-3 small
    return model.eval()


def _visible_head(linear: nn.Linear) -> None:
    """Re-draw a classifier so that logits are of order 0.1-1: oracle comparisons
    with absolute tolerances would otherwise compare numbers near zero."""
    with torch.no_grad():
        linear.weight.normal_(0.0, 0.5)
        linear.bias.normal_(0.0, 0.1)


def image_size(family: str) -> int:
    return FAMILIES[family][2] if family in FAMILIES else 32


def _instance_attributes(mod: nn.Module) -> tuple:
    """Names in the module's ``__dict__``, ignoring an instance attribute that is just
    the class's own method bound to the module (what ``monkeypatch.undo`` leaves)."""
    names = []
    for k, v in mod.__dict__.items():
        own = getattr(type(mod), k, None)
        if getattr(v, "__self__", None) is mod and getattr(v, "__func__", 0) is own:
            continue
        names.append(k)
    return tuple(sorted(names))


def model_state(model: nn.Module) -> List[tuple]:
    """Everything a call must leave unchanged: flags, hooks, modes, grads."""
    state = []
    for name, mod in model.named_modules():
        cfg = getattr(mod, "config", None)
        state.append(
            (
                name,
                mod.training,
                _instance_attributes(mod),  # no attribute left behind
                mod.__dict__.get("fused_attn", None),
                getattr(cfg, "_attn_implementation", None),
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


def write_scene_folder(
    root, n: int = 4, classes=("right", "left"), seed: int = 21, stem: str = "scene"
):
    """An ImageFolder of ``n`` embedded scenes saved as PNGs (class folders taken in
    turn) and its boxes rows ``[key, x0, y0, x1, y1]`` (the main item's box); the
    files are named ``{stem}{i}.png``."""
    from captum_vit import zoo

    root = Path(root)
    sc = zoo.make_scenes(n, split="test", seed=seed)
    rows = []
    for i in range(n):
        cls = classes[i % len(classes)]
        (root / cls).mkdir(parents=True, exist_ok=True)
        key = f"{cls}/{stem}{i}.png"
        img = (sc.images[i].transpose(1, 2, 0) * 255).round().astype(np.uint8)
        Image.fromarray(img).save(root / key)
        rows.append([key, *sc.boxes[i, 0].tolist()])
    return rows


def images(
    family: str, b: int = 2, seed: int = 1, size: Optional[int] = None
) -> torch.Tensor:
    """A seeded batch of ``b`` random images of the family's size (or ``size``)."""
    s = size or image_size(family)
    return torch.randn(b, 3, s, s, generator=torch.Generator().manual_seed(seed))


def same_state(a: List[tuple], b: List[tuple]) -> bool:
    """Whether two :func:`model_state` snapshots agree."""
    return a == b


def write_scene_pngs(folder: Path, n: int = 10, seed: int = 3, size: int = 40) -> Path:
    """``n`` embedded scenes of ``size`` px saved as ``folder/img{i}.png`` (no labels).

    Args:
        folder: The folder to create and fill.
        n: How many images.
        seed: The scenes' seed.
        size: Their side in pixels.

    Returns:
        ``folder``.
    """
    from captum_vit import zoo

    sc = zoo.make_scenes(n, split="test", seed=seed, image_size=size)
    folder.mkdir()
    for i in range(n):
        img = (sc.images[i].transpose(1, 2, 0) * 255).round().astype(np.uint8)
        Image.fromarray(img).save(folder / f"img{i}.png")
    return folder


#: A tiny classifier in the zoo's format: 32 px, patch 8, one block, 10 classes.
ZOO_CONFIG = dict(
    image_size=32,
    patch_size=8,
    embed_dim=32,
    depth=1,
    num_heads=2,
    mlp_ratio=2.0,
    num_classes=10,
)


def save_zoo_classifier(path: Path, seed: int = 0, image_size: int = 32) -> Path:
    """Save a random-weight :data:`ZOO_CONFIG` classifier (``--model default
    --checkpoint`` reads it) drawn after ``torch.manual_seed(seed)``.

    Args:
        path: Where to save it.
        seed: The seed its weights are drawn with.
        image_size: Its input size in pixels.

    Returns:
        ``path``.
    """
    from captum_vit import zoo

    torch.manual_seed(seed)
    cfg = dict(ZOO_CONFIG, image_size=image_size)
    torch.save({"config": cfg, "state_dict": zoo.build_model(cfg).state_dict()}, path)
    return path


# ------------------------------------------------------------------ the CLI
#: ``evaluate`` options that make a run fast (few curve steps and samples, no ROAD).
FAST_EVALUATE = [
    "--curve-steps",
    "2",
    "--faith-samples",
    "4",
    "--sensitivity-sizes",
    "2",
    "--sensitivity-samples",
    "4",
    "--road",
    "off",
    "--workers",
    "0",
    "--quiet",
    "--infidelity-samples",
    "2",
]


def cli(capsys, *args) -> Tuple[int, str, str]:
    """Run ``captum-vit`` in this process (arguments turned into strings).

    Args:
        capsys: pytest's capsys fixture of the calling test.
        *args: The command line after ``captum-vit``.

    Returns:
        The exit status, stdout and stderr.
    """
    from captum_vit.cli import main

    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def run_cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the installed ``captum-vit`` console script in a subprocess.

    Args:
        *args: The command line after ``captum-vit``.
        timeout: Seconds before the run counts as hung.

    Returns:
        The finished process, its output captured as text.
    """
    exe = shutil.which("captum-vit")
    assert exe is not None, "the captum-vit console script is not installed"
    return subprocess.run(
        [exe, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


# ------------------------------------------------------------------ timm oracles
def timm_tokens(model: nn.Module, images: torch.Tensor):
    """(tokens entering block 0, Eva's rope or None), written out from timm."""
    from timm.models.beit import Beit
    from timm.models.eva import Eva

    x = model.patch_embed(images)
    if isinstance(model, Eva):
        x, rope = model._pos_embed(x)
        return model.norm_pre(x), rope
    if isinstance(model, Beit):
        x = torch.cat([model.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        if model.pos_embed is not None:
            x = x + model.pos_embed
        return model.pos_drop(x), None
    return model.norm_pre(model.patch_drop(model._pos_embed(x))), None


def _beit_block_on_subset(blk: nn.Module, x: torch.Tensor, idx: torch.Tensor, shared):
    """One BEiT block on a reduced sequence, by hand from its parameters: the
    relative position bias taken at the kept (query, key) token pairs ``idx``."""
    attn = blk.attn
    b, t, c = x.shape
    h = blk.norm1(x)
    bias = None
    if attn.q_bias is not None:
        bias = torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))
    qkv = torch.nn.functional.linear(h, attn.qkv.weight, bias)
    q, k, v = qkv.reshape(b, t, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    logits = (q * attn.scale) @ k.transpose(-2, -1)
    if attn.relative_position_bias_table is not None:
        n = attn.window_size[0] * attn.window_size[1] + 1
        table = attn.relative_position_bias_table[attn.relative_position_index.view(-1)]
        full = table.view(n, n, -1).permute(2, 0, 1)
        logits = logits + full[:, idx][:, :, idx]
    if shared is not None:
        logits = logits + shared[:, idx][:, :, idx]
    y = attn.proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(b, t, c))
    g1 = 1.0 if blk.gamma_1 is None else blk.gamma_1
    g2 = 1.0 if blk.gamma_2 is None else blk.gamma_2
    x = x + g1 * y
    return x + g2 * blk.mlp(blk.norm2(x))


def reduced_forward(model: nn.Module, image: torch.Tensor, kept: torch.Tensor):
    """Oracle: one image's logits with held-out patch tokens physically removed.

    Written against timm directly: embed, keep prefix + kept patch tokens, run the
    blocks (Eva: rope of the kept patches; BEiT: the relative position bias at the
    kept token pairs, by hand), and let timm's own head pool over what is left.
    """
    from timm.models.beit import Beit

    x, rope = timm_tokens(model, image[None])
    p = model.num_prefix_tokens
    idx = torch.nonzero(kept).flatten()
    x = torch.cat([x[:, :p], x[:, p:][:, idx]], dim=1)
    if isinstance(model, Beit):
        tok = torch.cat([torch.arange(p), idx + p])
        shared = model.rel_pos_bias() if model.rel_pos_bias is not None else None
        for blk in model.blocks:
            x = _beit_block_on_subset(blk, x, tok, shared)
    else:
        for blk in model.blocks:
            x = blk(x, rope=rope[idx]) if rope is not None else blk(x)
    return model.forward_head(model.norm(x))[0]


def map_pool_by_hand(model: nn.Module, tokens: torch.Tensor):
    """timm attention pool (global_pool="map") written out: returns the logits and
    the (B, heads, Q, T') pool attention over the pooled tokens (final-normed
    ``tokens``; prefix tokens skipped unless the model pools them)."""
    pool = model.attn_pool
    x = tokens if model.pool_include_prefix else tokens[:, model.num_prefix_tokens :]
    b, n, c = x.shape
    hd = pool.head_dim
    q = pool.q(pool.latent.expand(b, -1, -1))
    q = q.reshape(b, -1, pool.num_heads, hd).transpose(1, 2)
    k, v = pool.kv(x).reshape(b, n, 2, pool.num_heads, hd).permute(2, 0, 3, 1, 4)
    a = ((q @ k.transpose(-2, -1)) * hd**-0.5).softmax(-1)
    y = pool.proj((a @ v).transpose(1, 2).reshape(b, -1, c))
    y = y + pool.mlp(pool.norm(y))
    y = y[:, 0]
    return model.head(model.head_drop(model.fc_norm(y))), a


def timm_vit_by_hand(model: nn.Module, images: torch.Tensor):
    """A timm ``VisionTransformer`` forward written out from its parameters.

    Returns ``(logits, attentions, block_inputs, projected_values)``: per block the
    (B, heads, T, T) softmax attention (``retain_grad`` set when it needs grad), the
    (B, T, D) block input and the (B, T, D) values times the output projection's
    weight (no bias). The logits are checked against the model's own.
    """
    h = timm_tokens(model, images)[0]
    atts, inputs, projected = [], [], []
    for blk in model.blocks:
        inputs.append(h)
        y = blk.norm1(h)
        attn = blk.attn
        b, t, _ = y.shape
        heads, d = attn.num_heads, attn.head_dim
        qkv = nn.functional.linear(y, attn.qkv.weight, attn.qkv.bias)
        q, k, v = qkv.reshape(b, t, 3, heads, d).permute(2, 0, 3, 1, 4)
        a = (q @ k.transpose(-2, -1) * d**-0.5).softmax(dim=-1)
        if a.requires_grad:
            a.retain_grad()
        atts.append(a)
        projected.append(
            v.transpose(1, 2).reshape(b, t, heads * d) @ attn.proj.weight.T
        )
        out = attn.proj((a @ v).transpose(1, 2).reshape(b, t, heads * d))
        h = h + blk.ls1(out)
        h = h + blk.ls2(blk.mlp(blk.norm2(h)))
    logits = model.forward_head(model.norm(h))
    with torch.no_grad():
        assert torch.allclose(logits, model(images), atol=1e-5)
    return logits, atts, inputs, projected


# ------------------------------------------------------- image-text models (issue 30)
#: Tiny vision / text configs shared by the Hugging Face CLIP and SigLIP models.
HF_VISION = dict(
    image_size=32,
    patch_size=8,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
)
HF_TEXT = dict(
    vocab_size=99,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=2,
    max_position_embeddings=16,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)


def hf_image_text(kind: str = "clip", seed: int = 0, depth: int = 2) -> nn.Module:
    """A tiny random-weight Hugging Face ``CLIPModel`` (``kind="clip"``) or
    ``SiglipModel`` (``"siglip"``) in eval mode: 32 px, patch 8, width 32."""
    import transformers as tf

    torch.manual_seed(seed)
    vision = dict(HF_VISION, num_hidden_layers=depth)
    if kind == "clip":
        cfg = tf.CLIPConfig(
            vision_config=vision, text_config=HF_TEXT, projection_dim=16
        )
        return tf.CLIPModel(cfg).eval()
    cfg = tf.SiglipConfig(vision_config=vision, text_config=HF_TEXT)
    return tf.SiglipModel(cfg).eval()


def open_clip_model(seed: int = 0, depth: int = 2, **vision) -> nn.Module:
    """A tiny random-weight ``open_clip.CLIP`` in eval mode: 32 px, patch 8, width 32,
    embeddings of width 16, a one-layer text tower over 8 tokens."""
    import open_clip

    torch.manual_seed(seed)
    vcfg = dict(image_size=32, patch_size=8, width=32, layers=depth, head_width=16)
    vcfg.update(vision)
    tcfg = dict(context_length=8, vocab_size=50, width=32, heads=2, layers=1)
    return open_clip.CLIP(embed_dim=16, vision_cfg=vcfg, text_cfg=tcfg).eval()


def zero_shot_model(
    family: str, seed: int = 0, depth: int = 2, num_classes: int = 5
) -> nn.Module:
    """A ``ZeroShotClassifier`` over ``num_classes`` prompts (given as token ids) of a
    tiny image-text model: ``zs_hf_clip``, ``zs_hf_siglip``, ``zs_open_clip``, or
    ``zs_timm`` (a headless timm ViT with given text embeddings); ``num_classes=0``:
    its text side removed (headless)."""
    from captum_vit import ZeroShotClassifier

    k = max(num_classes, 1)
    gen = torch.Generator().manual_seed(seed + 1)
    if family == "zs_timm":
        torch.manual_seed(seed)
        kw = dict(_TINY, num_classes=0, img_size=32, patch_size=8, depth=depth)
        tower = timm.create_model("vit_tiny_patch16_224", **kw).eval()
        emb = torch.randn(k, 32, generator=gen)
        zs = ZeroShotClassifier(tower, text_embeddings=emb, logit_scale=10.0)
    elif family == "zs_open_clip":
        model = open_clip_model(seed, depth=depth)
        ids = torch.randint(3, 50, (k, 8), generator=gen)
        zs = ZeroShotClassifier(model, token_ids=ids)
    else:
        model = hf_image_text(family[len("zs_hf_") :], seed, depth=depth)
        ids = torch.randint(3, 90, (k, 6), generator=gen)
        ids[:, -1] = 2  # the end-of-text token
        zs = ZeroShotClassifier(model, token_ids=ids)
    if num_classes == 0:
        zs.text_embeddings = zs.text_embeddings[:0]
    return zs.eval()
