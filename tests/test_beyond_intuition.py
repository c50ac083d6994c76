"""Beyond Intuition (Chen et al. 2023) against a direct computation: the timm
forward written out by hand, one image and one integration point at a time, an
ordinary ``.backward()`` per point, and the formulas of the authors' code."""

from __future__ import annotations

import pytest
import torch
from helpers import make_model, model_state, timm_vit_by_hand
from test_tam import integrated_last_gradient, readout

from captum_vit import BeyondIntuition, patch_scores
from captum_vit.vit import tokens_to_pixels


def bi_by_hand(family, mode, model, image, target, start, steps):
    logits, atts, inputs, projected = timm_vit_by_hand(model, image[None])
    logits[0, target].backward()
    grads = [a.grad[0] for a in atts]
    model.zero_grad(set_to_none=True)
    atts = [a[0].detach() for a in atts]  # (heads, T, T)
    t = atts[0].shape[-1]
    r = torch.eye(t)
    for layer in range(start, len(atts)):
        a = atts[layer]
        if mode == "head":
            # I_h = mean_ij |(A_h^T grad A_h)_ij|, normalised over the heads
            imp = torch.stack(
                [(a[h].T @ grads[layer][h]).abs().mean() for h in range(a.shape[0])]
            )
            c = sum(imp[h] / imp.sum() * a[h] for h in range(a.shape[0]))
        else:
            z, vp = inputs[layer][0].detach(), projected[layer][0].detach()
            m = torch.diag(vp.norm(dim=-1) / z.norm(dim=-1))
            c = a.mean(dim=0) @ m
        r = r + c @ r
    if mode == "token":
        r = r.abs()
    feedback = integrated_last_gradient(model, image, target, steps)
    feedback = feedback.clamp(min=0).mean(dim=0)
    p = {"cls": 1, "distilled": 2, "reg_gap": 4}[family]
    return (readout(family, t) @ (feedback * r))[p:]


@pytest.mark.parametrize(
    "family,mode,start,steps",
    [
        ("cls", "head", 1, 3),
        ("cls", "token", 0, 2),
        ("distilled", "head", 0, 2),
        ("reg_gap", "token", 1, 1),
    ],
)
def test_beyond_intuition_equals_direct_computation(family, mode, start, steps):
    model = make_model(family, depth=3)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    target = [1, 4, 0]
    before = model_state(model)
    bi = BeyondIntuition(model, mode=mode, start_layer=start, steps=steps)
    got = patch_scores(bi.attribute(x, target=target), model).flatten(1)
    assert model_state(model) == before
    for i in range(3):
        ref = bi_by_hand(family, mode, model, x[i], target[i], start, steps)
        assert torch.allclose(got[i], ref, rtol=1e-4, atol=1e-7), (i, got[i], ref)
    assert got.abs().sum() > 0


@pytest.mark.parametrize("mode", ["head", "token"])
def test_beyond_intuition_per_sample_equals_batch(mode):
    model = make_model("cls", depth=3)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    bi = BeyondIntuition(model, mode=mode, start_layer=0, steps=3)
    attr = bi.attribute(x)  # the predicted class
    pred = model(x).argmax(dim=1)
    assert torch.allclose(attr, bi.attribute(x, target=pred))
    for k in range(4):
        one = bi.attribute(x[k : k + 1], target=int(pred[k]), internal_batch_size=1)
        assert torch.allclose(one[0], attr[k], rtol=1e-5, atol=1e-8)
    grid = patch_scores(attr, model)
    assert torch.equal(tokens_to_pixels(grid.flatten(1), (4, 4), x), attr)
    assert (attr >= 0).all()


def test_beyond_intuition_defaults_are_the_authors():
    deep = make_model("cls", depth=6)
    assert BeyondIntuition(deep).mode == "head"
    assert BeyondIntuition(deep).start_layer == 3  # their start_layer=4, from 1
    assert BeyondIntuition(deep, mode="token").start_layer == 5  # their 6
    assert BeyondIntuition(make_model("cls")).start_layer == 1  # 2 blocks
    assert BeyondIntuition(deep).steps == 20


@pytest.mark.parametrize(
    "kwargs,name,error",
    [
        ({"steps": 0}, "steps", ValueError),
        ({"steps": float("nan")}, "steps", ValueError),
        ({"start_layer": 2}, "start_layer", ValueError),  # the model has 2 blocks
        ({"start_layer": -1}, "start_layer", ValueError),
        ({"mode": "tokens"}, "mode", ValueError),
    ],
)
def test_beyond_intuition_refuses_bad_settings_naming_the_argument(kwargs, name, error):
    with pytest.raises(error, match=f"^{name}:"):
        BeyondIntuition(make_model("cls"), **kwargs)


def test_beyond_intuition_capabilities_and_target():
    model = make_model("cls")
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match="target"):
        BeyondIntuition(model, steps=2).attribute(x, target=-1)
    eva = make_model("eva")
    with pytest.raises(TypeError, match="needs projected attention values") as err:
        BeyondIntuition(eva, mode="token")
    assert "timm Eva" in str(err.value) or "Eva" in str(err.value)
    x56 = torch.randn(1, 3, 56, 56)
    assert BeyondIntuition(eva, steps=2).attribute(x56, target=1).shape == x56.shape
    with pytest.raises(TypeError, match="needs recorded attention maps"):
        BeyondIntuition(make_model("swin"), mode="token")
    with pytest.raises(TypeError, match="classifier head"):
        BeyondIntuition(make_model("cls", num_classes=0))


def test_head_weights_guard_vanishing_gradients():
    from captum_vit.attr._beyond_intuition import head_weights

    a = torch.rand(2, 3, 5, 5).softmax(dim=-1)
    g = torch.zeros(2, 3, 5, 5)
    g[1, 0, 0, 1] = 1.0
    w = head_weights(a, g)
    assert torch.equal(w[0], torch.full((3,), 1 / 3))  # no gradient: the head mean
    assert torch.allclose(w[1], torch.tensor([1.0, 0.0, 0.0]))
