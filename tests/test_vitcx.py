"""ViT-CX against independent computations on tiny random-weight timm models."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.ndimage import gaussian_filter
from scipy.spatial.distance import pdist

from helpers import FAMILIES, images, make_model, model_state, same_state

from captum_vit.attr._vitcx import (
    ViTCX,
    _channel_range,
    _linear_upsampling,
    cluster_labels,
    cluster_masks,
    coverage_corrected_saliency,
    feature_masks,
    merge_clusters,
)


# ------------------------------------------------------------------ oracles
def oracle_masks(model: nn.Module, image: torch.Tensor, threshold: float):
    """Masks written out directly: hook, upsample, min-max, scipy clustering, mean."""
    feats = []
    h = model.blocks[-1].norm1.register_forward_hook(lambda m, a, o: feats.append(o))
    try:
        with torch.no_grad():
            model(image[None])
    finally:
        h.remove()
    p = model.num_prefix_tokens
    gh, gw = model.patch_embed.grid_size
    f = feats[0][0, p:].T.reshape(-1, gh, gw).double()
    up = F.interpolate(f[None], size=image.shape[-2:], mode="bilinear")[0]
    flat = up.flatten(1)
    lo, hi = flat.min(1).values, flat.max(1).values
    keep = (hi - lo) > 1e-6 * torch.maximum(lo.abs(), hi.abs())
    m = ((flat[keep] - lo[keep, None]) / (hi - lo)[keep, None]).numpy()
    if m.shape[0] == 1:
        raw = np.ones(1, dtype=int)
    else:
        raw = fcluster(
            linkage(pdist(m, "cosine"), "complete"), threshold, criterion="distance"
        )
    out = []
    for c in sorted(set(raw), key=lambda c: int(np.flatnonzero(raw == c)[0])):
        mean = m[raw == c].mean(0)
        mean = (mean - mean.min()) / (mean.max() - mean.min())
        out.append(torch.as_tensor(mean).reshape(image.shape[-2:]))
    return torch.stack(out).float()


def prob(model: nn.Module, x: torch.Tensor, t: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.softmax(model(x), -1)[:, t]


# -------------------------------------------------------------------- tests
def test_masks_equal_explicit_clustering():
    model = make_model("cls")
    x = images("cls")
    e = ViTCX(model)
    for i, masks in enumerate(e.masks(x)):
        ref = oracle_masks(model, x[i], 0.1)
        assert masks.shape == ref.shape
        assert torch.allclose(masks, ref, atol=1e-5)


def oracle_fill(name, x: torch.Tensor) -> torch.Tensor:
    """The fill of one (C, H, W) image, written from each fill's definition."""
    if name == "zero":
        return torch.zeros_like(x)
    if name == "black":  # vit_tiny's timm pretrained_cfg: mean = std = 0.5
        return torch.full_like(x, (0.0 - 0.5) / 0.5)
    if name == "mean":
        return x.mean(dim=(1, 2), keepdim=True).expand_as(x)
    if name == "blur":  # Gaussian sigma 5, 11 taps (radius 5 = truncate 1.0), zeros
        out = [
            gaussian_filter(c.double().numpy(), 5.0, mode="constant", truncate=1.0)
            for c in x
        ]
        return torch.as_tensor(np.stack(out)).to(x.dtype)
    return torch.as_tensor(name, dtype=x.dtype).expand_as(x)  # a number


@pytest.mark.parametrize("fill", ["zero", "black", "mean", "blur", 0.25])
def test_noise_free_equals_plain_recomputation(fill):
    model = make_model("cls")
    x = images("cls")
    targets = [1, 3]
    e = ViTCX(model, noise_std=0.0)
    attr = e.attribute(
        x, target=targets, perturbations_per_eval=7, seed=0, baselines=fill
    )
    assert attr.shape == x.shape
    for i, t in enumerate(targets):
        masks = oracle_masks(model, x[i], 0.1)[:, None]  # (K, 1, H, W)
        b = oracle_fill(fill, x[i])
        s = prob(model, x[i] * masks + b * (1 - masks), t)  # p(X ⊙ M_k + B ⊙ (1-M_k))
        num = (s[:, None, None, None] * masks).sum(0)
        den = masks.sum(0)
        ref = torch.where(den > 0, num / den.clamp_min(1e-30), torch.zeros_like(num))
        assert torch.allclose(attr[i], ref.expand_as(attr[i]), atol=1e-5)


