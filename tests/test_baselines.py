"""RawAttention, ViTGradCAM and RISE against independent computations."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from helpers import FAMILIES, images, make_model, map_pool_by_hand, model_state

from captum_vit import RISE, RawAttention, ViTGradCAM, patch_scores
from captum_vit.attr._rise import rise_grids, rise_masks


def readout(
    model: nn.Module, family: str, t: int, x: torch.Tensor, fuse=torch.mean
) -> torch.Tensor:
    """(B, T) weights over token rows that the head reads, written per family; an
    attention pool (SigLIP) reads through its own attention, computed by hand: heads
    fused, rows renormalised, latent queries averaged."""
    p = model.num_prefix_tokens
    if family == "siglip":
        with torch.no_grad():
            _, a = map_pool_by_hand(model, model.forward_features(x))
        rows = fuse(a, dim=1)
        rows = rows / rows.sum(dim=-1, keepdim=True)
        w = rows.mean(dim=1)
        skip = 0 if model.pool_include_prefix else p
        return torch.cat([torch.zeros(x.shape[0], skip), w], dim=1)
    w = torch.zeros(t)
    if family == "distilled":
        w[:2] = 0.5
    elif model.global_pool == "token":
        w[0] = 1.0
    else:
        w[p:] = 1.0 / (t - p)
    return w.expand(x.shape[0], -1)


# -------------------------------------------------------------- raw attention
@pytest.mark.parametrize("family", ["cls", "distilled", "reg_gap", "siglip"])
def test_raw_attention_equals_softmax_of_the_last_block(family):
    model = make_model(family)
    x = images(family)
    blk = model.blocks[-1]
    seen = []
    h = blk.norm1.register_forward_hook(lambda m, a, o: seen.append(o))
    try:
        with torch.no_grad():
            model(x)
    finally:
        h.remove()
    a = blk.attn
    b, t, _ = seen[0].shape
    qkv = (seen[0] @ a.qkv.weight.T + a.qkv.bias).reshape(b, t, 3, a.num_heads, -1)
    q, k = qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2)
    att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    w = readout(model, family, t, x)
    ref = torch.einsum("bt,bts->bs", w, att.mean(dim=1))  # (B, T)
    got = patch_scores(RawAttention(model).attribute(x, target=3), model)
    assert torch.allclose(got.flatten(1), ref[:, model.num_prefix_tokens :], atol=1e-6)
    # max fusion and an earlier block
    w = readout(model, family, t, x, fuse=torch.amax)
    att_max = torch.einsum("bt,bts->bs", w, att.amax(dim=1))
    got = RawAttention(model, layer=1, head_fusion="max").attribute(x)
    assert torch.allclose(
        patch_scores(got, model).flatten(1),
        att_max[:, model.num_prefix_tokens :],
        atol=1e-6,
    )


@pytest.mark.parametrize("family", list(FAMILIES))
def test_raw_attention_batch_equals_per_sample_and_leaves_model(family):
    model = make_model(family)
    x = images(family, b=3)
    before = model_state(model)
    e = RawAttention(model)
    batch = e.attribute(x)
    assert batch.shape == x.shape and bool((batch >= 0).all())
    for i in range(3):
        assert torch.allclose(batch[i], e.attribute(x[i : i + 1])[0], atol=1e-6)
    assert model_state(model) == before
    with pytest.raises(ValueError, match="layer"):
        RawAttention(model, layer=2)
    with pytest.raises(ValueError, match="head_fusion"):
        RawAttention(model, head_fusion="sum")


# ------------------------------------------------------------------ grad-cam
@pytest.mark.parametrize("family", list(FAMILIES))
def test_gradcam_equals_backward_on_a_copy(family):
    model = make_model(family)
    x = images(family)
    targets = [1, 4]
    ref_model = copy.deepcopy(model)
    seen = []

    def keep(module, args, out):
        out.retain_grad()
        seen.append(out)

    ref_model.blocks[-1].norm1.register_forward_hook(keep)
    logits = ref_model(x)
    logits[0, targets[0]].backward(retain_graph=True)
    g0 = seen[0].grad.clone()
    seen[0].grad = None
    logits[1, targets[1]].backward()
    g1 = seen[0].grad
    grad = torch.stack([g0[0], g1[1]])
    p = model.num_prefix_tokens
    act, grad = seen[0].detach()[:, p:], grad[:, p:]
    cam = (act * grad.mean(dim=1, keepdim=True)).sum(-1)
    before = model_state(model)
    e = ViTGradCAM(model)
    got = patch_scores(e.attribute(x, target=targets), model).flatten(1)
    assert torch.allclose(got, cam.clamp(min=0), atol=1e-5)
    signed = e.attribute(x, target=targets, relu=False)
    assert torch.allclose(patch_scores(signed, model).flatten(1), cam, atol=1e-5)
    assert model_state(model) == before
    # batch = per sample, default target = prediction
    for i in range(2):
        one = e.attribute(x[i : i + 1], target=targets[i])
        assert torch.allclose(one[0], e.attribute(x, target=targets)[i], atol=1e-6)
    with torch.no_grad():
        pred = model(x).argmax(1)
    assert torch.allclose(e.attribute(x), e.attribute(x, target=pred))


def test_gradcam_on_the_last_block_output_of_a_cls_model_is_zero():
    # the head reads only the CLS token: patch tokens after the last block get no
    # gradient, which is why the default layer is the last block's norm1
    model = make_model("cls")
    x = images("cls")
    attr = ViTGradCAM(model, layer=model.blocks[-1]).attribute(x, target=0)
    assert torch.equal(attr, torch.zeros_like(attr))
    mid = ViTGradCAM(model, block=0).attribute(x, target=0, relu=False)
    assert bool((mid != 0).any())


def test_gradcam_bad_input():
    model = make_model("cls")
    x = images("cls")
    with pytest.raises(ValueError, match="layer: expected a token-shaped"):
        ViTGradCAM(model, layer=model.patch_embed.proj).attribute(x)
    with pytest.raises(ValueError, match="layer: the module is not part"):
        ViTGradCAM(model, layer=nn.Linear(2, 2))
    with pytest.raises(ValueError, match="block"):
        ViTGradCAM(model, block=5)
    with pytest.raises(ValueError, match="target"):
        ViTGradCAM(model).attribute(x, target=7)
    before = model_state(model)

    def boom(module, args, out):
        raise RuntimeError("boom")

    h = model.head.register_forward_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            ViTGradCAM(model).attribute(x)
    finally:
        h.remove()
    assert model_state(model) == before


# ---------------------------------------------------------------------- RISE
def bilinear(grid: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear upsampling with pixel-centre alignment and clamped borders."""

    def axis(n_in, n_out):
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0

    r0, r1, fr = axis(grid.shape[0], out_h)
    c0, c1, fc = axis(grid.shape[1], out_w)
    top = grid[r0][:, c0] * (1 - fc) + grid[r0][:, c1] * fc
    bottom = grid[r1][:, c0] * (1 - fc) + grid[r1][:, c1] * fc
    return top * (1 - fr[:, None]) + bottom * fr[:, None]


