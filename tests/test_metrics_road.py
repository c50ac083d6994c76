"""ROAD: the noisy linear imputation against its formula, the curves against
imputed images evaluated directly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from helpers import make_model

from captum_vit.metrics import NoisyLinearImputation, deletion, road, road_curves
from captum_vit.metrics._core import Features
from captum_vit.metrics._imputation import ImputingRemover, linear_imputation

W8 = {(-1, -1): 1 / 12, (-1, 0): 1 / 6, (-1, 1): 1 / 12, (0, -1): 1 / 6}
W8.update({(0, 1): 1 / 6, (1, -1): 1 / 12, (1, 0): 1 / 6, (1, 1): 1 / 12})


def dense_imputation(image: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Every unknown pixel = weighted mean of its in-image neighbours, solved with
    a dense system built pixel by pixel."""
    c, h, w = image.shape
    unknown = [(r, q) for r in range(h) for q in range(w) if not known[r, q]]
    index = {p: i for i, p in enumerate(unknown)}
    a = np.zeros((len(unknown), len(unknown)))
    b = np.zeros((len(unknown), c))
    for i, (r, q) in enumerate(unknown):
        for (dr, dq), wt in W8.items():
            rr, qq = r + dr, q + dq
            if not (0 <= rr < h and 0 <= qq < w):
                continue
            a[i, i] += wt
            if known[rr, qq]:
                b[i] += wt * image[:, rr, qq]
            else:
                a[i, index[(rr, qq)]] -= wt
    out = image.copy()
    sol = np.linalg.solve(a, b)
    for i, (r, q) in enumerate(unknown):
        out[:, r, q] = sol[i]
    return out


def test_imputation_follows_the_formula():
    g = torch.Generator().manual_seed(0)
    img = torch.randn(3, 7, 9, generator=g, dtype=torch.float64)
    known = torch.rand(7, 9, generator=g) > 0.6
    known[0, 0] = False  # a corner pixel (3 neighbours)
    got = linear_imputation(img, known)
    ref = dense_imputation(img.numpy(), known.numpy())
    assert np.allclose(got.numpy(), ref, atol=1e-10)
    assert torch.equal(got[:, known], img[:, known])
    # each unknown pixel is the weighted mean of its neighbours in the result
    for r in range(7):
        for q in range(9):
            if known[r, q]:
                continue
            num, den = 0.0, 0.0
            for (dr, dq), wt in W8.items():
                if 0 <= r + dr < 7 and 0 <= q + dq < 9:
                    num = num + wt * got[:, r + dr, q + dq]
                    den += wt
            assert torch.allclose(got[:, r, q], num / den, atol=1e-10)
    # nothing known: no unique solution, zeros; everything known: unchanged
    assert torch.equal(
        linear_imputation(img, torch.zeros(7, 9, dtype=torch.bool)),
        torch.zeros_like(img),
    )
    assert torch.equal(linear_imputation(img, torch.ones(7, 9, dtype=torch.bool)), img)


def test_noise_is_one_seeded_field_on_imputed_pixels():
    x = torch.randn(2, 3, 6, 5, generator=torch.Generator().manual_seed(1))
    feats = Features(num=30, ids=torch.arange(30).repeat(3).reshape(1, -1))
    keep = torch.rand(4, 30, generator=torch.Generator().manual_seed(2)) > 0.5
    index = torch.tensor([0, 1, 1, 0])
    quiet = ImputingRemover(None, x, None, feats, NoisyLinearImputation(0.0), 7)
    noisy = ImputingRemover(None, x, None, feats, NoisyLinearImputation(0.05), 7)
    diff = noisy.impute(index, keep) - quiet.impute(index, keep)
    removed = ~keep.reshape(4, 1, 6, 5).expand(4, 3, 6, 5)
    assert torch.equal(diff[~removed], torch.zeros_like(diff[~removed]))
    field = noisy.noise.expand(4, 3, 6, 5)
    assert torch.allclose(diff[removed], field[removed], atol=1e-6)
    assert abs(float(noisy.noise.std()) - 0.05) < 0.03
    # the same seed gives the same field; another seed another one
    again = ImputingRemover(None, x, None, feats, NoisyLinearImputation(0.05), 7)
    other = ImputingRemover(None, x, None, feats, NoisyLinearImputation(0.05), 8)
    assert torch.equal(again.noise, noisy.noise)
    assert not torch.equal(other.noise, noisy.noise)