@pytest.mark.parametrize("fill", ["zero", "mean", "blur"])
def test_debiased_scores_follow_the_formula(fill):
    model = make_model("cls")
    x = images("cls")
    e = ViTCX(model, noise_std=0.1)
    masks = e.masks(x)
    targets = torch.tensor([4, 0])
    got = e.scores(x, masks, targets, perturbations_per_eval=5, seed=11, baselines=fill)
    for i in range(2):
        g = torch.Generator().manual_seed(11)  # every image restarts the noise stream
        z = torch.stack([torch.randn(x.shape[1:], generator=g) for _ in masks[i]])
        m = masks[i][:, None]
        eps = (1 - m) * (0.1 * z)
        b = oracle_fill(fill, x[i])
        t = int(targets[i])
        ref = prob(model, x[i] * m + b * (1 - m) + eps, t) - prob(model, x[i] + eps, t)
        ref = ref + prob(model, x[i][None], t)
        assert torch.allclose(got[i], ref, atol=1e-5)


def test_default_fill_is_the_image_mean_and_areas_are_reported():
    model = make_model("cls")
    x = images("cls")
    e = ViTCX(model)
    masks = e.masks(x)
    default = e.scores(x, masks, [1, 2], seed=4)
    mean = e.scores(x, masks, [1, 2], seed=4, baselines="mean")
    zero = e.scores(x, masks, [1, 2], seed=4, baselines="zero")
    assert all(torch.equal(a, b) for a, b in zip(default, mean))
    assert not all(torch.allclose(a, b) for a, b in zip(default, zero))
    scores, areas = e.scores(x, masks, [1, 2], seed=4, return_areas=True)
    assert all(torch.equal(a, b) for a, b in zip(scores, default))
    for m, a in zip(masks, areas):
        assert a.shape == (m.shape[0],)
        assert torch.allclose(a, m.mean(dim=(1, 2)))
        assert bool(((a > 0) & (a <= 1)).all())


def test_black_fill_uses_the_model_normalisation():
    x = images("cls")
    # a model built from its class carries no pretrained_cfg
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    bare = VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5
    ).eval()
    with pytest.raises(ValueError, match="baselines: 'black' needs"):
        ViTCX(bare).attribute(x, target=0, seed=0, baselines="black")
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    e = ViTCX(bare, input_mean=mean, input_std=std)
    got = e.attribute(x, target=[0, 1], seed=0, baselines="black")
    colour = -torch.tensor(mean)[:, None, None] / torch.tensor(std)[:, None, None]
    ref = e.attribute(x, target=[0, 1], seed=0, baselines=colour)
    assert torch.allclose(got, ref, atol=1e-6)
    # a per-sample fill tensor: batch equals per-sample calls
    fills = torch.randn(2, 3, 1, 1, generator=torch.Generator().manual_seed(2))
    batch = e.attribute(x, target=[0, 1], seed=3, baselines=fills)
    for i in range(2):
        one = e.attribute(x[i : i + 1], target=i, seed=3, baselines=fills[i])
        assert torch.allclose(batch[i], one[0], atol=1e-5)
    with pytest.raises(ValueError, match="input_mean/input_std"):
        ViTCX(bare, input_mean=mean)
    with pytest.raises(ValueError, match="input_std"):
        ViTCX(bare, input_mean=mean, input_std=(0.0, 1.0, 1.0))


