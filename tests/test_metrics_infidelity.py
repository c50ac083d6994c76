"""Infidelity (Yeh et al. 2019) on the patch grid: equal to a direct call of Captum's
``infidelity`` written in pixel space with the same perturbations, hand-computed on
a linear model, per-sample equal to batch, and its bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from captum.metrics import infidelity as captum_infidelity
from helpers import make_model

from captum_vit.metrics import infidelity
from captum_vit.metrics._infidelity import perturbation_bank
from captum_vit.vit import TokenMask

pytestmark = pytest.mark.usefixtures("one_thread")

S = 6  # perturbations per example


def _pixels(bank_rows: torch.Tensor, grid, patch, channels: int) -> torch.Tensor:
    """(m, F) patch values as (m, C, H, W) pixels (every channel of the patch)."""
    gh, gw = grid
    m = bank_rows.shape[0]
    p = bank_rows.view(m, 1, gh, gw)
    p = p.repeat_interleave(patch, dim=2).repeat_interleave(patch, dim=3)
    return p.expand(m, channels, gh * patch, gw * patch)


@pytest.fixture(scope="module")
def vit():
    return make_model("cls")  # 32 px, patch 8: a 4 x 4 grid


def _data(seed=0, b=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 3, 32, 32, generator=g)
    attr = torch.randn(b, 1, 32, 32, generator=g)
    return x, attr


@pytest.mark.parametrize("normalize", [True, False])
def test_square_equals_captum_in_pixel_space(vit, normalize):
    """Square removal with a black (zero) baseline: Captum's infidelity on a
    pixel-space presence mask, the model run directly."""
    x, attr = _data()
    target = torch.tensor([0, 3, 1])
    bank = perturbation_bank("square", 16, S, grid=(4, 4), square_size=2, seed=5)

    def perturb(m):  # m: (B*S, 3, 32, 32) presence, each example repeated S times
        i = _pixels(bank[torch.arange(m.shape[0]) % S], (4, 4), 8, 3)
        return i, m - i

    def forward(m):
        b = m.shape[0]
        return torch.softmax(vit(x.repeat_interleave(b // x.shape[0], 0) * m), -1)

    want = captum_infidelity(
        forward,
        perturb,
        torch.ones_like(x),
        attr.expand_as(x).contiguous(),
        target=target,
        n_perturb_samples=S,
        normalize=normalize,
    )
    got = infidelity(
        vit,
        x,
        attr,
        target,
        perturbation="square",
        square_size=2,
        n_perturb_samples=S,
        removal="black",
        normalize=normalize,
        seed=5,
        max_examples_per_batch=4,
    )
    torch.testing.assert_close(got, want.float(), rtol=1e-4, atol=1e-7)


def test_square_token_removal_equals_captum_with_tokenmask(vit):
    x, attr = _data(1)
    target = torch.tensor([2, 2, 4])
    bank = perturbation_bank("square", 16, S, grid=(4, 4), seed=9)  # default side 1
    assert torch.equal(bank.sum(1), torch.ones(S))
    mask = TokenMask(vit, mode="drop")

    def perturb(z):  # z: (B*S, 16) presence of the patches
        i = bank[torch.arange(z.shape[0]) % S]
        return i, z - i

    def forward(z):
        xs = x.repeat_interleave(z.shape[0] // x.shape[0], 0)
        return torch.softmax(mask(xs, z > 0.5), -1)

    phi = attr.view(3, 1, 4, 8, 4, 8).sum(dim=(1, 3, 5)).reshape(3, 16) * 3
    want = captum_infidelity(
        forward,
        perturb,
        torch.ones(3, 16),
        phi,
        target=target,
        n_perturb_samples=S,
        normalize=True,
    )
    got = infidelity(vit, x, attr, target, n_perturb_samples=S, seed=9)
    torch.testing.assert_close(got, want.float(), rtol=1e-4, atol=1e-7)


def test_noise_equals_captum_in_pixel_space(vit):
    x, attr = _data(2)
    target = torch.tensor([1, 0, 4])
    bank = perturbation_bank("noise", 16, S, noise_std=0.3, seed=2)

    def perturb(xs):
        i = _pixels(bank[torch.arange(xs.shape[0]) % S], (4, 4), 8, 3)
        return i, xs - i

    want = captum_infidelity(
        lambda xs: torch.softmax(vit(xs), -1),
        perturb,
        x,
        attr.expand_as(x).contiguous(),
        target=target,
        n_perturb_samples=S,
        normalize=False,
    )
    got = infidelity(
        vit,
        x,
        attr,
        target,
        perturbation="noise",
        noise_std=0.3,
        n_perturb_samples=S,
        normalize=False,
        seed=2,
    )
    torch.testing.assert_close(got, want.float(), rtol=1e-4, atol=1e-7)


class _Linear(nn.Module):
    """logits = [w . x, 0]: a model whose output changes are known by hand."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x):
        s = (x * self.w).flatten(1).sum(1)
        return torch.stack([s, torch.zeros_like(s)], dim=1)


