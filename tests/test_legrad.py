"""LeGrad (issue 30) against a direct autograd computation on timm's own modules:
one ordinary forward of the model with its attention probabilities hooked, one
``autograd.grad`` per layer of that layer's own prediction."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import image_size, make_model, model_state

import captum_vit
from captum_vit import LeGrad, patch_scores


def _x(b: int = 2, s: int = 32, seed: int = 3) -> torch.Tensor:
    return torch.randn(b, 3, s, s, generator=torch.Generator().manual_seed(seed))


def _timm_direct(model, x, target, first, pool="head"):
    """Σ_l mean_heads mean_rows ReLU(∂s_l/∂A_l) over patch columns, s_l the head on
    block l's output, from a plain forward of the timm model (explicit attention,
    probabilities hooked at timm's attn_drop)."""
    flags = [blk.attn.fused_attn for blk in model.blocks]
    probs, outs, handles = {}, {}, []
    for i, blk in enumerate(model.blocks):
        blk.attn.fused_attn = False
        handles.append(
            blk.attn.attn_drop.register_forward_hook(
                lambda m, a, o, i=i: probs.__setitem__(i, o)
            )
        )
        handles.append(
            blk.register_forward_hook(lambda m, a, o, i=i: outs.__setitem__(i, o))
        )
    try:
        model(x.clone().requires_grad_(True))
        p = model.num_prefix_tokens
        ref = 0
        for layer in range(first, len(model.blocks)):
            z = outs[layer]
            if pool == "mean":
                z = z.mean(1, keepdim=True).expand_as(z)
            s = model.forward_head(model.norm(z))
            objective = sum(s[i, t] for i, t in enumerate(target))
            (g,) = torch.autograd.grad(objective, probs[layer], retain_graph=True)
            ref = ref + g.clamp(min=0).mean(1).mean(1)[:, p:]
    finally:
        for h in handles:
            h.remove()
        for blk, flag in zip(model.blocks, flags):
            blk.attn.fused_attn = flag
    return ref


@pytest.mark.parametrize("family", ["cls", "distilled", "reg_gap"])
@pytest.mark.parametrize("layer_index", [-2, 0, -1])
def test_equals_direct_autograd_on_timm(family, layer_index):
    model = make_model(family, depth=3)
    x, target = _x(), [1, 3]
    before = model_state(model)
    attr = LeGrad(model, layer_index=layer_index).attribute(x, target=target)
    got = patch_scores(attr, model).reshape(2, -1)
    ref = _timm_direct(model, x, target, layer_index % 3)
    assert float(ref.abs().max()) > 0
    torch.testing.assert_close(got, ref, atol=1e-7, rtol=1e-5)
    assert model_state(model) == before
    assert all(p.grad is None for p in model.parameters())


def test_mean_pooled_intermediate_tokens_equal_direct_autograd():
    model = make_model("cls", depth=3)
    x = _x()
    legrad = LeGrad(model, layer_index=-2, intermediate_pool="mean")
    got = patch_scores(legrad.attribute(x, target=[2, 0]), model).reshape(2, -1)
    ref = _timm_direct(model, x, [2, 0], 1, pool="mean")
    torch.testing.assert_close(got, ref, atol=1e-7, rtol=1e-5)
    # the default target is the model's own prediction, also with mean pooling
    pred = model(x).argmax(1)
    assert torch.equal(legrad.attribute(x), legrad.attribute(x, target=pred))


@pytest.mark.parametrize(
    "family", ["siglip", "eva", "beit", "torchvision", "hf_deit_teacher", "hf_dinov2"]
)
def test_batch_equals_per_sample_on_every_family(family):
    model = make_model(family)
    x = _x(3, image_size(family))
    before = model_state(model)
    attr = LeGrad(model).attribute(x, target=[0, 1, 2])
    single = torch.cat(
        [LeGrad(model).attribute(x[i : i + 1], target=i) for i in range(3)]
    )
    torch.testing.assert_close(attr, single, atol=1e-7, rtol=1e-5)
    assert attr.shape == x.shape and (attr >= 0).all()
    assert float(attr.abs().max()) > 0
    assert model_state(model) == before