def test_bad_fills_are_rejected_early():
    model = make_model("cls")
    x = images("cls")
    e = ViTCX(model)
    with pytest.raises(ValueError, match="baselines: expected one of"):
        e.attribute(x, baselines="grey")
    with pytest.raises(TypeError, match="baselines"):
        e.attribute(x, baselines=[0.0, 0.0, 0.0])
    with pytest.raises(TypeError, match="baselines"):
        e.attribute(x, baselines=True)
    with pytest.raises(ValueError, match="does not broadcast"):
        e.attribute(x, baselines=torch.zeros(3, 5, 5))
    with pytest.raises(ValueError, match="does not broadcast"):
        e.attribute(x, baselines=torch.zeros(3, 3, 1, 1))  # batch of 3 for 2 images
    with pytest.raises(ValueError, match="NaN"):
        e.attribute(x, baselines=torch.tensor(float("nan")))


def test_attribute_combines_scores_with_coverage():
    model = make_model("distilled")
    x = images("distilled")
    e = ViTCX(model)
    masks = e.masks(x)
    scores = e.scores(x, masks, [2, 2], seed=5)
    attr = e.attribute(x, target=2, seed=5)
    for i in range(2):
        num = torch.einsum("k,khw->hw", scores[i], masks[i])
        den = masks[i].sum(0)
        ref = torch.where(den > 0, num / den.clamp_min(1e-30), torch.zeros_like(num))
        assert torch.allclose(attr[i, 0], ref, atol=1e-6)
        assert torch.equal(attr[i, 0], attr[i, 2])


def test_fast_clustering_equals_explicit_masks():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(48, 4, 5, generator=g) + 3 * torch.randn(48, 1, 1, generator=g)
    f[7] = 0.0  # all-zero channel
    f[9] = 2.5  # constant channel
    m = feature_masks(f, (20, 25))
    assert m.shape[0] == 46 and not torch.isnan(m).any()
    assert float(m.amin()) == 0.0 and float(m.amax()) == 1.0
    for t in (0.02, 0.1, 0.3):
        labels = cluster_labels(m, t)
        ref = merge_clusters(m, labels)
        got, got_labels = cluster_masks(f, (20, 25), t)
        assert got_labels[7] == -1 and got_labels[9] == -1
        assert torch.equal(got_labels[got_labels >= 0], labels)
        assert torch.allclose(got, ref, atol=1e-5)


@pytest.mark.parametrize(
    "shape", [(14, 14, 224, 224), (4, 5, 20, 25), (3, 7, 37, 50), (4, 4, 4, 4)]
)
def test_channel_range_from_extreme_rows_is_exact(shape):
    gh, gw, h, w = shape
    f = torch.randn(20, gh, gw, dtype=torch.float64)
    up = F.interpolate(f[None], size=(h, w), mode="bilinear")[0].flatten(1)
    lo, hi = _channel_range(f, _linear_upsampling(gh, h), _linear_upsampling(gw, w))
    assert torch.allclose(lo, up.amin(1), atol=1e-12)
    assert torch.allclose(hi, up.amax(1), atol=1e-12)


def test_larger_threshold_never_gives_more_masks():
    model = make_model("eva")
    x = images("eva", b=1)
    counts = []
    for t in (0.0, 0.02, 0.05, 0.1, 0.2, 0.4, 0.8, 2.0):
        counts.append(ViTCX(model, distance_threshold=t).masks(x)[0].shape[0])
    assert all(a >= b for a, b in zip(counts, counts[1:])), counts
    assert counts[0] == 32  # threshold 0: one mask per (distinct) channel
    assert counts[-1] == 1  # cosine distances of non-negative masks are <= 1


def test_constant_channels_and_uncovered_pixels_give_no_nan():
    model = copy.deepcopy(make_model("cls"))
    with torch.no_grad():
        model.blocks[-1].norm1.weight[:10] = 0.0  # 10 channels constant (= bias)
    x = images("cls")
    e = ViTCX(model)
    feats = e.features(x)
    assert torch.equal(feats[:, :10].amax((2, 3)), feats[:, :10].amin((2, 3)))
    attr = e.attribute(x, seed=0)
    assert torch.isfinite(attr).all()
    # every channel constant: no mask at all, zero coverage everywhere -> zeros
    with torch.no_grad():
        model.blocks[-1].norm1.weight.zero_()
    assert [m.shape[0] for m in e.masks(x)] == [0, 0]
    attr = e.attribute(x, seed=0)
    assert torch.equal(attr, torch.zeros_like(attr))
    # pixels no mask covers get 0, the others the coverage-weighted mean
    masks = torch.zeros(2, 3, 3)
    masks[0, 0, 0], masks[1, 0, 0], masks[1, 1, 1] = 1.0, 0.5, 1.0
    sal = coverage_corrected_saliency(masks, torch.tensor([0.2, 0.8]))
    assert torch.isfinite(sal).all()
    assert torch.allclose(sal[0, 0], torch.tensor((0.2 + 0.4) / 1.5))
    assert float(sal[1, 1]) == pytest.approx(0.8) and float(sal[2, 2]) == 0.0


