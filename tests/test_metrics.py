"""Perturbation metrics against closed forms, token removal against a reduced-sequence
oracle, batching, seeding and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
from helpers import image_size, make_model, model_state

from captum_vit.metrics import (
    aopc,
    area_under_curve,
    deletion,
    faithfulness_correlation,
    insertion,
    insertion_deletion_curves,
    perturbation_accuracy,
    sensitivity_n,
)
from captum_vit.vit import ViTAdapter, patch_scores

# ---------------------------------------------------------------- additive model
D, C = 6, 3


class Additive(nn.Module):
    """f_c(x) = sum_i w_ci x_i + b_c: output is additive in the input elements."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(C, D, generator=g))
        self.b = nn.Parameter(torch.randn(C, generator=g))

    def forward(self, x: torch.Tensor, scale: torch.Tensor = None) -> torch.Tensor:
        out = x @ self.w.T + self.b
        return out if scale is None else out * scale[:, None]


def _additive_case(b: int = 4, seed: int = 0):
    model = Additive(seed)
    x = torch.randn(b, D, generator=torch.Generator().manual_seed(seed + 1))
    target = torch.arange(b) % C
    with torch.no_grad():
        phi = model.w[target] * x  # exact contribution of each element (baseline 0)
    return model, x, target, phi


def _hand_curves(model, x, target, phi):
    """Deletion/insertion curves of an additive model with the zero baseline."""
    b = x.shape[0]
    dele = torch.zeros(b, D + 1)
    ins = torch.zeros(b, D + 1)
    with torch.no_grad():
        for i in range(b):
            full = float(model(x[i : i + 1])[0, target[i]])
            empty = float(model.b[target[i]])
            order = torch.argsort(-phi[i])
            for k in range(D + 1):
                dele[i, k] = full - phi[i, order[:k]].sum()
                ins[i, k] = empty + phi[i, order[:k]].sum()
    return ins, dele


def test_additive_curves_and_areas_equal_closed_form():
    model, x, target, phi = _additive_case()
    ins, dele = _hand_curves(model, x, target, phi)
    c = insertion_deletion_curves(model, x, phi, target, score="logit")
    assert torch.allclose(c.fractions, torch.arange(D + 1) / D)
    assert torch.allclose(c.deletion, dele, atol=1e-5)
    assert torch.allclose(c.insertion, ins, atol=1e-5)
    # trapezoid on [0, 1]: (sum - (first + last) / 2) / D, as RISE's auc()
    trap = lambda y: (y.sum(1) - (y[:, 0] + y[:, -1]) / 2) / D  # noqa: E731
    kw = dict(score="logit")
    assert torch.allclose(insertion(model, x, phi, target, **kw), trap(ins), atol=1e-5)
    assert torch.allclose(deletion(model, x, phi, target, **kw), trap(dele), atol=1e-5)
    mean = deletion(model, x, phi, target, area="mean", **kw)
    assert torch.allclose(mean, dele.mean(1), atol=1e-5)
    assert torch.allclose(area_under_curve(c.fractions, c.deletion), trap(dele))
    # AOPC = mean_k (f(x) - f(x_k)), k = 0..D
    expected = (dele[:, :1] - dele).mean(1)
    assert torch.allclose(aopc(model, x, phi, target, **kw), expected, atol=1e-5)
    expected_ins = (dele[:, :1] - ins).mean(1)
    got = aopc(model, x, phi, target, mode="insertion", **kw)
    assert torch.allclose(got, expected_ins, atol=1e-5)


