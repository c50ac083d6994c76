"""AttnLRP / CP-LRP (issue 29): conservation, the rules against hand-written
oracles, per-sample == batch, families, state safety and LXT side by side."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest
import torch
import torch.nn as nn
from helpers import image_size, make_model, model_state

from captum_vit import AttnLRP, ViTAdapter
from captum_vit.attr._attnlrp import install_rules
from captum_vit.vit import record_attention
from captum_vit.vit.adapter import installed

SUPPORTED = (
    "cls",
    "distilled",
    "reg_gap",
    "eva",
    "beit",
    "torchvision",
    "hf_vit",
    "hf_deit",
    "hf_deit_teacher",
    "hf_dinov2",
    "hf_dinov2_reg",
)


def images(family: str, b: int = 2, seed: int = 1) -> torch.Tensor:
    s = image_size(family)
    return torch.randn(b, 3, s, s, generator=torch.Generator().manual_seed(seed))


def zero_sources(model: nn.Module) -> nn.Module:
    """Zero every additive constant (biases, prefix tokens, position terms): then
    the input pixels are the only sources of relevance."""
    words = ("bias", "token", "pos_emb", "position_embedding")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(w in name for w in words):
                p.zero_()
    return model


def logits_of(model, x):
    out = model(x)
    return getattr(out, "logits", out)


# ------------------------------------------------------------------ conservation
@pytest.mark.parametrize(
    "family",
    [
        "cls",
        "distilled",
        "reg_gap",
        "eva",
        "beit",
        "torchvision",
        "hf_vit",
        "hf_dinov2",
    ],
)
def test_cp_lrp_conserves_the_logit_without_biases(family):
    # CP-LRP with LRP-0 is a linear decomposition once the attention, the norms'
    # 1/std and the activations' f(x)/x are constants: without additive constants
    # the pixel relevance sums to the logit exactly
    model = zero_sources(make_model(family))
    x, t = images(family), torch.tensor([1, 3])
    r = AttnLRP(model, variant="cp-lrp", epsilon=0.0).attribute(x, target=t)
    logit = logits_of(model, x).gather(1, t[:, None])[:, 0]
    torch.testing.assert_close(r.flatten(1).sum(1), logit, rtol=1e-4, atol=1e-5)
    # with biases, the difference is what they absorb (not zero on random weights)
    model = make_model(family)
    r = AttnLRP(model, variant="cp-lrp", epsilon=0.0).attribute(x, target=t)
    logit = logits_of(model, x).gather(1, t[:, None])[:, 0]
    assert (r.flatten(1).sum(1) - logit).abs().max() > 1e-3


def test_attnlrp_conserves_up_to_the_softmax_bias_terms():
    # AttnLRP's softmax rule R_in = x ⊙ (R_out - s ΣR_out) absorbs a bias term per
    # attention row. With R_S = ½ S ⊙ ∇S (uniform rule of A·V) and x = log S + c
    # (c cancels), the lost relevance is ½ Σ (S∇S - log S ⊙ S ⊙ (∇S - Σ S∇S)).
    model = zero_sources(make_model("cls"))
    adapter = ViTAdapter(model)
    x, t = images("cls"), torch.tensor([1, 3])
    sites = adapter.lrp_sites()
    xx = x.clone().requires_grad_(True)
    with record_attention(adapter) as rec, installed(
        lambda h: install_rules(sites, "attnlrp", 0.0, 0.0, 0.0, h)
    ):
        logit = model(xx).gather(1, t[:, None])[:, 0]
        grads = torch.autograd.grad(logit.sum(), [xx] + rec.attentions)
    pixels = (xx * grads[0]).flatten(1).sum(1)
    lost = torch.zeros(2)
    for s, g in zip(rec.attentions, grads[1:]):
        s = s.detach()
        sg = (s * g).sum(-1, keepdim=True)
        term = s * g - s.log() * s * (g - sg)
        lost += 0.5 * term.flatten(1).sum(1)
    torch.testing.assert_close(pixels + lost, logit.detach(), rtol=1e-4, atol=1e-5)
    assert lost.abs().max() > 1e-4  # the softmax term is really there
    # and AttnLRP's pixels are the same through the public class
    torch.testing.assert_close(
        AttnLRP(model, epsilon=0.0).attribute(x, target=t).flatten(1).sum(1), pixels
    )


# ------------------------------------------------------------------ the rules
def test_rules_against_a_hand_written_propagation():
    # one timm block, explicit LRP written out layer by layer (no autograd tricks)
    model = zero_sources(make_model("cls", depth=1))
    x, t = images("cls", b=1), 2
    ours = AttnLRP(model, epsilon=0.0).attribute(x, target=t)
    m = model
    blk = m.blocks[0]
    h0 = m.patch_embed(x.requires_grad_(False))  # (1, N, D), zero bias
    h0 = torch.cat([m.cls_token.expand(1, -1, -1), h0], 1)  # zero CLS, zero pos
    D = h0.shape[-1]

    def div(a, b):  # a / b, 0 where b == 0 (the zero CLS row)
        return torch.where(b != 0, a / torch.where(b != 0, b, 1.0), 0.0)

    def ln_rule(mod, h, r_out):  # identity on 1/std, LRP-0 on centring and affine
        std = (h.var(-1, unbiased=False, keepdim=True) + mod.eps).sqrt()
        c = h - h.mean(-1, keepdim=True)
        z = c / std * mod.weight  # (T, D) output, zero bias
        contrib = div(r_out, z)  # R per unit output
        # centring matrix: out_i = Σ_j (δ_ij - 1/D) h_j (w_i/std)
        cen = torch.eye(D) - 1.0 / D
        coeff = cen[None] * (mod.weight / std)[..., None]  # (T, i, j)
        return torch.einsum("tij,tj,ti->tj", coeff, h, contrib)

    def lin_rule(w, h, r_out):  # LRP-0, zero bias
        z = h @ w.T
        return h * (div(r_out, z) @ w)

    # forward
    a_in = blk.norm1(h0)
    qkv = blk.attn.qkv(a_in).reshape(1, -1, 3, blk.attn.num_heads, blk.attn.head_dim)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    scores = (q * blk.attn.scale) @ k.transpose(-2, -1)
    s = scores.softmax(-1)
    o = s @ v
    o_flat = o.transpose(1, 2).reshape(1, -1, D)
    h1 = h0 + blk.attn.proj(o_flat)
    m_in = blk.norm2(h1)
    f1 = blk.mlp.fc1(m_in)
    act = blk.mlp.act(f1)
    h2 = h1 + blk.mlp.fc2(act)
    hn = m.norm(h2)
    logit = (hn[:, 0] @ m.head.weight.T)[0, t]
    # backward, rule by rule
    r_hn = torch.zeros_like(hn)
    r_hn[0, 0] = hn[0, 0] * m.head.weight[t]
    assert torch.allclose(r_hn.sum(), logit, atol=1e-5)
    r_h2 = ln_rule(m.norm, h2[0], r_hn[0])[None]
    mlp_out = blk.mlp.fc2(act)
    r_res2, r_mlp = div(r_h2 * h1, h2), div(r_h2 * mlp_out, h2)  # residual: epsilon-0
    r_act = lin_rule(blk.mlp.fc2.weight, act[0], r_mlp[0])[None]
    r_f1 = r_act  # identity rule
    r_min = lin_rule(blk.mlp.fc1.weight, m_in[0], r_f1[0])[None]
    r_h1 = r_res2 + ln_rule(blk.norm2, h1[0], r_min[0])[None]
    attn_out = blk.attn.proj(o_flat)
    r_res1, r_att = div(r_h1 * h0, h1), div(r_h1 * attn_out, h1)
    r_o = lin_rule(blk.attn.proj.weight, o_flat[0], r_att[0])
    r_o = r_o.reshape(1, -1, blk.attn.num_heads, blk.attn.head_dim).transpose(1, 2)
    # uniform rule on O = S V: each term S_ik V_kd / O_id R_id, half to each
    terms = div(s[..., :, :, None] * v[..., None, :, :], o[..., :, None, :])
    terms = terms * r_o[..., :, None, :]  # (1, H, i, k, d)
    r_s = 0.5 * terms.sum(-1)
    r_v = 0.5 * terms.sum(-3)
    # softmax rule (the paper's form): R_in_k = x_k (R_out_k - s_k Σ_j R_out_j)
    r_scores = scores * (r_s - s * r_s.sum(-1, keepdim=True))
    # uniform rule on scores = q kᵀ (scaled): half to q, half to k
    qs = q * blk.attn.scale
    t3 = div(qs[..., :, None, :] * k[..., None, :, :], scores[..., :, :, None])
    t3 = t3 * r_scores[..., None]  # (1, H, i, j, d)
    r_q, r_k = 0.5 * t3.sum(-2), 0.5 * t3.sum(-3)
    r_qkv = torch.stack([r_q, r_k, r_v]).permute(1, 3, 0, 2, 4).reshape(1, -1, 3 * D)
    r_ain = lin_rule(blk.attn.qkv.weight, a_in[0], r_qkv[0])[None]
    r_h0 = r_res1 + ln_rule(blk.norm1, h0[0], r_ain[0])[None]
    # patch embedding (a stride-p convolution, zero bias): LRP-0 per patch
    p = m.patch_embed.proj
    cols = nn.functional.unfold(x, p.kernel_size, stride=p.stride)[0].T  # (N, C·p·p)
    w = p.weight.flatten(1)
    r_cols = lin_rule(w, cols, r_h0[0, 1:])
    r_pix = nn.functional.fold(
        r_cols.T[None], x.shape[-2:], p.kernel_size, stride=p.stride
    )
    torch.testing.assert_close(ours, r_pix.detach(), rtol=2e-3, atol=1e-6)


def _explicit_gamma(w, b, x, r_out, gamma):
    """The generalised gamma rule written entry by entry."""
    out = []
    z = x @ w.T + b
    for n in range(x.shape[0]):
        rx = torch.zeros(x.shape[1], dtype=torch.float64)
        for i in range(w.shape[0]):
            pos = z[n, i] > 0
            num = torch.zeros(x.shape[1], dtype=torch.float64)
            for j in range(w.shape[1]):
                xj, wij = x[n, j], w[i, j]
                favoured = (xj * wij > 0) == bool(pos)
                num[j] = xj * wij + (gamma * xj * wij if favoured else 0.0)
            bias = b[i] + (gamma * b[i] if (b[i] > 0) == bool(pos) else 0.0)
            rx += num / (num.sum() + bias) * r_out[n, i]
        out.append(rx)
    return torch.stack(out)


def test_gamma_rule_matches_the_formula_entry_by_entry():
    from captum_vit.attr._attnlrp import _GammaRule

    torch.manual_seed(0)
    lin = nn.Linear(5, 4).double()
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    r_out = torch.randn(3, 4, dtype=torch.float64)
    for gamma in (0.0, 0.25, 2.0):
        y = _GammaRule.apply(x, lin(x), lin, gamma, 1e-30)
        (g,) = torch.autograd.grad(y, x, r_out / y.detach())
        ref = _explicit_gamma(
            lin.weight.detach(), lin.bias.detach(), x.detach(), r_out, gamma
        )
        torch.testing.assert_close(x.detach() * g, ref, rtol=1e-8, atol=1e-10)


def test_lin_gamma_zero_limit_and_epsilon():
    model = make_model("cls")
    x, t = images("cls"), [0, 4]
    ref = AttnLRP(model, epsilon=1e-9).attribute(x, target=t)
    tiny = AttnLRP(model, epsilon=1e-9, lin_gamma=1e-9, conv_gamma=1e-9)
    torch.testing.assert_close(tiny.attribute(x, target=t), ref, rtol=1e-4, atol=1e-7)
    assert not torch.allclose(
        AttnLRP(model, lin_gamma=0.25).attribute(x, target=t), ref, atol=1e-6
    )


def test_explicit_attention_path_equals_the_fused_qkv_path(monkeypatch):
    # BEiT / Eva with q_bias run attention on the explicit path with factors on the
    # probabilities and the attended output; the qkv path must give the same map
    model = make_model("cls")
    x, t = images("cls"), [2, 0]
    for variant in ("attnlrp", "cp-lrp"):
        ref = AttnLRP(model, variant=variant).attribute(x, target=t)
        with monkeypatch.context() as mp:
            for blk in model.blocks:
                mp.setattr(blk.attn, "q_bias", torch.zeros(1), raising=False)
            out = AttnLRP(model, variant=variant).attribute(x, target=t)
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-7)


# ------------------------------------------------------------------ families
@pytest.mark.parametrize("family", SUPPORTED)
def test_families_per_sample_equals_batch(family):
    model = make_model(family)
    x = images(family, b=3)
    t = torch.tensor([0, 2, 1])
    for variant in ("attnlrp", "cp-lrp"):
        method = AttnLRP(model, variant=variant)
        batch = method.attribute(x, target=t)
        assert batch.shape == x.shape and torch.isfinite(batch).all()
        assert batch.abs().sum() > 0
        single = torch.cat(
            [method.attribute(x[i : i + 1], target=int(t[i])) for i in range(3)]
        )
        torch.testing.assert_close(batch, single, rtol=1e-4, atol=1e-6)
    # None explains the predicted class
    pred = logits_of(model, x).argmax(1)
    torch.testing.assert_close(
        AttnLRP(model).attribute(x), AttnLRP(model).attribute(x, target=pred)
    )


@pytest.mark.parametrize(
    "family, what",
    [("siglip", "token or average pooling"), ("swin", "AttnLRP rules for its blocks")],
)
def test_unsupported_models_raise_the_capability_error(family, what):
    with pytest.raises(TypeError, match=f"^AttnLRP needs AttnLRP rules.*{what}"):
        AttnLRP(make_model(family))


def test_gated_and_max_pooled_models_are_refused():
    gated = make_model("cls", global_pool="max")
    with pytest.raises(TypeError, match="token or average pooling, not 'max'"):
        AttnLRP(gated)
    model = make_model("cls")
    model.blocks[0].mlp.act = nn.Softmax(dim=-1)  # no rule for a softmax MLP
    with pytest.raises(TypeError, match="a rule for Softmax at 'blocks.0.mlp.act'"):
        AttnLRP(model)


def test_bad_arguments_name_themselves():
    model = make_model("cls")
    with pytest.raises(ValueError, match="^variant:"):
        AttnLRP(model, variant="lrp")
    for name in ("epsilon", "lin_gamma", "conv_gamma"):
        for bad in (-0.1, float("nan"), float("inf")):
            with pytest.raises((TypeError, ValueError), match=f"^{name}:"):
                AttnLRP(model, **{name: bad})
    with pytest.raises(TypeError, match="classifier head"):
        AttnLRP(make_model("cls", num_classes=0))


def test_model_left_as_found_also_on_error():
    model = make_model("cls", drop_rate=0.2, attn_drop_rate=0.2).train()
    before = model_state(model)
    x = images("cls")
    out = AttnLRP(model).attribute(x, target=[1, 2])
    assert model_state(model) == before
    # the call ran in eval mode: equals the eval-mode result
    model.eval()
    torch.testing.assert_close(out, AttnLRP(model).attribute(x, target=[1, 2]))
    model.train()

    def boom(module, args, output):
        raise RuntimeError("boom")

    h = model.blocks[1].mlp.fc2.register_forward_hook(boom)
    with pytest.raises(RuntimeError, match="boom"):
        AttnLRP(model).attribute(x, target=[1, 2])
    h.remove()
    assert model_state(model) == before
    assert all(p.grad is None for p in model.parameters())


def test_inference_mode_is_refused_and_no_grad_is_fine():
    model = make_model("cls")
    x = images("cls")
    ref = AttnLRP(model).attribute(x, target=[1, 2])
    with torch.inference_mode(), pytest.raises(RuntimeError, match="needs autograd"):
        AttnLRP(model).attribute(x, target=[1, 2])
    with torch.no_grad():
        torch.testing.assert_close(AttnLRP(model).attribute(x, target=[1, 2]), ref)


# ------------------------------------------------------------------ LXT
def _lxt_compare():
    pytest.importorskip("lxt")
    pytest.importorskip("zennit")
    path = pathlib.Path(__file__).parents[1] / "benchmarks" / "attnlrp_lxt_compare.py"
    spec = importlib.util.spec_from_file_location("attnlrp_lxt_compare", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize(
    "family, kind, variant, gammas",
    [
        ("torchvision", "torchvision", "cp-lrp", None),  # LXT's own torchvision map
        ("torchvision", "torchvision", "cp-lrp", (0.05, 0.25)),  # + zennit gamma
        ("torchvision", "torchvision", "attnlrp", None),  # LXT's rules, full map
        ("cls", "timm", "attnlrp", None),
        ("cls", "timm", "attnlrp", (0.05, 0.25)),  # zennit gamma on timm's linears
    ],
)
def test_side_by_side_with_lxt(family, kind, variant, gammas):
    compare = _lxt_compare()
    model = make_model(family)
    gelu, ln = nn.GELU.forward, nn.LayerNorm.forward
    pix, patch, ours, ref = compare.compare(
        model, kind, image_size(family), 3, variant, gammas
    )
    assert min(pix) >= 0.99 and min(patch) >= 0.99, (pix, patch)
    assert nn.GELU.forward is gelu and nn.LayerNorm.forward is ln  # LXT undone
    assert not hasattr(nn.GELU, "original_forward")


def test_registry_entries_read_the_gamma_knobs():
    from captum_vit.explain import _other_knobs
    from captum_vit.methods import METHODS, MethodOptions

    model = make_model("cls")
    x, t = images("cls"), torch.tensor([1, 2])
    opts = MethodOptions(attnlrp_lin_gamma=0.05, attnlrp_conv_gamma=0.25)
    for name, variant in (("attnlrp", "attnlrp"), ("cp-lrp", "cp-lrp")):
        method = METHODS[name]
        assert method.signed and method.needs_grad
        ref = AttnLRP(model, variant=variant, lin_gamma=0.05, conv_gamma=0.25)
        assert torch.equal(method.explainer(model, opts)(x, t), ref.attribute(x, t))
        plain = AttnLRP(model, variant=variant).attribute(x, t)
        assert torch.equal(method.build(model)(x, t), plain)
    assert _other_knobs(opts) == {"attnlrp_lin_gamma": 0.05, "attnlrp_conv_gamma": 0.25}
    with pytest.raises(ValueError, match="^attnlrp_lin_gamma:"):
        MethodOptions(attnlrp_lin_gamma=-1.0)


def test_sequence_major_inputs_keep_values_and_gradients():
    """torchvision's attention inputs are copied to sequence-major memory for the
    rules (a faster in-projection on CPU): same values, same gradients, each
    distinct input copied once, nothing copied when already sequence-major."""
    from captum_vit.vit.families.torchvision_vit import _sequence_major

    mha = torch.nn.MultiheadAttention(8, 2, batch_first=True)
    x = torch.randn(3, 5, 8, requires_grad=True)
    y = torch.randn(3, 5, 8)
    q, k, v = _sequence_major(mha, [x, x, y])
    assert q is k and q is not v
    assert torch.equal(q, x) and torch.equal(v, y)
    assert q.transpose(0, 1).is_contiguous() and v.transpose(0, 1).is_contiguous()
    same = _sequence_major(mha, [q, q, v])  # already sequence-major: not copied
    assert all(a is b for a, b in zip(same, [q, q, v]))
    w = torch.randn(3, 5, 8)
    (g,) = torch.autograd.grad((q * w).sum(), x)
    assert torch.equal(g, w)
    batch_major = torch.nn.MultiheadAttention(8, 2, batch_first=False)
    kept = _sequence_major(batch_major, [x, x, y])
    assert all(a is b for a, b in zip(kept, [x, x, y]))