def test_default_target_and_autograd_requirements():
    model = make_model("cls")
    x = _x()
    pred = model(x).argmax(1)
    assert torch.equal(LeGrad(model).attribute(x), LeGrad(model).attribute(x, pred))
    with torch.no_grad():  # the method enables grad itself
        inside = LeGrad(model).attribute(x, target=1)
    assert torch.equal(inside, LeGrad(model).attribute(x, target=1))
    with torch.inference_mode(), pytest.raises(RuntimeError, match="needs autograd"):
        LeGrad(model).attribute(x, target=1)


def test_refusals_name_the_argument_or_capability():
    with pytest.raises(TypeError, match="LeGrad needs recorded attention maps"):
        LeGrad(make_model("swin"))
    with pytest.raises(TypeError, match="no classifier head"):
        LeGrad(make_model("cls", num_classes=0))
    model = make_model("cls")
    for bad in (2, -3):
        with pytest.raises(ValueError, match="^layer_index:"):
            LeGrad(model, layer_index=bad)
    with pytest.raises(ValueError, match="^intermediate_pool:"):
        LeGrad(model, intermediate_pool="cls")


ZeroShotClassifier = getattr(captum_vit, "ZeroShotClassifier", None)


@pytest.mark.skipif(
    ZeroShotClassifier is None, reason="ZeroShotClassifier (issue 30) is not here"
)
def test_zero_shot_open_clip_equals_direct_autograd():
    """LeGrad through ZeroShotClassifier (target = prompt index) equals the
    per-layer gradients of open_clip's image-text score, with open_clip's blocks
    written out (explicit softmax attention) in one ordinary forward."""
    open_clip = pytest.importorskip("open_clip")
    torch.manual_seed(0)
    vcfg = dict(image_size=32, patch_size=8, width=32, layers=3, head_width=16)
    tcfg = dict(context_length=8, vocab_size=50, width=32, heads=2, layers=1)
    model = open_clip.CLIP(embed_dim=16, vision_cfg=vcfg, text_cfg=tcfg).eval()
    gen = torch.Generator().manual_seed(5)
    text = F.normalize(torch.randn(4, 16, generator=gen), dim=-1)
    zs = ZeroShotClassifier(model, text_embeddings=text)
    x, target = _x(), [1, 3]
    before = model_state(model)
    got = patch_scores(LeGrad(zs).attribute(x, target=target), zs).reshape(2, -1)
    assert model_state(model) == before

    v = model.visual
    z = v.conv1(x.clone().requires_grad_(True)).flatten(2).transpose(1, 2)
    cls = v.class_embedding.expand(2, 1, -1)
    z = v.ln_pre(torch.cat([cls, z], dim=1) + v.positional_embedding)
    probs, scores = [], []
    for r in v.transformer.resblocks:
        attn = r.attn
        q, k, val = F.linear(r.ln_1(z), attn.in_proj_weight, attn.in_proj_bias).chunk(
            3, dim=-1
        )
        heads = attn.num_heads
        q, k, val = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, k, val))
        a = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(-1)
        out = attn.out_proj((a @ val).transpose(1, 2).flatten(2))
        z = z + r.ls_1(out)
        z = z + r.ls_2(r.mlp(r.ln_2(z)))
        image = F.normalize(v.ln_post(z)[:, 0] @ v.proj, dim=-1)
        probs.append(a)
        scores.append(model.logit_scale.exp() * image @ text.T)
    ref = 0
    for layer in (1, 2):  # layer_index=-2 of 3 blocks
        s = scores[layer]
        objective = s[0, target[0]] + s[1, target[1]]
        (g,) = torch.autograd.grad(objective, probs[layer], retain_graph=True)
        ref = ref + g.clamp(min=0).mean(1).mean(1)[:, 1:]
    torch.testing.assert_close(got, ref, atol=1e-7, rtol=1e-4)