def test_steps_fractions_and_grouped_features():
    model, x, target, phi = _additive_case()
    ins, dele = _hand_curves(model, x, target, phi)
    c = insertion_deletion_curves(model, x, phi, target, score="logit", n_steps=3)
    assert torch.allclose(c.fractions, torch.tensor([0, 2, 4, 6]) / 6)
    assert torch.allclose(c.deletion, dele[:, [0, 2, 4, 6]], atol=1e-5)
    c = insertion_deletion_curves(
        model, x, phi, target, score="logit", fractions=[0.0, 0.5, 1.0]
    )
    assert torch.allclose(c.insertion, ins[:, [0, 3, 6]], atol=1e-5)
    # three features of two elements each: curves over group sums
    mask = torch.tensor([0, 0, 1, 1, 2, 2])
    c = insertion_deletion_curves(
        model, x, phi, target, score="logit", feature_mask=mask
    )
    groups = phi.view(-1, 3, 2).sum(-1)
    with torch.no_grad():
        full = model(x).gather(1, target[:, None])[:, 0]
    order = torch.argsort(-groups, dim=1)
    for k in range(4):
        removed = groups.gather(1, order[:, :k]).sum(1)
        assert torch.allclose(c.deletion[:, k], full - removed, atol=1e-5)
    # (B, F) attributions are taken as they are
    c2 = insertion_deletion_curves(
        model, x, groups, target, score="logit", feature_mask=mask
    )
    assert torch.allclose(c2.deletion, c.deletion)


def test_probability_score_and_pixel_baselines():
    """Softmax probabilities of the manually perturbed inputs, for every baseline."""
    model, x, target, phi = _additive_case()
    order = torch.argsort(-phi, dim=1)
    base_mean = x.mean(1, keepdim=True).expand_as(x)
    cases = {
        "black": torch.zeros_like(x),
        "mean": base_mean,
        0.5: torch.full_like(x, 0.5),
        "tensor": None,
        "callable": None,
    }
    custom = torch.linspace(-1, 1, D)
    for removal, base in cases.items():
        arg = removal
        if removal == "tensor":
            arg, base = custom, custom.expand_as(x)
        elif removal == "callable":
            arg, base = (lambda inp: -inp), -x
        c = insertion_deletion_curves(model, x, phi, target, removal=arg)
        for k in (0, 2, 5):
            removed = torch.zeros_like(x, dtype=torch.bool)
            removed.scatter_(1, order[:, :k], True)
            with torch.no_grad():
                p = torch.softmax(model(torch.where(removed, base, x)), -1)
            expected = p.gather(1, target[:, None])[:, 0]
            assert torch.allclose(c.deletion[:, k], expected, atol=1e-6), removal


def test_exact_additive_attributions_are_perfectly_faithful():
    model, x, target, phi = _additive_case()
    kw = dict(score="logit", n_samples=50)
    assert torch.allclose(
        faithfulness_correlation(model, x, phi, target, **kw), torch.ones(4)
    )
    sp = faithfulness_correlation(model, x, phi, target, correlation="spearman", **kw)
    assert torch.allclose(sp, torch.ones(4), atol=1e-6)
    neg = faithfulness_correlation(model, x, -phi, target, **kw)
    assert torch.allclose(neg, -torch.ones(4))
    sens = sensitivity_n(model, x, phi, target, n=[1, 2, 3, 5], **kw)
    assert sens.shape == (4, 4)
    assert torch.allclose(sens, torch.ones(4, 4), atol=1e-6)
    single = sensitivity_n(model, x, phi, target, n=2, **kw)
    assert single.shape == (4,) and torch.allclose(single, sens[:, 1])
    # wrong attributions are not perfect
    noisy = phi + torch.randn(phi.shape, generator=torch.Generator().manual_seed(5))
    assert float(sensitivity_n(model, x, noisy, target, n=2, **kw).max()) < 0.999


def test_faithfulness_given_subsets_match_numpy():
    model, x, target, _ = _additive_case()
    attr = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(4)
    subsets = torch.rand(7, D, generator=g) < 0.5
    got = faithfulness_correlation(
        model, x, attr, target, subsets=subsets, removal=0.25
    )
    with torch.no_grad():
        p0 = torch.softmax(model(x), -1).gather(1, target[:, None])[:, 0]
        for i in range(x.shape[0]):
            xs = torch.where(subsets, torch.tensor(0.25), x[i])
            p = torch.softmax(model(xs), -1)[:, target[i]]
            drops = (p0[i] - p).numpy()
            sums = (attr[i] * subsets).sum(1).numpy()
            ref = np.corrcoef(sums, drops)[0, 1]
            assert abs(float(got[i]) - ref) < 1e-5