def test_road_curves_on_a_vit_equal_imputed_images_evaluated_directly():
    model = make_model("cls")  # 32 px, 8 px patches: 16 patches
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    attr = torch.randn(2, 4, 4, generator=torch.Generator().manual_seed(1))
    target = [1, 3]
    fr = [0.25, 0.5, 0.75]
    c = road_curves(model, x, attr, target, fractions=fr, noise=0.0)
    assert torch.allclose(c.fractions, torch.tensor(fr))
    for mode, curve in (("morf", c.morf), ("lerf", c.lerf)):
        for i in range(2):
            order = torch.argsort(attr[i].flatten(), descending=mode == "morf")
            for j, f in enumerate(fr):
                removed = order[: int(round(f * 16))]
                keep = torch.ones(16, dtype=torch.bool)
                keep[removed] = False
                known = keep.reshape(4, 4).repeat_interleave(8, 0)
                known = known.repeat_interleave(8, 1)
                img = dense_imputation(x[i].double().numpy(), known.numpy())
                with torch.no_grad():
                    logits = model(torch.as_tensor(img).float()[None])
                p = torch.softmax(logits, -1)[0, target[i]]
                assert abs(float(curve[i, j]) - float(p)) < 1e-5
    # the summaries are the means of the curves
    m = road(model, x, attr, target, fractions=fr, noise=0.0)
    assert torch.allclose(m, c.morf.mean(1))
    gap = road(model, x, attr, target, fractions=fr, noise=0.0, mode="lerf-morf")
    assert torch.allclose(gap, c.lerf.mean(1) - c.morf.mean(1))
    # batch = per sample (noise included)
    both = road_curves(model, x, attr, target, fractions=fr)
    one = road_curves(model, x[1:], attr[1:], target[1:], fractions=fr)
    assert torch.allclose(both.morf[1:], one.morf, atol=1e-6)


def test_road_pixels_on_any_model_and_accuracy():
    class Linear(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            g = torch.Generator().manual_seed(3)
            self.w = nn.Parameter(torch.randn(4, 3 * 5 * 6, generator=g))

        def forward(self, x):
            return x.flatten(1) @ self.w.T

    model = Linear()
    x = torch.randn(2, 3, 5, 6, generator=torch.Generator().manual_seed(4))
    attr = torch.randn(2, 1, 5, 6, generator=torch.Generator().manual_seed(5))
    fr = [0.2, 0.6]
    c = road_curves(model, x, attr, [0, 2], fractions=fr, noise=0.0, score="logit")
    acc = road_curves(
        model, x, attr, [0, 2], fractions=fr, noise=0.0, modes="morf", score="accuracy"
    )
    assert c.lerf is not None and acc.lerf is None
    for i, t in enumerate([0, 2]):
        order = torch.argsort(attr[i].flatten(), descending=True)
        for j, f in enumerate(fr):
            known = torch.ones(30, dtype=torch.bool)
            known[order[: int(round(f * 30))]] = False
            img = dense_imputation(x[i].double().numpy(), known.reshape(5, 6).numpy())
            with torch.no_grad():
                out = model(torch.as_tensor(img).float()[None])[0]
            assert abs(float(c.morf[i, j]) - float(out[t])) < 1e-4
            assert float(acc.morf[i, j]) == float(int(out.argmax()) == t)
    # the imputation works as a removal of the other metrics too
    d1 = deletion(
        model,
        x,
        attr,
        [0, 2],
        removal="noisy_linear",
        feature_mask=torch.arange(30).reshape(1, 1, 5, 6),
    )
    d2 = deletion(
        model,
        x,
        attr,
        [0, 2],
        removal=NoisyLinearImputation(0.01),
        feature_mask=torch.arange(30).reshape(1, 1, 5, 6),
    )
    assert torch.equal(d1, d2)


def test_road_bad_input():
    model = make_model("cls")
    x = torch.randn(1, 3, 32, 32)
    attr = torch.randn(1, 4, 4)
    with pytest.raises(ValueError, match="mode"):
        road(model, x, attr, mode="both")
    with pytest.raises(ValueError, match="modes"):
        road_curves(model, x, attr, modes=("morf", "morf"))
    with pytest.raises(ValueError, match="noise"):
        road(model, x, attr, noise=-1.0)
    with pytest.raises(ValueError, match="score"):
        road(model, x, attr, score="odds")
    patch = torch.arange(16).reshape(1, 1, 4, 4).repeat_interleave(8, 2)
    patch = patch.repeat_interleave(8, 3)
    split = patch + 16 * torch.arange(3).reshape(1, 3, 1, 1)  # one id per channel
    with pytest.raises(ValueError, match="whole pixels"):
        road(model, x, torch.randn(1, 3, 32, 32), feature_mask=split)
    with pytest.raises(ValueError, match="fractions"):
        road(model, x, attr, fractions=[0.5])
