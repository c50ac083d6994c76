"""Transformer Input Sampling against independent computations on tiny timm models."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers import (
    FAMILIES,
    images,
    make_model,
    model_state,
    reduced_forward,
    same_state,
)

from captum_vit.attr._tis import (
    TransformerInputSampling,
    binarise,
    kmeans,
    token_saliency,
)


def physically_reduced_prob(model: nn.Module, image, kept, t: int) -> float:
    """Oracle: softmax probability with the held-out tokens removed by hand (timm)."""
    return float(torch.softmax(reduced_forward(model, image, kept), -1)[t])


# ------------------------------------------------------------------ k-means
def test_kmeans_is_a_seeded_lloyd_fixpoint_without_empty_clusters():
    g = torch.Generator().manual_seed(0)
    pts = torch.randn(300, 6, generator=g) + 4 * torch.randint(
        0, 3, (300, 1), generator=g
    )
    c, lab = kmeans(pts, 20, torch.Generator().manual_seed(7), max_iter=200)
    counts = torch.bincount(lab, minlength=20)
    assert counts.min() >= 1
    for j in range(20):  # centroids are the members' means
        assert torch.allclose(c[j], pts[lab == j].mean(0), atol=1e-5)
    # converged: every point sits with its nearest centroid (Lloyd fixpoint)
    assert torch.equal(torch.cdist(pts, c).argmin(1), lab)
    c2, lab2 = kmeans(pts, 20, torch.Generator().manual_seed(7), max_iter=200)
    assert torch.equal(c, c2) and torch.equal(lab, lab2)
    c3, _ = kmeans(pts, 20, torch.Generator().manual_seed(8), max_iter=200)
    assert not torch.equal(c, c3)


def test_kmeans_fills_empty_clusters_with_duplicates_and_k_equal_n():
    pts = torch.cat([torch.zeros(5, 3), torch.ones(5, 3), torch.randn(3, 3)])
    c, lab = kmeans(pts, 13, torch.Generator().manual_seed(0))  # k = n
    assert torch.bincount(lab, minlength=13).min() == 1
    c, lab = kmeans(pts, 6, torch.Generator().manual_seed(1))
    assert torch.bincount(lab, minlength=6).min() >= 1
    with pytest.raises(ValueError, match="n_clusters"):
        kmeans(pts, 14, torch.Generator())
    with pytest.raises(ValueError, match="n_clusters"):
        kmeans(pts, 0, torch.Generator())


def test_binarise_keeps_top_tokens():
    c = torch.tensor([[0.1, 0.9, 0.5, 0.7], [1.0, 1.0, 1.0, 0.0]])
    m = binarise(c, 2)
    assert m.tolist() == [[False, True, False, True], [True, True, False, False]]


# -------------------------------------------------------------------- masks
def test_masks_are_topk_of_kmeans_centroids_of_all_block_activations():
    model = make_model("distilled")  # 2 prefix tokens
    x = images("distilled")
    e = TransformerInputSampling(model, n_masks=24, tokens_ratio=0.3)
    acts = []
    hs = [b.register_forward_hook(lambda m, a, o: acts.append(o)) for b in model.blocks]
    try:
        with torch.no_grad():
            model(x[1:2])
    finally:
        for h in hs:
            h.remove()
    a = torch.cat([o[0, 2:] for o in acts], dim=-1)  # (N, L·D), prefix removed
    assert torch.equal(e.activations(x[1:2])[0], a)
    assert torch.allclose(e.activations(x)[1], a, atol=1e-5)
    c, _ = kmeans(a.T.contiguous(), 24, torch.Generator().manual_seed(5))
    n_keep = int(0.3 * 16)
    top = torch.argsort(c, dim=1, descending=True, stable=True)[:, :n_keep]
    ref = torch.zeros(24, 16, dtype=torch.bool).scatter_(1, top, True)
    got = e.masks(x, seed=5)
    assert torch.equal(got[1], ref)
    assert (got[0].sum(1) == n_keep).all()
    # n_masks is capped at the number of channels L·D = 64
    capped = TransformerInputSampling(model, n_masks=1000).masks(x[:1], seed=0)[0]
    assert capped.shape == (64, 16)
    assert (capped.sum(1) == 8).all()


# ------------------------------------------------------------------ scoring
def test_saliency_equals_formula_for_given_masks():
    model = make_model("cls")
    x = images("cls")
    e = TransformerInputSampling(model, n_masks=8)
    g = torch.Generator().manual_seed(0)
    masks = [torch.rand(6, 16, generator=g) < 0.5 for _ in range(2)]
    masks[0][:, 3] = False  # a token no mask keeps
    masks[1][0] = False
    masks[1][0, 5] = True  # a single-token mask
    targets = [2, 4]
    scores = e.scores(x, masks, targets, perturbations_per_eval=5)
    for i, t in enumerate(targets):
        with torch.no_grad():
            w = torch.tensor(
                [physically_reduced_prob(model, x[i], m, t) for m in masks[i]]
            )
        assert torch.allclose(scores[i], w, atol=1e-5)
        sal = token_saliency(masks[i], scores[i])
        for tok in range(16):
            cover = masks[i][:, tok]
            ref = w[cover].sum() / cover.sum() if cover.any() else torch.tensor(0.0)
            assert torch.allclose(sal[tok], ref, atol=1e-5)
    assert float(token_saliency(masks[0], scores[0])[3]) == 0.0


def test_attribute_is_saliency_of_own_masks_patch_constant():
    model = make_model("reg_gap")
    x = images("reg_gap")
    e = TransformerInputSampling(model, n_masks=16)
    attr = e.attribute(x, target=[1, 3], seed=9)
    masks = e.masks(x, seed=9)
    scores = e.scores(x, masks, [1, 3])
    for i in range(2):
        sal = token_saliency(masks[i], scores[i]).reshape(1, 1, 4, 4)
        ref = F.interpolate(sal, size=(32, 32), mode="nearest")[0, 0]
        assert torch.allclose(attr[i], ref.expand(3, -1, -1), atol=1e-6)
    smooth = e.attribute(x, target=[1, 3], seed=9, interpolate_mode="bilinear")
    assert smooth.shape == x.shape


@pytest.mark.parametrize("family", list(FAMILIES))
def test_drop_scoring_equals_attention_masking(family):
    model = make_model(family)
    x = images(family)
    e = TransformerInputSampling(model, n_masks=12)
    masks = e.masks(x, seed=0)
    drop = e.scores(x, masks, [0, 3], mode="drop", perturbations_per_eval=7)
    attn = e.scores(x, masks, [0, 3], mode="attention", perturbations_per_eval=7)
    for d, a in zip(drop, attn):
        assert torch.allclose(d, a, atol=1e-4)


def test_same_seed_reproduces_bit_for_bit():
    model = make_model("eva")
    x = images("eva")
    e = TransformerInputSampling(model, n_masks=20)
    a = e.attribute(x, seed=123)
    b = e.attribute(x, seed=123)
    assert torch.equal(a, b)
    assert not torch.equal(e.masks(x, seed=123)[0], e.masks(x, seed=124)[0])
    torch.manual_seed(0)
    c = e.attribute(x)  # seed=None: drawn from the global RNG
    torch.manual_seed(0)
    assert torch.equal(c, e.attribute(x))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_batch_equals_per_sample(family):
    model = make_model(family)
    x = images(family, b=3)
    e = TransformerInputSampling(model, n_masks=16)
    targets = torch.tensor([4, 0, 2])
    batch = e.attribute(x, target=targets, perturbations_per_eval=10, seed=2)
    assert batch.shape == x.shape and torch.isfinite(batch).all()
    for i in range(3):
        single = e.attribute(x[i : i + 1], target=int(targets[i]), seed=2)
        assert torch.allclose(batch[i], single[0], atol=1e-5)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_default_target_is_predicted_class(family):
    model = make_model(family)
    x = images(family)
    e = TransformerInputSampling(model, n_masks=8)
    with torch.no_grad():
        pred = model(x).argmax(1)
    ref = e.attribute(x, target=pred, seed=1)
    assert torch.allclose(e.attribute(x, seed=1), ref, atol=1e-6)
    out = e.attribute((x,), target=pred.tolist(), seed=1)
    assert isinstance(out, tuple) and torch.allclose(out[0], ref, atol=1e-6)


def test_model_left_unchanged_also_after_exception():
    model = make_model("eva")
    x = images("eva")
    before = model_state(model)
    TransformerInputSampling(model, n_masks=8).attribute(x, seed=0)
    assert same_state(before, model_state(model))

    def boom(module, args, out):
        if out.shape[0] > 1:
            raise RuntimeError("boom")

    h = model.head.register_forward_hook(boom)  # fails in the batched scoring
    try:
        with pytest.raises(RuntimeError, match="boom"):
            TransformerInputSampling(model, n_masks=8).attribute(x, seed=0)
    finally:
        h.remove()
    assert same_state(before, model_state(model))


def test_bad_input_gets_clear_errors():
    model = make_model("cls")
    x = images("cls")
    for ratio in (0.0, -0.5, 1.5, float("nan")):
        with pytest.raises(ValueError, match="tokens_ratio"):
            TransformerInputSampling(model, tokens_ratio=ratio)
    for n in (0, -3, 2.5):
        with pytest.raises(ValueError, match="n_masks"):
            TransformerInputSampling(model, n_masks=n)
    e = TransformerInputSampling(model, n_masks=4)
    with pytest.raises(ValueError, match="target"):
        e.attribute(x, target=5)
    with pytest.raises(ValueError, match="target"):
        e.attribute(x, target=torch.tensor([0, 7]))
    with pytest.raises(ValueError, match="perturbations_per_eval"):
        e.attribute(x, perturbations_per_eval=0)
    with pytest.raises(ValueError, match="interpolate_mode"):
        e.attribute(x, interpolate_mode="area")
    with pytest.raises(ValueError, match="masks"):
        e.scores(x, [torch.ones(2, 15, dtype=torch.bool)] * 2, 0)
    assert TransformerInputSampling(model, tokens_ratio=1).n_keep(16) == 16
    assert TransformerInputSampling(model, tokens_ratio=0.01).n_keep(16) == 1