def test_constant_attributions_give_documented_zero_not_nan():
    model, x, target, _ = _additive_case()
    const = torch.ones_like(x)
    out = sensitivity_n(model, x, const, target, n=2)
    assert torch.equal(out, torch.zeros(4))
    out = faithfulness_correlation(model, x, const, target, subset_size=D)
    assert torch.equal(out, torch.zeros(4))


def test_ties_broken_reproducibly():
    model, x, target, _ = _additive_case()
    const = torch.zeros_like(x)
    a = insertion_deletion_curves(model, x, const, target, seed=3)
    b = insertion_deletion_curves(model, x, const, target, seed=3)
    assert torch.equal(a.deletion, b.deletion)
    # "index" deletes features in index order
    c = insertion_deletion_curves(
        model, x, const, target, tie_break="index", score="logit"
    )
    with torch.no_grad():
        full = model(x).gather(1, target[:, None])[:, 0]
        contrib = model.w[target] * x
    for k in range(D + 1):
        assert torch.allclose(c.deletion[:, k], full - contrib[:, :k].sum(1), atol=1e-5)


def test_perturbation_accuracy_closed_form():
    class Sign(nn.Module):
        def forward(self, x):  # class 0 iff sum(x) > 0.5
            return torch.stack([x.sum(1), torch.full_like(x[:, 0], 0.5)], dim=1)

    x = torch.tensor([[4.0, -1.0, -1.0, -1.0]])  # sum 1: class 0
    attr = x.clone()
    kw = dict(n_steps=4)
    # positive: remove 4 first -> wrong from step 1 on: [1, 0, 0, 0, 0]
    pos, fx, curve = perturbation_accuracy(Sign(), x, attr, 0, return_curves=True, **kw)
    assert torch.equal(curve, torch.tensor([[1.0, 0, 0, 0, 0]]))
    assert torch.allclose(pos, torch.tensor([0.125]))
    # negative: remove the -1s first: [1, 1, 1, 1, 0]
    neg = perturbation_accuracy(Sign(), x, attr, [0], mode="negative", **kw)
    assert torch.allclose(neg, torch.tensor([0.875]))
    # insertion: empty input is class 1, then 4 is inserted: [0, 1, 1, 1, 1]
    ins = perturbation_accuracy(Sign(), x, attr, 0, mode="insertion", **kw)
    assert torch.allclose(ins, torch.tensor([0.875]))
    dele = perturbation_accuracy(Sign(), x, attr, 0, mode="deletion", **kw)
    assert torch.equal(dele, pos)
    with pytest.raises(ValueError, match="labels"):
        perturbation_accuracy(Sign(), x, attr, None)


def test_targets_default_and_additional_forward_args():
    model, x, target, phi = _additive_case()
    kw = dict(score="logit")
    a = deletion(model, x, phi, target, **kw)
    assert torch.equal(a, deletion(model, x, phi, target.tolist(), **kw))
    one = deletion(model, x, phi, 1, **kw)
    assert torch.equal(one, deletion(model, x, phi, [1] * 4, **kw))
    with torch.no_grad():
        pred = model(x).argmax(1)
    assert torch.equal(
        deletion(model, x, phi, None, **kw), deletion(model, x, phi, pred, **kw)
    )
    scale = torch.tensor([1.0, 2.0, 3.0, 4.0])
    scaled = deletion(model, x, phi, target, additional_forward_args=(scale,), **kw)
    assert torch.allclose(scaled, a * scale, atol=1e-5)


# --------------------------------------------------------------------- ViT / tokens
def _images(family: str, b: int = 3, seed: int = 1) -> torch.Tensor:
    s = image_size(family)
    return torch.randn(b, 3, s, s, generator=torch.Generator().manual_seed(seed))