@pytest.mark.parametrize("family", list(FAMILIES))
def test_batch_equals_per_sample(family):
    model = make_model(family)
    x = images(family, b=3)
    e = ViTCX(model)
    targets = [0, 4, 2]
    batch = e.attribute(x, target=targets, perturbations_per_eval=9, seed=3)
    assert batch.shape == x.shape and torch.isfinite(batch).all()
    for i in range(3):
        single = e.attribute(x[i : i + 1], target=targets[i], seed=3)
        assert torch.allclose(batch[i], single[0], atol=1e-5)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_default_target_is_predicted_class(family):
    model = make_model(family)
    x = images(family)
    e = ViTCX(model)
    with torch.no_grad():
        pred = model(x).argmax(1)
    got = e.attribute(x, seed=1)
    ref = e.attribute(x, target=pred, seed=1)
    assert torch.allclose(got, ref, atol=1e-6)
    # Captum tuple symmetry
    out = e.attribute((x,), target=pred.tolist(), seed=1)
    assert isinstance(out, tuple) and torch.allclose(out[0], ref, atol=1e-6)


def test_model_left_unchanged_also_after_exception():
    model = make_model("reg_gap")
    x = images("reg_gap")
    before = model_state(model)
    ViTCX(model).attribute(x, seed=0, perturbations_per_eval=4)
    assert same_state(before, model_state(model))

    def boom(module, args, out):
        if out.shape[0] > 1:
            raise RuntimeError("boom")

    e = ViTCX(model)
    h = model.head.register_forward_hook(boom)  # fails in the batched scoring
    try:
        with pytest.raises(RuntimeError, match="boom"):
            e.attribute(x, seed=0, perturbations_per_eval=4)
    finally:
        h.remove()
    assert same_state(before, model_state(model))
    with pytest.raises(ValueError, match="layer"):
        ViTCX(model, layer=model.patch_embed.proj).attribute(x)
    assert same_state(before, model_state(model))


def test_bad_input_gets_clear_errors():
    model = make_model("cls")
    x = images("cls")
    with pytest.raises(ValueError, match="layer: expected a token-shaped output"):
        ViTCX(model, layer=model.patch_embed.proj).attribute(x)  # (B, D, gh, gw)
    with pytest.raises(ValueError, match="layer"):
        ViTCX(model, layer=model.patch_embed).attribute(x)  # no prefix tokens
    with pytest.raises(ValueError, match="layer: the module is not part"):
        ViTCX(model, layer=nn.Linear(2, 2))
    with pytest.raises(TypeError, match="layer"):
        ViTCX(model, layer="blocks.1.norm1")
    e = ViTCX(model)
    with pytest.raises(ValueError, match="target"):
        e.attribute(x, target=5)
    with pytest.raises(ValueError, match="target"):
        e.attribute(x, target=[0, -1])
    with pytest.raises(ValueError, match="target"):
        e.attribute(x, target=[0, 1, 2])
    with pytest.raises(ValueError, match="perturbations_per_eval"):
        e.attribute(x, perturbations_per_eval=0)
    with pytest.raises(ValueError, match="distance_threshold"):
        ViTCX(model, distance_threshold=-0.1)
    with pytest.raises(ValueError, match="noise_std"):
        ViTCX(model, noise_std=-1.0)
    with pytest.raises(ValueError, match="inputs"):
        e.attribute(torch.randn(1, 3, 48, 48))