def test_rise_masks_follow_the_paper():
    g = torch.Generator().manual_seed(0)
    grids, shifts = rise_grids(2000, 7, 0.3, (30, 45), g)
    assert grids.shape == (2000, 7, 7) and set(grids.unique().tolist()) == {0.0, 1.0}
    assert abs(float(grids.mean()) - 0.3) < 0.01  # 98000 Bernoulli(0.3) cells
    ch, cw = math.ceil(30 / 7), math.ceil(45 / 7)  # cell size 5 x 7
    assert set(shifts[:, 0].tolist()) == set(range(ch))
    assert set(shifts[:, 1].tolist()) == set(range(cw))
    masks = rise_masks(grids[:20], shifts[:20], (30, 45))
    assert masks.shape == (20, 30, 45)
    for i in range(20):
        up = bilinear(grids[i].numpy(), 8 * ch, 8 * cw)
        r, c = shifts[i].tolist()
        ref = up[r : r + 30, c : c + 45]
        assert np.allclose(masks[i].numpy(), ref, atol=1e-6)


class LinearProb(nn.Module):
    """Two classes with p_0(x) = 0.5 + <a, x>: linear in the masks."""

    def __init__(self, shape) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.a = nn.Parameter(torch.rand(shape, generator=g) * 1e-3)

    def forward(self, x):
        s = (x * self.a).flatten(1).sum(1)
        return torch.stack([torch.log(0.5 + s), torch.log(0.5 - s)], dim=1)


