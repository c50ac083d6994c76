"""The papers' protocols: single-pixel pointing game, insertion - deletion, AOPC
variants, non-target classes, the sensitivity-n sweep and 1000-subset faithfulness,
against hand-computed values."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from helpers import make_model

from captum_vit.metrics import (
    aopc,
    deletion,
    faithfulness_correlation,
    insertion,
    insertion_deletion_curves,
    insertion_minus_deletion,
    pointing_game,
    sensitivity_n,
    sensitivity_n_sweep,
)

D, C = 6, 3


class Additive(nn.Module):
    """f_c(x) = sum_i w_ci x_i + b_c."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(C, D, generator=g))
        self.b = nn.Parameter(torch.randn(C, generator=g))

    def forward(self, x):
        return x @ self.w.T + self.b


def case(b: int = 4):
    model = Additive()
    x = torch.randn(b, D, generator=torch.Generator().manual_seed(1))
    return model, x


def hand_curve(model, x, order_scores, cls, descending=True, insert=False):
    """Logit of class ``cls`` while deleting (inserting) features by the scores."""
    out = torch.zeros(x.shape[0], D + 1)
    with torch.no_grad():
        contrib = model.w[cls] * x  # (B, D)
        full = model(x).gather(1, cls[:, None])[:, 0]
        for i in range(x.shape[0]):
            order = torch.argsort(order_scores[i], descending=descending)
            for k in range(D + 1):
                moved = contrib[i, order[:k]].sum()
                out[i, k] = model.b[cls[i]] + moved if insert else full[i] - moved
    return out


# ------------------------------------------------------------- pointing game
def test_single_pixel_pointing_game_hits_misses_and_ties():
    maps = torch.zeros(4, 10, 10)
    maps[0, 2, 3] = 1.0  # unique max inside the box
    maps[1, 8, 8] = 1.0  # unique max outside
    maps[2, 1, 7] = maps[2, 5, 5] = 1.0  # tie: first in row-major order is (1, 7)
    maps[3, 6, 2] = maps[3, 2, 6] = 1.0  # tie: first is (2, 6)
    boxes = torch.tensor(
        [[3, 2, 4, 3], [0, 0, 8, 8], [4, 4, 6, 6], [6, 2, 7, 3]]
    )  # [x1, y1, x2, y2]; the last box holds (row 2, col 6)
    first = pointing_game(maps, boxes, ties="first")
    assert torch.equal(first, torch.tensor([1.0, 0.0, 0.0, 1.0]))
    anyhit = pointing_game(maps, boxes, ties="any")  # patch-level variant
    assert torch.equal(anyhit, torch.tensor([1.0, 0.0, 1.0, 1.0]))
    # a random tie break picks one of the maxima, reproducibly
    a = pointing_game(maps, boxes, ties="random", seed=5)
    assert torch.equal(a, pointing_game(maps, boxes, ties="random", seed=5))
    every = pointing_game(maps, boxes, ties="all")
    assert torch.equal(every, torch.tensor([1.0, 0.0, 0.0, 0.0]))
    assert bool(((every <= a) & (a <= anyhit)).all())
    # 15-pixel tolerance around the box (Zhang et al.)
    big = torch.zeros(2, 64, 64)
    big[0, 30, 50] = 1.0  # 10 px right of the box edge at column 40
    big[1, 30, 60] = 1.0  # 20 px right
    box = torch.tensor([[10, 10, 40, 40]] * 2)
    assert torch.equal(pointing_game(big, box, ties="first"), torch.zeros(2))
    got = pointing_game(big, box, ties="first", tolerance=15)
    assert torch.equal(got, torch.tensor([1.0, 0.0]))


def test_single_pixel_pointing_game_on_patch_maps_at_image_resolution():
    # a (B, gh, gw) patch grid is brought to the image size first (nearest): the
    # single pointing pixel is the top-left pixel of the top patch
    grid = torch.tensor([[[0.0, 1.0], [0.0, 0.5]]])  # top-right patch
    near_corner = torch.tensor([[5, 0, 6, 1]])  # holds pixel (0, 5) only
    other = torch.tensor([[8, 3, 10, 5]])  # inside the top patch, not its corner
    kw = dict(image_size=(10, 10), ties="first")
    assert float(pointing_game(grid, near_corner, **kw)) == 1.0
    assert float(pointing_game(grid, other, **kw)) == 0.0
    assert float(pointing_game(grid, other, image_size=(10, 10))) == 1.0  # "any"


