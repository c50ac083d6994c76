"""Model parameter randomisation: the model comes back exactly, also on error; the
similarities against scipy and a hand-written SSIM."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import make_model, model_state
from scipy.stats import spearmanr

from captum_vit import GenAtt, RawAttention
from captum_vit.metrics import model_parameter_randomization, ssim
from captum_vit.metrics._core import generator
from captum_vit.vit import ViTAdapter


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def images(b: int = 2) -> torch.Tensor:
    return torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def numpy_ssim(x: np.ndarray, y: np.ndarray, win: int = 11, sigma: float = 1.5):
    """Gaussian-window SSIM with population statistics, valid windows, L = 1."""
    r = np.arange(win) - win // 2
    g = np.exp(-(r**2) / (2 * sigma**2))
    k = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2
    vals = []
    for i in range(x.shape[0] - win + 1):
        for j in range(x.shape[1] - win + 1):
            a, b = x[i : i + win, j : j + win], y[i : i + win, j : j + win]
            ma, mb = (k * a).sum(), (k * b).sum()
            va, vb = (k * a * a).sum() - ma**2, (k * b * b).sum() - mb**2
            cab = (k * a * b).sum() - ma * mb
            vals.append(
                (2 * ma * mb + c1)
                * (2 * cab + c2)
                / ((ma**2 + mb**2 + c1) * (va + vb + c2))
            )
    return float(np.mean(vals))


def test_ssim_equals_hand_written_ssim():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 16, 18, generator=g, dtype=torch.float64)
    y = (x + 0.3 * torch.rand(2, 16, 18, generator=g, dtype=torch.float64)) / 1.3
    got = ssim(x, y)
    for i in range(2):
        assert abs(float(got[i]) - numpy_ssim(x[i].numpy(), y[i].numpy())) < 1e-10
    assert torch.allclose(ssim(x, x), torch.ones(2, dtype=torch.float64))
    small = torch.rand(1, 6, 8, generator=g)  # window shrinks to 5
    assert (
        abs(
            float(ssim(small, small * 0.5))
            - numpy_ssim(
                small[0].double().numpy(), (small[0] * 0.5).double().numpy(), win=5
            )
        )
        < 1e-6
    )


def test_cascading_randomisation_of_raw_attention():
    model = make_model("cls")
    x = images()
    before, state = snapshot(model), model_state(model)
    res = model_parameter_randomization(model, RawAttention(model), x, seed=3)
    assert same(before, snapshot(model)) and model_state(model) == state
    assert res.layers == ["head", "blocks.1", "blocks.0", "embedding"]
    assert res.spearman.shape == res.ssim.shape == (2, 4)
    # the last block's attention does not depend on the head: unchanged at step 0
    assert torch.allclose(res.spearman[:, 0], torch.ones(2))
    assert torch.allclose(res.ssim[:, 0], torch.ones(2))
    # ... and does depend on the last block
    assert bool((res.spearman[:, 1] < 0.999).all())
    # the Spearman column equals scipy's on the maps recomputed by hand
    orig = RawAttention(model).attribute(x).sum(1).abs().flatten(1)
    with torch.no_grad():
        for step, (name, params) in enumerate(ViTAdapter(model).parameter_groups()[:2]):
            gen = generator(3, step)
            for _, p in params:
                d = p.detach().double()
                std = float(d.std()) if p.numel() > 1 else 0.0
                z = torch.randn(p.shape, generator=gen, dtype=torch.float64)
                p.copy_((float(d.mean()) + std * z).to(p.dtype))
        rand = RawAttention(model).attribute(x).sum(1).abs().flatten(1)
        for k, v in before.items():
            model.state_dict()[k].copy_(v)
    for i in range(2):
        rho = spearmanr(orig[i].numpy(), rand[i].numpy()).correlation
        assert abs(float(res.spearman[i, 1]) - rho) < 1e-5
    assert same(before, snapshot(model))


def test_independent_mode_batch_and_groups():
    model = make_model("distilled")
    x = images(3)
    target = [0, 1, 2]
    e = GenAtt(model)
    res = model_parameter_randomization(
        model, e, x, target, mode="independent", layers=["blocks.0", "head"]
    )
    assert res.layers == ["blocks.0", "head"]
    for i in range(3):
        one = model_parameter_randomization(
            model,
            e,
            x[i : i + 1],
            target[i],
            mode="independent",
            layers=["blocks.0", "head"],
        )
        assert torch.allclose(res.spearman[i], one.spearman[0], atol=1e-6)
        assert torch.allclose(res.ssim[i], one.ssim[0], atol=1e-6)
    # independent: "head" alone, with block 0 restored, equals cascading's first step
    head = model_parameter_randomization(model, e, x, target, layers=["head"])
    assert torch.allclose(res.spearman[:, 1], head.spearman[:, 0], atol=1e-6)
    with pytest.raises(ValueError, match="layers"):
        model_parameter_randomization(model, e, x, target, layers=["blocks.7"])
    with pytest.raises(ValueError, match="mode"):
        model_parameter_randomization(model, e, x, target, mode="top-down")


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_model_restored_exactly_on_error(error):
    model = make_model("reg_gap")
    x = images()
    before, state = snapshot(model), model_state(model)
    calls = []

    def explain(inputs, target=None):
        calls.append(1)
        if len(calls) == 3:  # after two groups are randomised
            model.train()  # an explainer that misbehaves on the way out
            model.head.weight.requires_grad_(False)
            raise error("boom")
        return inputs.sum(1, keepdim=True) * model.head.weight.sum()

    with pytest.raises(error):
        model_parameter_randomization(model, explain, x, seed=1)
    assert len(calls) == 3
    assert same(before, snapshot(model))
    assert model_state(model) == state