def reduced_sequence(model: nn.Module, image: torch.Tensor, kept: torch.Tensor):
    """Oracle written against timm directly: embed, keep prefix + kept patch tokens,
    run the blocks, let timm's own head pool over what is left."""
    x = model._pos_embed(model.patch_embed(image[None]))
    p = model.num_prefix_tokens
    idx = torch.nonzero(kept).flatten()
    x = torch.cat([x[:, :p], x[:, p:][:, idx]], dim=1)
    x = model.norm_pre(x)
    for blk in model.blocks:
        x = blk(x)
    return model.forward_head(model.norm(x))[0]


@pytest.mark.parametrize("fam", ["cls", "reg_gap"])
def test_token_removal_equals_reduced_sequence(fam):
    model = make_model(fam)
    images = _images(fam)
    n = ViTAdapter(model).num_patches
    attr = torch.randn(3, n, generator=torch.Generator().manual_seed(2))
    before = model_state(model)
    target = [0, 3, 4]
    c = insertion_deletion_curves(model, images, attr, target, n_steps=4)
    assert model_state(model) == before
    order = torch.argsort(-attr, dim=1)
    with torch.no_grad():
        for i in range(3):
            for j, k in enumerate([0, 4, 8, 12, 16]):
                top = torch.zeros(n, dtype=torch.bool)
                top[order[i, :k]] = True
                for kept, curve in ((~top, c.deletion), (top, c.insertion)):
                    if fam == "reg_gap" and not kept.any():
                        continue  # timm's avg pool of no token is NaN; TokenMask: 0
                    p = torch.softmax(reduced_sequence(model, images[i], kept), -1)
                    assert abs(float(curve[i, j]) - float(p[target[i]])) < 1e-5


def test_vit_attribution_shapes_and_patch_scores():
    model = make_model("cls")
    images = _images("cls")
    grid = torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(3))
    pixel = grid.repeat_interleave(8, 1).repeat_interleave(8, 2)[:, None]
    pixel = pixel.expand(3, 3, 32, 32) + 0.0
    a = deletion(model, images, grid)
    assert torch.allclose(a, deletion(model, images, grid.flatten(1)))
    assert torch.allclose(a, deletion(model, images, pixel), atol=1e-6)
    assert torch.allclose(a, deletion(model, images, pixel[:, :1]), atol=1e-6)
    # mean reduction equals captum_vit.patch_scores
    noisy = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    b = deletion(model, images, noisy, attribution_reduction="mean")
    assert torch.allclose(b, deletion(model, images, patch_scores(noisy, model)))


def test_vit_pixel_baseline_blurs_removed_patches():
    model = make_model("cls")
    images = _images("cls", b=2)
    attr = torch.randn(2, 16, generator=torch.Generator().manual_seed(5))
    c = insertion_deletion_curves(model, images, attr, 1, removal="blur", n_steps=2)
    from captum_vit.metrics._core import gaussian_blur

    blurred = gaussian_blur(images)
    order = torch.argsort(-attr, dim=1)
    with torch.no_grad():
        for i in range(2):
            top = torch.zeros(16, dtype=torch.bool)
            top[order[i, :8]] = True
            pix = top.view(4, 4).repeat_interleave(8, 0).repeat_interleave(8, 1)
            xd = torch.where(pix, blurred[i], images[i])
            p = torch.softmax(model(xd[None]), -1)[0, 1]
            assert abs(float(c.deletion[i, 1]) - float(p)) < 1e-5
    # the insertion curve starts from the fully blurred image
    with torch.no_grad():
        p0 = torch.softmax(model(blurred), -1)[:, 1]
    assert torch.allclose(c.insertion[:, 0], p0, atol=1e-5)