# ------------------------------------------------------------ curve summaries
def test_insertion_minus_deletion_and_non_target_classes():
    model, x = case()
    phi = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    target = torch.tensor([0, 1, 2, 0])
    kw = dict(score="logit")
    got = insertion_minus_deletion(model, x, phi, target, **kw)
    ref = insertion(model, x, phi, target, **kw) - deletion(model, x, phi, target, **kw)
    assert torch.allclose(got, ref, atol=1e-6)
    trap = lambda y: (y.sum(1) - (y[:, 0] + y[:, -1]) / 2) / D  # noqa: E731
    ins = hand_curve(model, x, phi, target, insert=True)
    dele = hand_curve(model, x, phi, target)
    assert torch.allclose(got, trap(ins) - trap(dele), atol=1e-5)
    # a non-target class: the curves follow the class asked for, not the prediction
    other = (target + 1) % C
    c = insertion_deletion_curves(model, x, phi, other, **kw)
    assert torch.allclose(c.deletion, hand_curve(model, x, phi, other), atol=1e-5)
    assert torch.allclose(
        c.insertion, hand_curve(model, x, phi, other, insert=True), atol=1e-5
    )


def test_aopc_positive_negative_and_accuracy():
    model, x = case()
    phi = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    target = torch.tensor([2, 1, 0, 1])
    kw = dict(score="logit")
    dele = hand_curve(model, x, phi, target)
    neg = hand_curve(model, x, phi, target, descending=False)
    pos = aopc(model, x, phi, target, mode="positive", **kw)
    assert torch.allclose(pos, (dele[:, :1] - dele).mean(1), atol=1e-5)
    assert torch.equal(pos, aopc(model, x, phi, target, **kw))
    got = aopc(model, x, phi, target, mode="negative", **kw)
    assert torch.allclose(got, (neg[:, :1] - neg).mean(1), atol=1e-5)
    # accuracy: top-1 correctness along the deletion curve, from hand-made logits
    correct = torch.zeros(x.shape[0], D + 1)
    with torch.no_grad():
        contrib = torch.einsum("cd,bd->bcd", model.w, x)  # (B, C, D)
        full = model(x)
        for i in range(x.shape[0]):
            order = torch.argsort(phi[i], descending=True)
            for k in range(D + 1):
                logits = full[i] - contrib[i][:, order[:k]].sum(-1)
                correct[i, k] = float(int(logits.argmax()) == int(target[i]))
    acc = aopc(model, x, phi, target, score="accuracy")
    assert torch.allclose(acc, (correct[:, :1] - correct).mean(1))
    with pytest.raises(ValueError, match="mode"):
        aopc(model, x, phi, target, mode="upward")
    with pytest.raises(ValueError, match="score"):
        aopc(model, x, phi, target, score="odds")


# ---------------------------------------------------------- subset metrics
def test_sensitivity_n_sweep_equals_sensitivity_n_at_its_sizes():
    model = make_model("cls")  # 16 patches
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    attr = torch.randn(2, 4, 4, generator=torch.Generator().manual_seed(1))
    res = sensitivity_n_sweep(
        model, x, attr, [1, 2], fractions=[0.1, 0.12, 0.5, 0.9], n_samples=6
    )
    assert res.n.tolist() == [2, 8, 14]  # 1.6 and 1.92 both round to 2
    assert torch.allclose(res.fractions, torch.tensor([2, 8, 14]) / 16.0)
    ref = sensitivity_n(model, x, attr, [1, 2], n=[2, 8, 14], n_samples=6)
    assert torch.equal(res.curve, ref)
    assert torch.allclose(res.mean, ref.mean(1))
    default = sensitivity_n_sweep(model, x, attr, [1, 2], n_samples=3)
    assert default.n.tolist() == [2, 3, 5, 6, 8, 10, 11, 13, 14]
    with pytest.raises(ValueError, match="fractions"):
        sensitivity_n_sweep(model, x, attr, fractions=[0.0, 0.5])


def test_faithfulness_reaches_1000_subsets():
    model, x = case(2)
    target = torch.tensor([0, 2])
    with torch.no_grad():
        phi = model.w[target] * x  # exact contributions of an additive model
    got = faithfulness_correlation(model, x, phi, target, n_samples=1000, score="logit")
    assert torch.allclose(got, torch.ones(2), atol=1e-6)
    noisy = phi + 0.5 * torch.randn(phi.shape, generator=torch.Generator())
    r = faithfulness_correlation(model, x, noisy, target, n_samples=1000)
    assert bool((r < 0.999).all())
