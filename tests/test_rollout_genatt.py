"""AttentionRollout and GenAtt against direct per-sample matrix computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import NoiseTunnel
from helpers import image_size, make_model, map_pool_by_hand, model_state

from captum_vit import AttentionRollout, GenAtt, ViTAdapter, patch_scores
from captum_vit.vit import record_attention


def _images(family: str, b: int = 3, seed: int = 1) -> torch.Tensor:
    s = image_size(family)
    return torch.randn(b, 3, s, s, generator=torch.Generator().manual_seed(seed))


def _readout(model, p: int, t: int) -> np.ndarray:
    """Rows the head reads, written out per family for the oracle (fixed heads)."""
    w = np.zeros(t)
    if model.global_pool == "token":
        if getattr(model, "dist_token", None) is not None:
            w[:2] = 0.5
        else:
            w[0] = 1.0
    else:
        w[p:] = 1.0 / (t - p)
    return w


def _pool_rows(model, image, head_fusion):
    """Rollout readout of an attention-pooled head (SigLIP): the pool attention by
    hand, heads fused, rows renormalised, mean over latent queries, zero on skipped
    prefix tokens."""
    with torch.no_grad():
        _, a = map_pool_by_hand(model, model.forward_features(image[None]))
    fuse = {"mean": np.mean, "max": np.max, "min": np.min}[head_fusion]
    rows = fuse(a[0].double().numpy(), axis=0)
    rows = rows / rows.sum(axis=1, keepdims=True)
    skip = 0 if model.pool_include_prefix else model.num_prefix_tokens
    return np.concatenate([np.zeros(skip), rows.mean(axis=0)])


def rollout_oracle(att, head_fusion, discard_ratio, start_layer, p):
    """Per-sample numpy rollout from recorded (heads, T, T) maps of each layer."""
    fuse = {"mean": np.mean, "max": np.max, "min": np.min}[head_fusion]
    r = None
    for a in att[start_layer:]:
        a = fuse(a, axis=0).copy()
        if discard_ratio > 0:
            sub = a[p:, p:].reshape(-1).copy()
            k = int(discard_ratio * sub.size)
            sub[np.argsort(sub, kind="stable")[:k]] = 0.0
            a[p:, p:] = sub.reshape(a[p:, p:].shape)
        a = a + np.eye(a.shape[0])
        a = a / a.sum(axis=1)[:, None]
        r = a if r is None else a @ r
    return r


@pytest.mark.parametrize(
    "head_fusion,discard_ratio,start_layer",
    [("mean", 0.0, 0), ("max", 0.5, 0), ("min", 0.0, 1), ("mean", 0.9, 1)],
)
def test_rollout_equals_direct_product(family, head_fusion, discard_ratio, start_layer):
    model = make_model(family, depth=3)
    x = _images(family)
    attr = AttentionRollout(model, head_fusion, discard_ratio, start_layer).attribute(x)
    assert attr.shape == x.shape
    with torch.no_grad(), record_attention(model) as rec:
        model(x)
    p = model.num_prefix_tokens
    grid = patch_scores(attr, model).reshape(x.shape[0], -1)
    for b in range(x.shape[0]):
        att = [a[b].double().numpy() for a in rec.attentions]
        r = rollout_oracle(att, head_fusion, discard_ratio, start_layer, p)
        if model.global_pool == "map":
            ref = _pool_rows(model, x[b], head_fusion) @ r
        else:
            ref = _readout(model, p, r.shape[0]) @ r
        np.testing.assert_allclose(grid[b].numpy(), ref[p:], rtol=1e-4, atol=1e-6)


def genatt_oracle(model, image, target):
    """Per-sample GenAtt with an ordinary backward and numpy products; an attention
    pool (SigLIP) is computed by hand and read out by the same formula."""
    with record_attention(model, with_grad=True) as rec:
        inp = image[None].clone().requires_grad_(True)
        if model.global_pool == "map":
            logits, pool = map_pool_by_hand(model, model.forward_features(inp))
            pool.retain_grad()
        else:
            logits = model(inp)
        logits[0, target].backward()
    model.zero_grad(set_to_none=True)
    t = rec.attentions[0].shape[-1]
    r = np.eye(t)
    for a, g in zip(rec.attentions, rec.gradients):
        cam = (g[0] * a[0]).detach().double().numpy()
        a_bar = np.clip(cam, 0, None).mean(axis=0)
        r = r + a_bar @ r
    p = model.num_prefix_tokens
    if model.global_pool == "map":
        cam = (pool.grad[0] * pool[0]).detach().double().numpy()
        rows = np.clip(cam, 0, None).mean(axis=0).mean(axis=0)
        w = np.concatenate([np.zeros(t - rows.shape[0]), rows])
    else:
        w = _readout(model, p, t)
    return (w @ r)[p:]


def test_genatt_equals_formula_and_per_sample(family):
    model = make_model(family, depth=3)
    x = _images(family)
    targets = [0, 3, 4]
    attr = GenAtt(model).attribute(x, target=targets)
    grid = patch_scores(attr, model).reshape(3, -1)
    for b in range(3):
        ref = genatt_oracle(model, x[b], targets[b])
        np.testing.assert_allclose(grid[b].numpy(), ref, rtol=1e-4, atol=1e-7)
    # default target = predicted class; tensor targets; tuple inputs
    pred = model(x).argmax(1)
    assert torch.allclose(GenAtt(model).attribute(x), GenAtt(model).attribute(x, pred))
    out = GenAtt(model).attribute((x,), target=torch.tensor(targets))
    assert isinstance(out, tuple) and torch.allclose(out[0], attr)


def test_batch_equals_per_sample_rollout():
    model = make_model("reg_gap", depth=3)
    x = _images("reg_gap", b=4)
    ro = AttentionRollout(model, discard_ratio=0.3)
    batch = ro.attribute(x)
    single = torch.cat([ro.attribute(x[i : i + 1]) for i in range(4)])
    assert torch.allclose(batch, single, atol=1e-6)


def test_genatt_with_frozen_parameters_and_noise_tunnel():
    model = make_model("cls")
    for prm in model.parameters():
        prm.requires_grad_(False)
    x = _images("cls", b=2)
    before = model_state(model)
    attr = GenAtt(model).attribute(x, target=1)
    assert torch.isfinite(attr).all() and attr.abs().sum() > 0
    nt = NoiseTunnel(GenAtt(model)).attribute(
        x, target=1, nt_samples=3, stdevs=0.1, nt_type="smoothgrad"
    )
    assert nt.shape == x.shape
    assert model_state(model) == before


def test_methods_leave_model_unchanged_also_on_error(family):
    model = make_model(family)
    for blk in model.blocks:
        blk.attn.fused_attn = True
    x = _images(family, b=2)
    before = model_state(model)
    AttentionRollout(model).attribute(x)
    GenAtt(model).attribute(x, target=1)
    assert model_state(model) == before

    def boom(*args):
        raise RuntimeError("boom")

    h = model.head.register_forward_hook(boom)
    before = model_state(model)
    with pytest.raises(RuntimeError, match="boom"):
        GenAtt(model).attribute(x, target=1)
    with pytest.raises(RuntimeError, match="boom"):
        AttentionRollout(model).attribute(x)
    assert model_state(model) == before
    h.remove()


def test_bad_input():
    model = make_model("cls")
    x = _images("cls", b=2)
    with pytest.raises(ValueError, match="target: class indices must lie in"):
        GenAtt(model).attribute(x, target=5)
    with pytest.raises(ValueError, match="target: expected 2 per-sample"):
        GenAtt(model).attribute(x, target=[1, 2, 3])
    with pytest.raises(TypeError, match="target"):
        GenAtt(model).attribute(x, target=(0, 1.5))
    with pytest.raises(TypeError, match="model"):
        GenAtt(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="head_fusion"):
        AttentionRollout(model, head_fusion="median")
    with pytest.raises(ValueError, match="discard_ratio"):
        AttentionRollout(model, discard_ratio=1.0)
    with pytest.raises(ValueError, match="start_layer"):
        AttentionRollout(model, start_layer=2)
    with pytest.raises(ValueError, match="inputs: this model was built for"):
        AttentionRollout(model).attribute(torch.randn(1, 3, 40, 40))
    with pytest.raises(ValueError, match="interpolate_mode"):
        AttentionRollout(model).attribute(x, interpolate_mode="area")


def test_bilinear_display_mode_and_dynamic_size():
    model = make_model("cls", dynamic_img_size=True)
    x = torch.randn(2, 3, 48, 64)
    near = GenAtt(model).attribute(x, target=0)
    smooth = GenAtt(model).attribute(x, target=0, interpolate_mode="bilinear")
    assert near.shape == smooth.shape == x.shape
    assert patch_scores(near, model).shape == (2, 6, 8)
    ro = AttentionRollout(model).attribute(x)
    assert patch_scores(ro, model).shape == (2, 6, 8) and (ro >= 0).all()
    assert ViTAdapter(model).check_images(x) == (6, 8)
