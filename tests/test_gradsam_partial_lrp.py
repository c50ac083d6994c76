"""Grad-SAM, Partial LRP and attention Grad-CAM against a ViT forward pass written out
here from the parameters of toy timm models (double precision): the attention maps
are ordinary tensors of that pass, their gradients come from ``torch.autograd.grad``
and the LRP relevance from the reference-style autograd rules of
``test_transformer_attribution`` (not from ``captum_vit.vit.lrp``)."""

from __future__ import annotations

from typing import Any, Dict

import pytest
import torch
import torch.nn.functional as F
from helpers import image_size, make_model, model_state
from test_transformer_attribution import add, grad_x_input, lin, ln, toy_vit

from captum_vit import GradSAM, PartialLRP, ViTGradCAM, patch_scores

TOYS = [
    dict(),  # CLS token
    dict(class_token=False, global_pool="avg", reg_tokens=2),  # registers, avg
    dict(distilled=True),  # CLS + distillation token, two heads
]


def hand_forward(model, image: torch.Tensor) -> Dict[str, Any]:
    """One image through a toy timm ViT, written out: per block the attention maps
    (heads, T, T) and the tensors the LRP rules need; the logits; the readout rows."""
    m = model
    pe = m.patch_embed.proj
    x = F.conv2d(image[None], pe.weight, pe.bias, stride=pe.stride)
    x = x.flatten(2).transpose(1, 2)[0]  # (N, D)
    n, p = x.shape[0], m.num_prefix_tokens
    prefix = [
        tok[0]
        for tok in (m.cls_token, getattr(m, "dist_token", None))
        if tok is not None
    ]
    if m.reg_token is not None:
        prefix.append(m.reg_token[0])
    if m.no_embed_class:
        x = torch.cat(prefix + [x + m.pos_embed[0]])
    else:
        x = torch.cat(prefix + [x]) + m.pos_embed[0]
    h = m.blocks[0].attn.num_heads
    recs, attns = [], []
    for blk in m.blocks:
        a = blk.attn
        h1 = ln(blk.norm1, x)
        qkv = F.linear(h1, a.qkv.weight, a.qkv.bias).reshape(-1, 3, h, a.head_dim)
        q, k, v = qkv.permute(1, 2, 0, 3)  # (h, T, d): row i of att is query i
        att = torch.softmax((q * a.scale) @ k.transpose(-1, -2), dim=-1)
        attns.append(att)
        o = (att @ v).transpose(0, 1).reshape(x.shape[0], -1)
        ao = F.linear(o, a.proj.weight, a.proj.bias)
        x_mid = x + ao
        h2 = ln(blk.norm2, x_mid)
        f2_in = F.gelu(F.linear(h2, blk.mlp.fc1.weight, blk.mlp.fc1.bias))
        mo = F.linear(f2_in, blk.mlp.fc2.weight, blk.mlp.fc2.bias)
        recs.append(dict(x_in=x, h1=h1, q=q, k=k, v=v, att=att, o=o, ao=ao))
        recs[-1].update(x_mid=x_mid, h2=h2, f2_in=f2_in, mo=mo)
        x = x_mid + mo
    tokens = ln(m.norm, x)
    w = torch.zeros(x.shape[0], dtype=x.dtype)
    out: Dict[str, Any] = dict(recs=recs, attns=attns, tokens=tokens, w=w, p=p)
    if getattr(m, "dist_token", None) is not None:  # eval output: mean of two heads
        w[:2] = 0.5
        y0 = F.linear(tokens[0], m.head.weight, m.head.bias)
        y1 = F.linear(tokens[1], m.head_dist.weight, m.head_dist.bias)
        out.update(logits=(y0 + y1) / 2, y0=y0, y1=y1)
    else:
        if m.global_pool == "token":
            w[0] = 1.0
        else:
            w[p:] = 1.0 / n
        pooled_in = ln(m.fc_norm, w @ tokens)
        logits = F.linear(pooled_in, m.head.weight, m.head.bias)
        out.update(logits=logits, pooled_in=pooled_in)
    with torch.no_grad():
        assert torch.allclose(out["logits"], m(image[None])[0], atol=1e-10)
    return out


def gradsam_oracle(model, image, target, reading):
    f = hand_forward(model, image)
    grads = torch.autograd.grad(f["logits"][target], f["attns"])
    num_layers, heads, t, _ = len(grads), *grads[0].shape
    hs = [(a * g.clamp(min=0)).detach() for a, g in zip(f["attns"], grads)]
    total = sum(h.sum(0) for h in hs)  # Σ_l Σ_h H^{lh}, (T, T)
    if reading == "query":
        r = total.sum(1) / (num_layers * heads * t)  # Σ_j H_ij
    elif reading == "key":
        r = total.sum(0) / (num_layers * heads * t)  # Σ_i H_ij
    else:
        r = f["w"] @ total / (num_layers * heads)
    return r[f["p"] :]