@pytest.mark.parametrize("fill", ["zero", "mean"])
def test_rise_equals_its_closed_form_on_a_model_linear_in_the_masks(fill):
    shape = (3, 12, 10)
    model = LinearProb(shape)
    x = torch.rand(2, *shape, generator=torch.Generator().manual_seed(1))
    rise = RISE(model, n_masks=50, grid_size=3, p=0.5)
    got = rise.attribute(
        x, target=[0, 1], seed=7, perturbations_per_eval=16, baselines=fill
    )
    masks = rise.masks((12, 10), seed=7).double().flatten(1)  # (N, HW)
    a = model.a.detach().double()
    for i, t in enumerate([0, 1]):
        xi = x[i].double()
        b = xi.mean(dim=(1, 2), keepdim=True) if fill == "mean" else 0 * xi
        # p_0(X⊙M + B⊙(1-M)) = 0.5 + <a, B> + sum_u c_u M(u), c = sum_ch a (X - B)
        c = (a * (xi - b)).sum(0).flatten()
        p0 = 0.5 + float((a * b).sum()) + masks @ c
        prob = p0 if t == 0 else 1 - p0
        ref = (prob @ masks) / (50 * 0.5)
        assert torch.allclose(got[i, 0].double().flatten(), ref, atol=1e-5)
        assert torch.equal(got[i, 0], got[i, 2])


@pytest.mark.parametrize("family", ["cls", "eva"])
def test_rise_batch_equals_per_sample_and_seeds(family):
    model = make_model(family)
    x = images(family, b=3)
    rise = RISE(model, n_masks=24, grid_size=4)
    before = model_state(model)
    batch = rise.attribute(x, target=[0, 1, 2], seed=3, perturbations_per_eval=10)
    assert model_state(model) == before
    for i in range(3):
        one = rise.attribute(x[i : i + 1], target=i, seed=3, perturbations_per_eval=7)
        assert torch.allclose(batch[i], one[0], atol=1e-6)
    with torch.no_grad():
        pred = model(x).argmax(1)
    assert torch.allclose(rise.attribute(x, seed=3), rise.attribute(x, pred, seed=3))
    assert not torch.allclose(batch, rise.attribute(x, [0, 1, 2], seed=4))
    torch.manual_seed(0)
    a = rise.attribute(x, target=0)
    torch.manual_seed(0)
    assert torch.equal(a, rise.attribute(x, target=0))
    out = rise.attribute((x,), target=0, seed=1)
    assert isinstance(out, tuple) and out[0].shape == x.shape


def test_rise_bad_input():
    model = make_model("cls")
    x = images("cls")
    with pytest.raises(ValueError, match="n_masks"):
        RISE(model, n_masks=0)
    with pytest.raises(ValueError, match="p:"):
        RISE(model, p=0.0)
    with pytest.raises(ValueError, match="grid_size"):
        RISE(model, grid_size=0)
    rise = RISE(model, n_masks=4)
    with pytest.raises(ValueError, match="target"):
        rise.attribute(x, target=9)
    with pytest.raises(ValueError, match="baselines"):
        rise.attribute(x, baselines="grey")
    with pytest.raises(ValueError, match="perturbations_per_eval"):
        rise.attribute(x, perturbations_per_eval=0)
    with pytest.raises(ValueError, match="inputs"):
        rise.attribute(torch.randn(1, 3, 40, 40))
