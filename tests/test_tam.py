"""Transition Attention Maps (Yuan et al. 2021) against a direct computation: the
timm forward written out by hand, one image and one integration point at a time,
an ordinary ``.backward()`` per point, and the formulas of the authors' code."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import make_model, model_state, timm_vit_by_hand

from captum_vit import TransitionAttentionMaps, patch_scores
from captum_vit.vit import tokens_to_pixels


def readout(family: str, t: int) -> torch.Tensor:
    """The head's readout row over the T tokens, written out per family."""
    w = torch.zeros(t)
    if family == "cls":
        w[0] = 1.0
    elif family == "distilled":  # eval mode: the mean of the two heads
        w[:2] = 0.5
    else:  # reg_gap: the mean of the patch tokens (4 registers + no CLS first)
        w[4:] = 1.0 / (t - 4)
    return w


def integrated_last_gradient(model, image, target, steps):
    """(heads, T, T) mean over alpha in linspace(0, 1, steps) of the gradient of
    the target logit w.r.t. the last attention, at ``alpha * image``."""
    total = 0.0
    for alpha in np.linspace(0, 1, steps):
        logits, atts, _, _ = timm_vit_by_hand(model, image[None] * alpha)
        logits[0, target].backward()
        total = total + atts[-1].grad[0]
    model.zero_grad(set_to_none=True)
    return total / steps


def tam_by_hand(family, model, image, target, start, steps):
    with torch.no_grad():
        _, atts, _, _ = timm_vit_by_hand(model, image[None])
    atts = [a[0].mean(dim=0) for a in atts]  # heads averaged, (T, T)
    w = readout(family, atts[0].shape[0])
    state = w @ atts[-1]
    for a in reversed(atts[start:-1]):
        state = state + state @ a
    g = integrated_last_gradient(model, image, target, steps)
    weight = w @ g.clamp(min=0).mean(dim=0)
    p = {"cls": 1, "distilled": 2, "reg_gap": 4}[family]
    return (state * weight)[p:]


@pytest.mark.parametrize(
    "family,start,steps", [("cls", 1, 3), ("distilled", 0, 2), ("reg_gap", 2, 1)]
)
def test_tam_equals_direct_computation(family, start, steps):
    model = make_model(family, depth=3)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    target = [1, 4, 0]
    before = model_state(model)
    tam = TransitionAttentionMaps(model, start_layer=start, steps=steps)
    got = patch_scores(tam.attribute(x, target=target), model).flatten(1)
    assert model_state(model) == before
    for i in range(3):
        ref = tam_by_hand(family, model, x[i], target[i], start, steps)
        assert torch.allclose(got[i], ref, rtol=1e-4, atol=1e-7), (i, got[i], ref)
    assert got.abs().sum() > 0


def test_tam_predicted_class_batch_chunks_and_patch_constant_maps():
    model = make_model("cls", depth=3)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    tam = TransitionAttentionMaps(model, start_layer=0, steps=4)
    attr = tam.attribute(x)  # the predicted class
    pred = model(x).argmax(dim=1)
    assert torch.allclose(attr, tam.attribute(x, target=pred))
    # per sample == batch, whatever the number of scaled images per pass
    for k in range(4):
        one = tam.attribute(x[k : k + 1], target=int(pred[k]), internal_batch_size=1)
        assert torch.allclose(one[0], attr[k], rtol=1e-5, atol=1e-8)
    # patch-constant: the pixels are the patch scores spread back
    grid = patch_scores(attr, model)
    assert torch.equal(tokens_to_pixels(grid.flatten(1), (4, 4), x), attr)
    assert (attr >= 0).all()
    # a tuple in, a tuple out (Captum)
    (tup,) = tam.attribute((x,), target=pred)
    assert torch.equal(tup, attr)


def test_tam_start_layer_default_is_the_authors_4_within_the_model():
    assert TransitionAttentionMaps(make_model("cls", depth=6)).start_layer == 4
    assert TransitionAttentionMaps(make_model("cls", depth=2)).start_layer == 1
    assert TransitionAttentionMaps(make_model("cls", depth=2)).steps == 20


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"steps": 0}, "steps"),
        ({"steps": -3}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"start_layer": 2}, "start_layer"),  # the model has 2 blocks
        ({"start_layer": -1}, "start_layer"),
    ],
)
def test_tam_refuses_bad_settings_naming_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name}:"):
        TransitionAttentionMaps(make_model("cls"), **kwargs)


def test_tam_refuses_bad_target_and_models_without_attention_or_head():
    model = make_model("cls")
    x = torch.randn(2, 3, 32, 32)
    before = model_state(model)
    tam = TransitionAttentionMaps(model, steps=2)
    with pytest.raises(ValueError, match="target"):
        tam.attribute(x, target=[1, 5])  # 5 classes
    with pytest.raises(ValueError, match="^internal_batch_size:"):
        tam.attribute(x, target=1, internal_batch_size=0)
    assert model_state(model) == before
    with pytest.raises(TypeError, match="needs recorded attention maps"):
        TransitionAttentionMaps(make_model("swin"))
    with pytest.raises(TypeError, match="classifier head"):
        TransitionAttentionMaps(make_model("cls", num_classes=0))