def attention_gradcam_oracle(model, image, target):
    """generate_cam_attn's formula: the head's row of the last attention, each head
    weighted by its mean gradient over the patch columns, heads averaged."""
    f = hand_forward(model, image)
    (g,) = torch.autograd.grad(f["logits"][target], f["attns"][-1])
    p, w = f["p"], f["w"]
    rows = torch.einsum("i,hij->hj", w, f["attns"][-1].detach())[:, p:]
    alpha = torch.einsum("i,hij->hj", w, g)[:, p:].mean(1, keepdim=True)
    return (rows * alpha).mean(0)


def partial_lrp_oracle(model, image, target, positive=True):
    f = hand_forward(model, image)
    m, tokens, r = model, f["tokens"].detach(), f["recs"][-1]
    r = {k: v.detach() for k, v in r.items()}
    r_out = torch.zeros_like(f["logits"]).detach()
    r_out[target] = 1.0
    if "y0" in f:
        r0, r1 = add(f["y0"].detach() / 2, f["y1"].detach() / 2, r_out)
        r_tok = torch.zeros_like(tokens)
        r_tok[0] = lin(tokens[0], m.head.weight, r0)
        r_tok[1] = lin(tokens[1], m.head_dist.weight, r1)
    else:
        r_pooled = lin(f["pooled_in"].detach(), m.head.weight, r_out)
        r_tok = grad_x_input(lambda t: f["w"] @ t, [tokens], r_pooled)[0]
    blk = m.blocks[-1]
    a = blk.attn
    r_mid, r_mo = add(r["x_mid"], r["mo"], r_tok)
    r_mid = r_mid + lin(
        r["h2"], blk.mlp.fc1.weight, lin(r["f2_in"], blk.mlp.fc2.weight, r_mo)
    )
    _, r_ao = add(r["x_in"], r["ao"], r_mid)
    r_o = lin(r["o"], a.proj.weight, r_ao).reshape(-1, a.num_heads, a.head_dim)
    r_att, _ = grad_x_input(lambda s, t: s @ t, [r["att"], r["v"]], r_o.transpose(0, 1))
    r_att = r_att / 2
    if positive:
        r_att = r_att.clamp(min=0)
    return (f["w"] @ r_att.mean(0))[f["p"] :]


def _toy_images(b: int = 2) -> torch.Tensor:
    return torch.randn(
        b, 3, 16, 16, generator=torch.Generator().manual_seed(3)
    ).double()


# ------------------------------------------------------------------ Grad-SAM
@pytest.mark.parametrize("kw", TOYS)
def test_gradsam_equals_direct_autograd(kw):
    model = toy_vit(**kw)
    x, targets = _toy_images(), [2, 0]
    maps = {}
    for reading in ("query", "key", "readout"):
        attr = GradSAM(model, reading=reading).attribute(x, target=targets)
        assert attr.shape == x.shape
        got = patch_scores(attr, model).flatten(1)
        maps[reading] = got
        for i, t in enumerate(targets):
            ref = gradsam_oracle(model, x[i], t, reading)
            torch.testing.assert_close(got[i], ref, rtol=1e-9, atol=1e-14)
    # three different readings, and the class matters
    assert not torch.allclose(maps["query"], maps["key"])
    assert not torch.allclose(maps["query"], maps["readout"])
    other = GradSAM(model).attribute(x, target=[1, 1])
    assert not torch.allclose(patch_scores(other, model).flatten(1), maps["query"])


# -------------------------------------------------------- attention Grad-CAM
@pytest.mark.parametrize("kw", TOYS)
def test_attention_gradcam_equals_generate_cam_attn_formula(kw):
    model = toy_vit(**kw)
    x, targets = _toy_images(), [2, 0]
    cam = ViTGradCAM(model, on="attention")
    signed = patch_scores(cam.attribute(x, target=targets, relu=False), model)
    relu = patch_scores(cam.attribute(x, target=targets), model)
    for i, t in enumerate(targets):
        ref = attention_gradcam_oracle(model, x[i], t)
        torch.testing.assert_close(signed[i].flatten(), ref, rtol=1e-9, atol=1e-14)
        torch.testing.assert_close(relu[i].flatten(), ref.clamp(min=0))
    # not the token Grad-CAM
    tokens = patch_scores(ViTGradCAM(model).attribute(x, target=targets), model)
    assert not torch.allclose(tokens, relu)


