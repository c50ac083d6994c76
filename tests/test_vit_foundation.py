"""ViTAdapter, attention recording and TokenMask against independent computations."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn
from helpers import image_size, make_model, model_state, reduced_forward

from captum_vit import TokenMask, ViTAdapter, patch_scores
from captum_vit.vit import is_supported_vit, record_attention, tokens_to_pixels


def _images(family: str, b: int = 3, seed: int = 1) -> torch.Tensor:
    s = image_size(family)
    return torch.randn(b, 3, s, s, generator=torch.Generator().manual_seed(seed))


def physically_reduced(model: nn.Module, image: torch.Tensor, kept: torch.Tensor):
    """Oracle: one image with held-out patch tokens removed from the sequence, written
    against timm directly (see helpers.reduced_forward)."""
    return reduced_forward(model, image, kept)


def test_adapter_reproduces_model(family):
    model = make_model(family)
    adapter = ViTAdapter(model)
    x = _images(family)
    with torch.no_grad():
        out = adapter.head(adapter.run_blocks(adapter.embed(x)))
        ref = model(x)
    assert torch.allclose(out, ref, atol=1e-5)
    # running the blocks in two pieces is the same as in one
    with torch.no_grad():
        mid = adapter.run_blocks(adapter.embed(x), 0, 1)
        out2 = adapter.head(adapter.run_blocks(mid, 1))
    assert torch.allclose(out2, ref, atol=1e-5)


def test_adapter_geometry_comes_from_model():
    model = make_model("reg_gap")
    a = ViTAdapter(model)
    assert (a.num_prefix_tokens, a.grid_size, a.num_patches, a.pool) == (
        4,
        (4, 4),
        16,
        "avg",
    )
    d = ViTAdapter(make_model("distilled", img_size=48))
    assert (d.num_prefix_tokens, d.grid_size, d.num_layers) == (2, (6, 6), 2)
    e = ViTAdapter(make_model("eva"))
    assert (e.num_prefix_tokens, e.grid_size, e.patch_size) == (1, (4, 4), (14, 14))


@pytest.mark.parametrize("mode", ["attention", "drop"])
def test_token_mask_equals_physical_removal(family, mode):
    model = make_model(family)
    x = _images(family, b=4)
    n = ViTAdapter(model).num_patches
    g = torch.Generator().manual_seed(0)
    keep = torch.rand(4, n, generator=g) < 0.5
    keep[0] = True  # everything kept
    keep[1, :] = False
    keep[1, 3] = True  # a single token
    with torch.no_grad():
        out = TokenMask(model, mode=mode)(x, keep)
        ref = torch.stack([physically_reduced(model, x[i], keep[i]) for i in range(4)])
        full = model(x)
    assert torch.allclose(out, ref, atol=1e-4), (out - ref).abs().max()
    assert torch.allclose(out[0], full[0], atol=1e-5)
    # the context-manager form and the adapter's functional form agree
    with torch.no_grad(), TokenMask(model, mode=mode).keep(keep):
        out_cm = model(x)
    assert torch.allclose(out_cm, out, atol=1e-6)
    with torch.no_grad():
        out_fn = ViTAdapter(model).forward(x, keep=keep)
    assert torch.allclose(out_fn, ref, atol=1e-4)


def test_token_mask_equal_counts_no_padding():
    model = make_model("cls")
    x = _images("cls", b=3)
    keep = torch.zeros(3, 16, dtype=torch.bool)
    for i, idx in enumerate([[0, 1, 2, 3], [5, 9, 11, 15], [3, 4, 8, 12]]):
        keep[i, idx] = True
    with torch.no_grad():
        out = TokenMask(model, mode="drop")(x, keep)
        ref = torch.stack([physically_reduced(model, x[i], keep[i]) for i in range(3)])
    assert torch.allclose(out, ref, atol=1e-5)


def test_token_mask_gradients_flow_in_attention_mode():
    model = make_model("cls")
    x = _images("cls", b=2)
    keep = torch.rand(2, 16, generator=torch.Generator().manual_seed(3)) < 0.6
    out = TokenMask(model)(x, keep)
    out.sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    model.zero_grad(set_to_none=True)


def test_dynamic_img_size():
    model = make_model("cls", dynamic_img_size=True)
    adapter = ViTAdapter(model)
    x = torch.randn(2, 3, 48, 40)
    assert adapter.check_images(x) == (6, 5)
    keep = torch.rand(2, 30, generator=torch.Generator().manual_seed(0)) < 0.5
    with torch.no_grad():
        out = TokenMask(model, "drop")(x, keep)
        ref = torch.stack([physically_reduced(model, x[i], keep[i]) for i in range(2)])
        assert torch.allclose(adapter.forward(x), model(x), atol=1e-5)
    assert torch.allclose(out, ref, atol=1e-4)


def test_record_attention_matches_manual_softmax_and_restores_flags():
    model = make_model("cls")
    attn0 = model.blocks[0].attn
    assert attn0.fused_attn in (True, False)
    flags = [blk.attn.fused_attn for blk in model.blocks]
    for blk in model.blocks:
        blk.attn.fused_attn = True
    x = _images("cls", b=2)
    with torch.no_grad(), record_attention(model) as rec:
        model(x)
        assert all(not blk.attn.fused_attn for blk in model.blocks)
    assert all(blk.attn.fused_attn for blk in model.blocks)
    # manual block-0 attention from the weights
    with torch.no_grad():
        h = model.blocks[0].norm1(ViTAdapter(model).embed(x))
        b, t, d = h.shape
        qkv = attn0.qkv(h).reshape(b, t, 3, attn0.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k = qkv[0], qkv[1]
        ref = (q @ k.transpose(-2, -1) * attn0.scale).softmax(-1)
    assert torch.allclose(rec.attentions[0], ref, atol=1e-6)
    assert rec.attentions[1].shape == (2, 2, 17, 17)
    for blk, f in zip(model.blocks, flags):
        blk.attn.fused_attn = f


def test_attention_gradients_indexed_by_layer():
    model = make_model("cls", depth=3)
    x = _images("cls", b=2)
    with record_attention(model, with_grad=True) as rec:
        out = model(x.requires_grad_(True))
        out[:, 1].sum().backward()
    hooked = [g.clone() for g in rec.gradients]
    with record_attention(model) as rec2:
        out = model(x)
        grads = rec2.grad(out[:, 1].sum())
    for layer in range(3):
        assert torch.allclose(hooked[layer], grads[layer], atol=1e-6)
        assert grads[layer].shape == rec2.attentions[layer].shape
    model.zero_grad(set_to_none=True)


def test_model_unchanged_after_calls_and_errors(family):
    model = make_model(family)
    model.blocks[0].attn.fused_attn = True
    x = _images(family, b=2)
    before = model_state(model)
    keep = torch.ones(2, ViTAdapter(model).num_patches, dtype=torch.bool)
    TokenMask(model, "drop")(x, keep)
    with record_attention(model):
        model(x)
    assert model_state(model) == before

    def boom(*args):
        raise RuntimeError("boom")

    h = model.blocks[-1].register_forward_hook(boom)
    before = model_state(model)
    for mode in ("attention", "drop"):
        with pytest.raises(RuntimeError, match="boom"):
            TokenMask(model, mode)(x, keep)
    with pytest.raises(RuntimeError, match="boom"):
        with record_attention(model):
            model(x)
    assert model_state(model) == before
    h.remove()


def test_unsupported_models_raise_type_error():
    with pytest.raises(TypeError, match="VisionTransformer"):
        ViTAdapter(nn.Linear(3, 3))
    resnet = timm.create_model("resnet10t", pretrained=False, num_classes=3)
    with pytest.raises(TypeError, match="supported"):
        TokenMask(resnet)
    no_pool = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        depth=1,
        embed_dim=32,
        num_heads=2,
        global_pool="",
    )
    with pytest.raises(TypeError, match="global_pool=''"):
        ViTAdapter(no_pool)
    assert not is_supported_vit(no_pool)
    assert is_supported_vit(make_model("eva"))


def test_bad_image_size_and_keep_masks():
    model = make_model("cls")
    with pytest.raises(ValueError, match="images: this model was built for 32x32"):
        TokenMask(model)(torch.randn(1, 3, 48, 48), torch.ones(1, 36, dtype=torch.bool))
    x = _images("cls", b=2)
    with pytest.raises(ValueError, match=r"keep: expected shape .*\(2, 16\)"):
        TokenMask(model)(x, torch.ones(2, 15, dtype=torch.bool))
    with pytest.raises(TypeError, match="keep: expected a boolean"):
        TokenMask(model)(x, torch.ones(2, 16))
    with pytest.raises(ValueError, match="mode"):
        TokenMask(model, mode="zero")
    with pytest.raises(ValueError, match="inputs"):
        ViTAdapter(model).check_images(torch.randn(3, 32, 32))


def test_patch_scores_round_trip():
    model = make_model("cls")
    x = _images("cls", b=2)
    scores = torch.randn(2, 16)
    pix = tokens_to_pixels(scores, (4, 4), x)
    assert pix.shape == x.shape
    assert torch.equal(patch_scores(pix, model), scores.reshape(2, 4, 4))
    assert torch.equal(patch_scores((pix,), model), scores.reshape(2, 4, 4))
    # pixel (r, c) carries the score of patch (r // 8, c // 8)
    assert pix[1, 2, 13, 30] == scores[1, 1 * 4 + 3]


def test_drop_mode_with_no_patch_kept_matches_attention_mode(family):
    model = make_model(family)
    x = _images(family, b=2)
    keep = torch.zeros(2, ViTAdapter(model).num_patches, dtype=torch.bool)
    if ViTAdapter(model).num_prefix_tokens == 0:  # nothing left to attend to
        for mode in ("drop", "attention"):
            with pytest.raises(ValueError, match="keep: every sample must keep"):
                TokenMask(model, mode)(x, keep)
        return
    with torch.no_grad():
        dropped = TokenMask(model, "drop")(x, keep)
        masked = TokenMask(model, "attention")(x, keep)
    assert torch.isfinite(dropped).all()
    assert torch.allclose(dropped, masked, atol=1e-5)