def test_batch_equals_per_sample_and_seeds():
    model = make_model("cls")
    images = _images("cls", b=3)
    attr = torch.randn(3, 16, generator=torch.Generator().manual_seed(6))
    c = insertion_deletion_curves(model, images, attr, max_examples_per_batch=7)
    f = faithfulness_correlation(model, images, attr, n_samples=20, seed=2)
    for i in range(3):
        ci = insertion_deletion_curves(model, images[i : i + 1], attr[i : i + 1])
        assert torch.allclose(ci.deletion, c.deletion[i : i + 1], atol=1e-5)
        assert torch.allclose(ci.insertion, c.insertion[i : i + 1], atol=1e-5)
        fi = faithfulness_correlation(
            model, images[i : i + 1], attr[i : i + 1], n_samples=20, seed=2
        )
        assert torch.allclose(fi, f[i : i + 1], atol=1e-4)
    again = faithfulness_correlation(model, images, attr, n_samples=20, seed=2)
    assert torch.equal(f, again)
    other = faithfulness_correlation(model, images, attr, n_samples=20, seed=3)
    assert not torch.equal(f, other)
    u1 = deletion(model, images, attr, removal="uniform", seed=1, n_steps=4)
    u2 = deletion(model, images, attr, removal="uniform", seed=1, n_steps=4)
    assert torch.equal(u1, u2)


# ------------------------------------------------------------------------ bad input
def test_bad_input_is_rejected_with_the_argument_name():
    model, x, target, phi = _additive_case()
    with pytest.raises(ValueError, match="attributions"):
        deletion(model, x, phi[:, :4], target)
    with pytest.raises(ValueError, match="attributions"):
        deletion(model, x, phi[:2], target)
    with pytest.raises(ValueError, match="removal"):
        deletion(model, x, phi, target, removal="gray")
    with pytest.raises(ValueError, match="feature_mask"):
        deletion(model, x, phi, target, feature_mask=torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="feature_mask"):
        deletion(model, x, phi, target, feature_mask=torch.tensor([0, 0, 2, 2, 3, 3]))
    with pytest.raises(ValueError, match="n"):
        sensitivity_n(model, x, phi, target, n=D + 1)
    with pytest.raises(ValueError, match="subset_size"):
        faithfulness_correlation(model, x, phi, target, subset_size=D + 1)
    with pytest.raises(ValueError, match="n_steps"):
        deletion(model, x, phi, target, n_steps=D + 1)
    with pytest.raises(ValueError, match="target"):
        deletion(model, x, phi, C)
    with pytest.raises(ValueError, match="target"):
        deletion(model, x, phi, [0, 1])
    with pytest.raises(ValueError, match="removal"):
        deletion(model, x, phi, target, removal="tokens")
    with pytest.raises(ValueError, match="removal"):
        deletion(model, x, phi, target, removal=torch.zeros(5))
    with pytest.raises(ValueError, match="removal"):
        deletion(model, x, phi, target, removal="blur")  # not an image batch
    with pytest.raises(ValueError, match="score"):
        deletion(model, x, phi, target, score="prob")
    with pytest.raises(ValueError, match="attributions"):
        deletion(model, x, phi * float("nan"), target)
    vit = make_model("cls")
    images = _images("cls", b=2)
    with pytest.raises(ValueError, match="attributions"):
        deletion(vit, images, torch.zeros(2, 5, 5))
    with pytest.raises(ValueError, match="feature_mask"):
        deletion(
            vit,
            images,
            torch.zeros(2, 16),
            removal="tokens",
            feature_mask=torch.zeros(1, 1, 32, 32, dtype=torch.long),
        )


def test_prefix_free_token_model_refuses_empty_sets():
    model = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        depth=1,
        embed_dim=32,
        num_heads=2,
        num_classes=5,
        class_token=False,
        global_pool="avg",
    ).eval()
    images = _images("cls", b=1)
    attr = torch.randn(1, 16)
    with pytest.raises(ValueError, match="removal"):
        insertion(model, images, attr)
    # deletion never needs the empty set when it stops short of it
    out = deletion(model, images, attr, fractions=[0.0, 0.5, 0.75])
    assert torch.isfinite(out).all()