# ---------------------------------------------------------------- Partial LRP
@pytest.mark.parametrize("kw", TOYS)
def test_partial_lrp_equals_hand_written_lrp_of_the_last_block(kw):
    model = toy_vit(**kw)
    x, targets = _toy_images(), [2, 0]
    for positive in (True, False):
        attr = PartialLRP(model, positive=positive).attribute(x, target=targets)
        got = patch_scores(attr, model).flatten(1)
        for i, t in enumerate(targets):
            ref = partial_lrp_oracle(model, x[i], t, positive)
            torch.testing.assert_close(got[i], ref, rtol=1e-8, atol=1e-12)
    assert bool((got != 0).any())


def test_partial_lrp_needs_no_autograd():
    model = make_model("cls")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ref = PartialLRP(model).attribute(x, target=[1, 3])
    with torch.inference_mode():
        out = PartialLRP(model).attribute(x, target=[1, 3])
    assert torch.equal(out, ref)


# ------------------------------------------------------------- all three
MAKERS = {
    "GradSAM": lambda m: GradSAM(m),
    "GradSAM readout": lambda m: GradSAM(m, reading="readout"),
    "PartialLRP": lambda m: PartialLRP(m),
    "ViTGradCAM attention": lambda m: ViTGradCAM(m, on="attention"),
}
FAMILIES = {
    "GradSAM": ["cls", "siglip", "eva", "torchvision", "hf_deit_teacher"],
    "GradSAM readout": ["siglip", "hf_dinov2_reg"],
    "PartialLRP": ["cls", "distilled", "reg_gap"],
    "ViTGradCAM attention": ["distilled", "siglip", "beit", "hf_vit"],
}


@pytest.mark.parametrize(
    "name,family", [(n, f) for n, fams in FAMILIES.items() for f in fams]
)
def test_batch_equals_per_sample_default_target_and_model_untouched(name, family):
    model = make_model(family)
    s = image_size(family)
    x = torch.randn(3, 3, s, s, generator=torch.Generator().manual_seed(0))
    before = model_state(model)
    method = MAKERS[name](model)
    kw = {"relu": False} if name.startswith("ViTGradCAM") else {}
    batch = method.attribute(x, target=[0, 3, 1], **kw)
    assert torch.isfinite(batch).all() and batch.abs().sum() > 0
    for i, t in enumerate([0, 3, 1]):
        one = method.attribute(x[i : i + 1], target=t, **kw)
        torch.testing.assert_close(batch[i], one[0], rtol=1e-4, atol=1e-7)
    with torch.no_grad():
        pred = model(x) if not hasattr(model(x), "logits") else model(x).logits
    pred = pred.argmax(1)
    assert torch.equal(method.attribute(x), method.attribute(x, target=pred))
    out = method.attribute((x,), target=pred)
    assert isinstance(out, tuple) and torch.equal(out[0], method.attribute(x))
    assert model_state(model) == before


@pytest.mark.parametrize("name", list(MAKERS))
def test_model_left_as_found_on_error(name):
    model = make_model("cls").train()
    before = model_state(model)

    def boom(module, args, out):
        raise RuntimeError("boom")

    h = model.blocks[-1].mlp.fc2.register_forward_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            MAKERS[name](model).attribute(torch.randn(2, 3, 32, 32), target=1)
    finally:
        h.remove()
    assert model_state(model) == before


def test_bad_input_and_capability_errors():
    model = make_model("cls")
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match="^reading: "):
        GradSAM(model, reading="cls")
    with pytest.raises(ValueError, match="^on: "):
        ViTGradCAM(model, on="attn")
    with pytest.raises(ValueError, match="^layer: "):
        ViTGradCAM(model, layer=model.blocks[0].norm1, on="attention")
    with pytest.raises(ValueError, match="^block: "):
        ViTGradCAM(model, block=2, on="attention")
    with pytest.raises(ValueError, match="^positive: "):
        PartialLRP(model, positive="yes")
    for name, make in MAKERS.items():
        for bad in (9, [1], -1):
            with pytest.raises(ValueError, match="^target"):
                make(model).attribute(x, target=bad)
    swin = make_model("swin")
    for make in (GradSAM, lambda m: ViTGradCAM(m, on="attention")):
        with pytest.raises(TypeError, match="needs recorded attention maps, which"):
            make(swin)
    ViTGradCAM(swin)  # token Grad-CAM still serves Swin
    with pytest.raises(
        TypeError, match="PartialLRP needs LRP rules for its blocks, which timm Eva"
    ):
        PartialLRP(make_model("eva"))
    headless = make_model("cls", num_classes=0)
    for make in (GradSAM, PartialLRP, lambda m: ViTGradCAM(m, on="attention")):
        with pytest.raises(TypeError, match="the model has no classifier head"):
            make(headless)
    with torch.inference_mode():
        for make in (GradSAM, lambda m: ViTGradCAM(m, on="attention")):
            with pytest.raises(RuntimeError, match="needs autograd"):
                make(model).attribute(x, target=1)