def test_linear_model_by_hand():
    """On a linear model with logit scores the gradient is exact for patch noise
    (infidelity 0, and 0 after any rescaling), and a zero map's infidelity is the
    mean squared output change over the drawn shifts."""
    torch.manual_seed(0)
    w = torch.randn(1, 1, 4, 4)
    model = _Linear(w)
    x = torch.randn(2, 1, 4, 4)
    fm = (torch.arange(4)[:, None] // 2 * 2 + torch.arange(4)[None, :] // 2)[None]
    kw = dict(feature_mask=fm, score="logit", removal="black", normalize=False)
    noise = infidelity(model, x, w.expand(2, 1, 4, 4), 0, perturbation="noise", **kw)
    assert torch.allclose(noise, torch.zeros(2), atol=1e-10)
    kw["normalize"] = True
    scaled = infidelity(
        model, x, 5 * w.expand(2, 1, 4, 4), 0, perturbation="noise", **kw
    )
    assert torch.allclose(scaled, torch.zeros(2), atol=1e-6)  # float32 expansion
    kw["normalize"] = False
    # a zero map under noise: E[(sum_j I_j w_j)^2] over the same draws, by hand
    bank = perturbation_bank("noise", 4, 16, seed=0)  # (16, 4) per-patch shifts
    wj = torch.stack([w.view(4, 4)[fm[0] == j].sum() for j in range(4)])
    want = ((bank * wj).sum(1) ** 2).mean()
    zero = infidelity(model, x, torch.zeros(2, 1, 4, 4), 0, perturbation="noise", **kw)
    torch.testing.assert_close(zero, want.expand(2).float(), rtol=1e-5, atol=1e-7)


def test_square_covering_the_grid_by_hand(vit):
    """A 4 x 4 square on the 4 x 4 grid removes everything: the value is
    (sum(phi) - (p(x) - p(black)))^2 for every draw."""
    x, attr = _data(3, b=2)
    target = torch.tensor([0, 1])
    got = infidelity(
        vit, x, attr, target, square_size=4, removal="black", normalize=False
    )
    p = torch.softmax(vit(x), -1)[torch.arange(2), target]
    p0 = torch.softmax(vit(torch.zeros_like(x)), -1)[torch.arange(2), target]
    want = (attr.flatten(1).sum(1) * 3 - (p - p0)) ** 2
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)


def test_per_sample_equals_batch_and_seeded(vit):
    x, attr = _data(4)
    kw = dict(n_perturb_samples=5, seed=3, max_examples_per_batch=7)
    batch = infidelity(vit, x, attr, [1, 2, 3], **kw)
    for i in range(3):
        one = infidelity(vit, x[i : i + 1], attr[i : i + 1], [[1, 2, 3][i]], **kw)
        torch.testing.assert_close(one, batch[i : i + 1], rtol=1e-4, atol=1e-7)
    assert torch.equal(batch, infidelity(vit, x, attr, [1, 2, 3], **kw))
    other = infidelity(vit, x, attr, [1, 2, 3], n_perturb_samples=5, seed=4)
    assert not torch.equal(batch, other)
    # normalised: invariant to the attributions' scale
    torch.testing.assert_close(
        infidelity(vit, x, 7.0 * attr, [1, 2, 3], **kw), batch, rtol=1e-4, atol=1e-7
    )


def test_bad_input(vit):
    x, attr = _data(5, b=1)
    with pytest.raises(ValueError, match="perturbation"):
        infidelity(vit, x, attr, perturbation="squares")
    with pytest.raises(ValueError, match="n_perturb_samples"):
        infidelity(vit, x, attr, n_perturb_samples=0)
    with pytest.raises(ValueError, match="square_size"):
        infidelity(vit, x, attr, square_size=5)
    with pytest.raises(ValueError, match="noise_std"):
        infidelity(vit, x, attr, perturbation="noise", noise_std=0.0)
    with pytest.raises(TypeError, match="normalize"):
        infidelity(vit, x, attr, normalize="yes")
    fm = torch.zeros(1, 1, 32, 32, dtype=torch.long)
    fm[..., 16:] = 1
    with pytest.raises(ValueError, match="perturbation: 'square'"):
        infidelity(vit, x, attr, feature_mask=fm, removal="black")
    with pytest.raises(ValueError, match="attributions"):
        infidelity(vit, x, torch.full_like(attr, float("nan")))
