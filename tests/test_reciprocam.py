"""ViT-ReciproCAM (issue 29) against a direct loop written on the libraries' own
blocks: one variation at a time, masks built by hand."""

from __future__ import annotations

import pytest
import torch
from helpers import image_size, make_model, model_state

from captum_vit import ViTAdapter, ViTReciproCAM, patch_scores
from captum_vit.attr._reciprocam import mosaic_weights


def _x(b: int = 2, s: int = 32, seed: int = 3) -> torch.Tensor:
    return torch.randn(b, 3, s, s, generator=torch.Generator().manual_seed(seed))


def _hand_mask(grid, k, gaussian=True):
    """The weights of variation k placed by hand, as openvino_xai does (a padded
    grid, the 3x3 kernel written at k, the padding cut off)."""
    gh, gw = grid
    i, j = divmod(k, gw)
    padded = torch.zeros(gh + 2, gw + 2)
    if gaussian:
        padded[i : i + 3, j : j + 3] = (
            torch.tensor([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=torch.float32) / 16
        )
    else:
        padded[i + 1, j + 1] = 1.0
    return padded[1:-1, 1:-1].reshape(-1)


def test_mosaic_weights_equal_hand_placed_kernels():
    for grid in [(4, 4), (3, 5), (1, 1)]:
        for gaussian in (True, False):
            w = mosaic_weights(grid, gaussian)
            n = grid[0] * grid[1]
            assert w.shape == (n, n)
            for k in range(n):
                assert torch.equal(w[k], _hand_mask(grid, k, gaussian))
    w = mosaic_weights((4, 4))
    assert float(w[5].sum()) == 1.0  # an inner patch keeps the whole kernel
    assert float(w[0].sum()) == 9 / 16  # a corner keeps 4 of its 9 cells


def _timm_direct(model, x, target, layer, gaussian=True):
    """ViT-ReciproCAM of a timm ViT with a Python loop over variations, from
    timm's own modules (no adapter)."""
    p = model.num_prefix_tokens
    with torch.no_grad():
        z = model.norm_pre(model._pos_embed(model.patch_embed(x)))
        for blk in model.blocks[:layer]:
            z = blk(z)
        blk = model.blocks[layer]
        normed = blk.norm1(z)
        n = z.shape[1] - p
        gh = gw = int(n**0.5)
        out = torch.zeros(x.shape[0], n)
        for i in range(x.shape[0]):
            for k in range(n):
                w = torch.cat([torch.ones(p), _hand_mask((gh, gw), k, gaussian)])
                w = w[None, :, None]
                y = z[i : i + 1] * w + blk.ls1(blk.attn(normed[i : i + 1] * w))
                y = y + blk.ls2(blk.mlp(blk.norm2(y)))
                for later in model.blocks[layer + 1 :]:
                    y = later(y)
                out[i, k] = model.forward_head(model.norm(y))[0, target[i]]
    return out


@pytest.mark.parametrize("family", ["cls", "distilled", "reg_gap"])
@pytest.mark.parametrize("layer", [-1, -2, 0])
def test_equals_direct_loop_on_timm_blocks(family, layer):
    model = make_model(family, depth=3)
    x, target = _x(), [1, 3]
    before = model_state(model)
    attr = ViTReciproCAM(model, layer=layer).attribute(
        x, target=target, perturbations_per_eval=7  # batches across images
    )
    got = patch_scores(attr, model).reshape(2, -1)
    ref = _timm_direct(model, x, target, layer % 3)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert model_state(model) == before


def test_single_patch_variant_equals_direct_loop():
    model = make_model("cls", depth=3)
    x = _x()
    attr = ViTReciproCAM(model, layer=-1, gaussian=False).attribute(x, target=[0, 4])
    got = patch_scores(attr, model).reshape(2, -1)
    ref = _timm_direct(model, x, [0, 4], 2, gaussian=False)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_torchvision_equals_direct_loop():
    model = make_model("torchvision", depth=3)
    x = _x()
    got = patch_scores(ViTReciproCAM(model).attribute(x, target=2), model)
    enc = model.encoder
    with torch.no_grad():
        z = model._process_input(x)
        z = torch.cat([model.class_token.expand(2, -1, -1), z], dim=1)
        z = enc.layers[0](enc.dropout(z + enc.pos_embedding))
        blk = enc.layers[1]
        normed = blk.ln_1(z)
        ref = torch.zeros(2, 16)
        for i in range(2):
            for k in range(16):
                w = torch.cat([torch.ones(1), _hand_mask((4, 4), k)])[None, :, None]
                q = normed[i : i + 1] * w
                y = z[i : i + 1] * w + blk.self_attention(q, q, q)[0]
                y = y + blk.mlp(blk.ln_2(y))
                y = enc.ln(enc.layers[2](y))
                ref[i, k] = model.heads(y[:, 0])[0, 2]
    torch.testing.assert_close(got.reshape(2, -1), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "family", ["siglip", "eva", "beit", "hf_vit", "hf_dinov2_reg", "torchvision"]
)
def test_batch_equals_per_sample_and_chunking_does_not_matter(family):
    model = make_model(family)
    s = image_size(family)
    x = _x(3, s)
    before = model_state(model)
    method = ViTReciproCAM(model)
    attr = method.attribute(x, target=[0, 1, 2])
    single = torch.cat(
        [
            method.attribute(x[i : i + 1], target=i, perturbations_per_eval=1)
            for i in range(3)
        ]
    )
    torch.testing.assert_close(attr, single, atol=1e-5, rtol=1e-5)
    assert attr.shape == x.shape and torch.isfinite(attr).all()
    assert model_state(model) == before


def test_default_target_is_the_prediction_and_maps_are_class_specific():
    model = make_model("cls")
    x = _x()
    pred = model(x).argmax(1)
    method = ViTReciproCAM(model)
    assert torch.equal(method.attribute(x), method.attribute(x, target=pred))
    assert not torch.allclose(
        method.attribute(x, target=0), method.attribute(x, target=1)
    )


def test_no_gradient_runs_in_inference_mode_and_shows_progress(capsys):
    model = make_model("cls")
    x = _x()
    ref = ViTReciproCAM(model).attribute(x, target=1)
    with torch.inference_mode():
        assert torch.equal(ViTReciproCAM(model).attribute(x, target=1), ref)
    assert all(p.grad is None for p in model.parameters())
    ViTReciproCAM(model).attribute(x, target=1, show_progress=True)
    assert "ViT-ReciproCAM" in capsys.readouterr().err


def test_refusals_name_the_argument_or_capability():
    with pytest.raises(TypeError, match="ViTReciproCAM needs a flat token sequence"):
        ViTReciproCAM(make_model("swin"))
    with pytest.raises(TypeError, match="no classifier head"):
        ViTReciproCAM(make_model("cls", num_classes=0))
    model = make_model("cls")
    for bad in (2, -3):
        with pytest.raises(ValueError, match="^layer:"):
            ViTReciproCAM(model, layer=bad)
    with pytest.raises(TypeError, match="^gaussian:"):
        ViTReciproCAM(model, gaussian=1)
    with pytest.raises(ValueError, match="^perturbations_per_eval:"):
        ViTReciproCAM(model).attribute(_x(), target=1, perturbations_per_eval=0)
    assert ViTReciproCAM(model, layer=-1).layer == ViTAdapter(model).num_layers - 1
