"""TransformerAttribution against a hand-written LRP pass on toy ViTs built here.

The oracle writes the forward pass out from the model's parameters and propagates
relevance the way the paper's reference implementation does it, with autograd
(``R_x = x ⊙ ∂Z/∂x · R / Z`` on the positive and negative parts for linear layers,
on both operands for products and sums), not with the closed forms of
``captum_vit.vit.lrp``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import make_model, model_state
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer

from captum_vit import TransformerAttribution, patch_scores


def toy_vit(distilled: bool = False, **kw) -> VisionTransformer:
    torch.manual_seed(0)
    args = dict(
        img_size=16,
        patch_size=8,
        embed_dim=8,
        depth=2,
        num_heads=2,
        mlp_ratio=2.0,
        num_classes=3,
        qkv_bias=True,
    )
    args.update(kw)
    cls = VisionTransformerDistilled if distilled else VisionTransformer
    model = cls(**args).double().eval()
    with torch.no_grad():  # weights large enough for non-trivial attention
        g = torch.Generator().manual_seed(1)
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


# ------------------------------------------------------------------ oracle
def sdiv(a, b):
    return torch.where(b != 0, a / torch.where(b != 0, b, 1.0), 0.0)


def grad_x_input(fn, xs, r):
    """Reference-style rule: R_x = x * d<Z, R/Z>/dx for every operand."""
    xs = [x.detach().requires_grad_(True) for x in xs]
    z = fn(*xs)
    g = torch.autograd.grad(z, xs, sdiv(r, z.detach()))
    return [x.detach() * gi for x, gi in zip(xs, g)]


def lin(x, weight, r):
    """alpha = 1, beta = 0 through x @ W.T, written as the reference (autograd)."""
    px, nx = x.clamp(min=0).detach(), x.clamp(max=0).detach()
    pw, nw = weight.clamp(min=0), weight.clamp(max=0)
    px.requires_grad_(True)
    nx.requires_grad_(True)
    z1, z2 = F.linear(px, pw), F.linear(nx, nw)
    s = sdiv(r, (z1 + z2).detach())
    c1 = px * torch.autograd.grad(z1, px, s)[0]
    c2 = nx * torch.autograd.grad(z2, nx, s)[0]
    return (c1 + c2).detach()


def add(u, v, r):
    ru, rv = grad_x_input(lambda a, b: a + b, [u, v], r)
    su, sv = ru.sum(), rv.sum()  # one sample at a time
    ru = ru * sdiv(sdiv(su.abs(), su.abs() + sv.abs()) * r.sum(), su)
    rv = rv * sdiv(sdiv(sv.abs(), su.abs() + sv.abs()) * r.sum(), sv)
    return ru, rv


def ln(mod, x):
    if isinstance(mod, torch.nn.Identity):
        return x
    return F.layer_norm(x, mod.normalized_shape, mod.weight, mod.bias, mod.eps)


def oracle(model: VisionTransformer, image: torch.Tensor, target: int, start=0):
    """Transformer Attribution of one image, (N,) patch scores."""
    m = model
    pe = m.patch_embed.proj
    x = F.conv2d(image[None], pe.weight, pe.bias, stride=pe.stride)
    x = x.flatten(2).transpose(1, 2)[0]  # (N, D)
    n = x.shape[0]
    p = m.num_prefix_tokens
    prefix = []
    if m.cls_token is not None:
        prefix.append(m.cls_token[0])
    dist = getattr(m, "dist_token", None)
    if dist is not None:
        prefix.append(dist[0])
    if m.reg_token is not None:
        prefix.append(m.reg_token[0])
    if m.no_embed_class:
        x = x + m.pos_embed[0]
        x = torch.cat(prefix + [x])
    else:
        x = torch.cat(prefix + [x]) + m.pos_embed[0]
    h = m.blocks[0].attn.num_heads
    recs, attns = [], []
    for blk in m.blocks:
        a = blk.attn
        r = {"x_in": x}
        h1 = ln(blk.norm1, x)
        qkv = F.linear(h1, a.qkv.weight, a.qkv.bias).reshape(-1, 3, h, a.head_dim)
        q, k, v = qkv.permute(1, 2, 0, 3)  # (h, T, d) each
        att = torch.softmax((q * a.scale) @ k.transpose(-1, -2), dim=-1)
        attns.append(att)
        o = (att @ v).transpose(0, 1).reshape(x.shape[0], -1)
        ao = F.linear(o, a.proj.weight, a.proj.bias)
        x_mid = x + ao
        h2 = ln(blk.norm2, x_mid)
        f1 = F.linear(h2, blk.mlp.fc1.weight, blk.mlp.fc1.bias)
        f2_in = F.gelu(f1)
        mo = F.linear(f2_in, blk.mlp.fc2.weight, blk.mlp.fc2.bias)
        x = x_mid + mo
        r.update(h1=h1, q=q, k=k, v=v, att=att, o=o, ao=ao, x_mid=x_mid)
        r.update(h2=h2, f2_in=f2_in, mo=mo)
        recs.append(r)
    tokens = ln(m.norm, x)
    w = torch.zeros(x.shape[0], dtype=x.dtype)
    if dist is not None:  # eval output: mean of the two heads
        w[:2] = 0.5
        y0 = F.linear(tokens[0], m.head.weight, m.head.bias)
        y1 = F.linear(tokens[1], m.head_dist.weight, m.head_dist.bias)
        logits = (y0 + y1) / 2
    else:
        if m.global_pool == "token":
            w[0] = 1.0
        else:
            w[p:] = 1.0 / n
        pooled = w @ tokens
        pooled_in = ln(m.fc_norm, pooled)
        logits = F.linear(pooled_in, m.head.weight, m.head.bias)
    grads = torch.autograd.grad(logits[target], attns)
    with torch.no_grad():
        assert torch.allclose(logits, m(image[None])[0], atol=1e-10)

    # relevance, top-down
    r_out = torch.zeros_like(logits)
    r_out[target] = 1.0
    if dist is not None:
        r0, r1 = add(y0 / 2, y1 / 2, r_out)
        r_tok = torch.zeros_like(tokens)
        r_tok[0] = lin(tokens[0], m.head.weight, r0)
        r_tok[1] = lin(tokens[1], m.head_dist.weight, r1)
    else:
        r_pooled = lin(pooled_in, m.head.weight, r_out)
        r_tok = grad_x_input(lambda t: w @ t, [tokens], r_pooled)[0]
    rel_att = [None] * len(recs)
    for i in reversed(range(len(recs))):
        blk, r = m.blocks[i], recs[i]
        a = blk.attn
        r_mid, r_mo = add(r["x_mid"], r["mo"], r_tok)
        r_f = lin(r["f2_in"], blk.mlp.fc2.weight, r_mo)
        r_h2 = lin(r["h2"], blk.mlp.fc1.weight, r_f)
        r_mid = r_mid + r_h2
        r_x, r_ao = add(r["x_in"], r["ao"], r_mid)
        r_o = lin(r["o"], a.proj.weight, r_ao)
        r_o = r_o.reshape(-1, h, a.head_dim).transpose(0, 1)
        r_att, r_v = grad_x_input(lambda s, t: s @ t, [r["att"], r["v"]], r_o)
        r_att, r_v = r_att / 2, r_v / 2
        rel_att[i] = r_att
        r_q, r_k = grad_x_input(
            lambda s, t: s @ t.transpose(-1, -2), [r["q"], r["k"]], r_att
        )
        r_q, r_k = r_q / 2, r_k / 2
        r_qkv = torch.stack([r_q, r_k, r_v]).permute(2, 0, 1, 3).reshape(-1, 3 * 8)
        r_tok = r_x + lin(r["h1"], a.qkv.weight, r_qkv)
    t = x.shape[0]
    c = None
    for i in range(start, len(recs)):
        cam = (grads[i] * rel_att[i]).clamp(min=0).mean(0) + torch.eye(t).double()
        c = cam if c is None else cam @ c
    return (w @ c)[p:]


# -------------------------------------------------------------------- tests
@pytest.mark.parametrize(
    "kw",
    [
        dict(),  # CLS token
        dict(class_token=False, global_pool="avg", reg_tokens=2),  # registers, avg
        dict(distilled=True),  # CLS + distillation token, two heads
    ],
)
def test_equals_hand_written_lrp_on_a_two_block_toy_vit(kw):
    model = toy_vit(**kw)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    x = x.double()
    targets = [2, 0]
    for start in (0, 1):
        attr = TransformerAttribution(model, start_layer=start).attribute(
            x, target=targets
        )
        assert attr.shape == x.shape
        got = patch_scores(attr, model).flatten(1)
        for i, t in enumerate(targets):
            ref = oracle(model, x[i], t, start)
            assert torch.allclose(got[i], ref, rtol=1e-8, atol=1e-12), (got[i], ref)
    # the relevance term matters: maps differ between classes
    other = TransformerAttribution(model).attribute(x, target=[1, 1])
    assert not torch.allclose(other, attr)


@pytest.mark.parametrize("family", ["cls", "distilled", "reg_gap"])
def test_batch_equals_per_sample_and_default_target(family):
    model = make_model(family)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    e = TransformerAttribution(model)
    batch = e.attribute(x, target=[0, 3, 1])
    assert torch.isfinite(batch).all() and bool((batch >= 0).all())
    for i, t in enumerate([0, 3, 1]):
        one = e.attribute(x[i : i + 1], target=t)
        assert torch.allclose(batch[i], one[0], rtol=1e-5, atol=1e-9)
    with torch.no_grad():
        pred = model(x).argmax(1)
    assert torch.allclose(e.attribute(x), e.attribute(x, target=pred))
    out = e.attribute((x,), target=pred)
    assert isinstance(out, tuple) and torch.allclose(out[0], e.attribute(x))


def test_model_unchanged_also_on_error_and_capability_error():
    model = make_model("cls")
    x = torch.randn(2, 3, 32, 32)
    before = model_state(model)
    TransformerAttribution(model).attribute(x, target=1)
    assert model_state(model) == before

    def boom(module, args, out):
        raise RuntimeError("boom")

    h = model.blocks[1].mlp.fc2.register_forward_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            TransformerAttribution(model).attribute(x, target=1)
    finally:
        h.remove()
    assert model_state(model) == before
    with pytest.raises(
        TypeError,
        match="TransformerAttribution needs LRP rules for its blocks, "
        "which timm Eva does not have",
    ):
        TransformerAttribution(make_model("eva"))
    # SigLIP is a timm VisionTransformer, but its attention pool has no LRP rule
    with pytest.raises(TypeError, match="which timm VisionTransformer .*'map'"):
        TransformerAttribution(make_model("siglip"))
    with pytest.raises(TypeError, match="the model has no classifier head"):
        TransformerAttribution(make_model("cls", num_classes=0))
    with pytest.raises(ValueError, match="start_layer"):
        TransformerAttribution(model, start_layer=2)
    with pytest.raises(ValueError, match="target"):
        TransformerAttribution(model).attribute(x, target=9)
