"""OpenCLIP's image tower (``open_clip.transformer.VisionTransformer``).

Every oracle is written against open_clip's own modules (``_embeds``, the
``transformer``, ``_pool``, ``proj``, each block's ``nn.MultiheadAttention`` with
``need_weights=True``), never through captum_vit's adapters.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import model_state

from captum_vit import (
    AttentionRollout,
    GenAtt,
    RawAttention,
    TokenMask,
    TransformerInputSampling,
    ViTAdapter,
    ViTGradCAM,
    patch_scores,
)
from captum_vit.vit import LRP_RULES, PREFIX_TOKENS, record_attention

open_clip = pytest.importorskip("open_clip")


def tower(seed: int = 0, **kw) -> torch.nn.Module:
    """A tiny random-weight OpenCLIP image tower (32 px, patch 8, 4 x 4 grid)."""
    from open_clip.transformer import VisionTransformer

    torch.manual_seed(seed)
    cfg = dict(image_size=32, patch_size=8, width=32, layers=2, heads=2, mlp_ratio=2.0)
    cfg.update(output_dim=16, **kw)
    return VisionTransformer(**cfg).eval()


def _x(b: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def lib_reduced(m, image: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """Embedding of one image with the held-out patch tokens physically removed."""
    x = m._embeds(image[None])
    idx = torch.nonzero(kept).flatten()
    x = torch.cat([x[:, :1], x[:, 1:][:, idx]], dim=1)
    pooled, _ = m._pool(m.transformer(x))
    return (pooled @ m.proj)[0]


def lib_attentions(m, x: torch.Tensor):
    """Every block's (B, heads, T, T) attention and the tower's output.

    The attention is written out from each nn.MultiheadAttention's parameters (torch
    returns its weights as a view outside the graph) and checked against the weights
    the module returns with ``need_weights=True``.
    """
    h, atts = m._embeds(x), []
    for blk in m.transformer.resblocks:
        y = blk.ln_1(h)
        mha = blk.attn
        _, w = mha(y, y, y, need_weights=True, average_attn_weights=False)
        b, t, e = y.shape
        heads = mha.num_heads
        q, k, v = torch.nn.functional.linear(
            y, mha.in_proj_weight, mha.in_proj_bias
        ).chunk(3, -1)
        q, k, v = (z.reshape(b, t, heads, -1).transpose(1, 2) for z in (q, k, v))
        a = (q @ k.transpose(-2, -1) / (e // heads) ** 0.5).softmax(-1)
        assert torch.allclose(a, w, atol=1e-6)
        atts.append(a)
        out = mha.out_proj((a @ v).transpose(1, 2).reshape(b, t, e))
        h = h + blk.ls_1(out)
        h = h + blk.ls_2(blk.mlp(blk.ln_2(h)))
    pooled, _ = m._pool(h)
    return atts, pooled @ m.proj


@pytest.mark.parametrize(
    "kw", [dict(), dict(pool_type="avg"), dict(final_ln_after_pool=True)]
)
def test_adapter_reproduces_the_tower(kw):
    m = tower(**kw)
    a = ViTAdapter(m)
    assert a.family == "open_clip_vit"
    assert (a.grid_size, a.patch_size, a.num_prefix_tokens, a.embed_dim) == (
        (4, 4),
        (8, 8),
        1,
        32,
    )
    assert a.pool == ("avg" if kw.get("pool_type") == "avg" else "token")
    x = _x()
    with torch.no_grad():
        ref = m(x)
        out = a.head(a.run_blocks(a.embed(x)))
        two = a.head(a.run_blocks(a.run_blocks(a.embed(x), 0, 1), 1))
        _, hand = lib_attentions(m, x)
    assert ref.shape == (3, 16)
    assert torch.allclose(out, ref, atol=1e-5) and torch.allclose(two, ref, atol=1e-5)
    assert torch.allclose(hand, ref, atol=1e-5)


def test_the_tower_of_a_clip_model_is_served_and_headless():
    torch.manual_seed(0)
    vision = dict(image_size=32, patch_size=8, width=32, layers=2, head_width=16)
    text = dict(context_length=8, vocab_size=50, width=32, heads=2, layers=1)
    clip = open_clip.CLIP(embed_dim=16, vision_cfg=vision, text_cfg=text).eval()
    a = ViTAdapter(clip.visual)
    assert a.family_name == "OpenCLIP VisionTransformer" and not a.has_head
    assert PREFIX_TOKENS in a.capabilities and not a.has(LRP_RULES)
    assert a.input_normalization is None
    open_clip.model.set_model_preprocess_cfg(
        clip, dict(size=32, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6))
    )
    assert a.input_normalization == ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    x = _x(2)
    with torch.no_grad():
        assert torch.allclose(a.logits(x), clip.encode_image(x), atol=1e-6)
    for call in (
        lambda: GenAtt(clip.visual),
        lambda: ViTGradCAM(clip.visual),
        lambda: TransformerInputSampling(clip.visual),
    ):
        with pytest.raises(TypeError, match="ZeroShotClassifier"):
            call()
    with pytest.raises(TypeError, match="OpenCLIP VisionTransformer"):
        from captum_vit import TransformerAttribution

        TransformerAttribution(clip.visual)


@pytest.mark.parametrize("pool", ["tok", "avg"])
@pytest.mark.parametrize("mode", ["attention", "drop"])
def test_token_mask_equals_physically_reduced_sequence(pool, mode):
    m = tower(pool_type=pool)
    x = _x(b=4)
    keep = torch.rand(4, 16, generator=torch.Generator().manual_seed(0)) < 0.5
    keep[0] = True
    keep[1] = False
    keep[1, 3] = True
    keep[3] = False  # the CLS token only
    before = model_state(m)
    with torch.no_grad():
        out = TokenMask(m, mode)(x, keep)
        ref = torch.stack([lib_reduced(m, x[i], keep[i]) for i in range(4)])
        with TokenMask(m, mode).keep(keep):
            cm = m(x)
        single = torch.cat(
            [TokenMask(m, mode)(x[i : i + 1], keep[i : i + 1]) for i in range(4)]
        )
    if pool == "avg":  # open_clip's mean over no patch is NaN; TokenMask pools to 0
        assert torch.isnan(ref[3]).all() and torch.isfinite(out[3]).all()
        out, ref, cm, single = out[:3], ref[:3], cm[:3], single[:3]
    assert torch.allclose(out, ref, atol=1e-5), (out - ref).abs().max()
    assert torch.allclose(cm, out, atol=1e-6)
    assert torch.allclose(single, out, atol=1e-5)
    assert model_state(m) == before


def test_recorded_attention_and_its_gradient_equal_the_library():
    m = tower(layers=3)
    x = _x()
    atts, feats = lib_attentions(m, x)
    for a in atts:
        a.retain_grad()
    feats.square().sum().backward()
    grads = [a.grad for a in atts]
    m.zero_grad(set_to_none=True)
    before = model_state(m)
    with record_attention(m, with_grad=True) as rec:
        out = ViTAdapter(m).logits(x)
        got = rec.grad(out.square().sum())
    assert torch.allclose(out, feats, atol=1e-5)
    for a, r, g, rg in zip(rec.attentions, atts, got, grads):
        assert torch.allclose(a, r, atol=1e-6)
        assert torch.allclose(g, rg, atol=1e-5, rtol=1e-4)
    assert model_state(m) == before


def test_rollout_and_raw_attention_equal_products_of_library_attentions():
    m = tower(layers=3)
    x = _x()
    with torch.no_grad():
        atts, _ = lib_attentions(m, x)
    ro = AttentionRollout(m, discard_ratio=0.3, start_layer=1)
    grid = patch_scores(ro.attribute(x), m).reshape(3, -1)
    raw = patch_scores(RawAttention(m).attribute(x), m).reshape(3, -1)
    for b in range(3):
        r = None
        for a in atts[1:]:
            a = a[b].double().numpy().mean(0)
            sub = a[1:, 1:].reshape(-1).copy()
            sub[np.argsort(sub, kind="stable")[: int(0.3 * sub.size)]] = 0.0
            a[1:, 1:] = sub.reshape(a[1:, 1:].shape)
            a = a + np.eye(a.shape[0])
            a = a / a.sum(1, keepdims=True)
            r = a if r is None else a @ r
        np.testing.assert_allclose(grid[b].numpy(), r[0, 1:], rtol=1e-4, atol=1e-6)
        last = atts[-1][b].mean(0)[0, 1:]
        assert torch.allclose(raw[b], last, atol=1e-6)
    single = torch.cat([ro.attribute(x[i : i + 1]) for i in range(3)])
    assert torch.allclose(single, ro.attribute(x), atol=1e-6)


def test_state_restored_after_calls_and_errors():
    m = tower()
    x = _x(b=2)
    keep = torch.rand(2, 16, generator=torch.Generator().manual_seed(1)) < 0.5
    before = model_state(m)
    for mode in ("attention", "drop"):
        TokenMask(m, mode)(x, keep)
    AttentionRollout(m).attribute(x)
    RawAttention(m).attribute(x)
    assert model_state(m) == before

    def boom(*args):
        raise RuntimeError("boom")

    h = m.ln_post.register_forward_hook(boom)
    before = model_state(m)
    for call in (
        lambda: TokenMask(m, "drop")(x, keep),
        lambda: TokenMask(m, "attention")(x, keep),
        lambda: AttentionRollout(m).attribute(x),
    ):
        with pytest.raises(RuntimeError, match="boom"):
            call()
    assert model_state(m) == before
    h.remove()


def test_parameter_groups_put_the_projection_in_the_head():
    m = tower()
    a = ViTAdapter(m)
    groups = dict((g, [n for n, _ in ps]) for g, ps in a.parameter_groups())
    assert list(groups) == ["head", "blocks.1", "blocks.0", "embedding"]
    assert groups["head"] == ["ln_post.weight", "ln_post.bias", "proj"]
    assert groups["embedding"] == [
        "class_embedding",
        "positional_embedding",
        "conv1.weight",
        "ln_pre.weight",
        "ln_pre.bias",
    ]
    assert all(n.startswith("transformer.resblocks.1.") for n in groups["blocks.1"])
    names = [n for _, ps in a.parameter_groups() for n, _ in ps]
    assert sorted(names) == sorted(n for n, _ in m.named_parameters())
    assert a.trunk_state_names(2) == groups["embedding"][:2] + [
        n for n in m.state_dict() if n.startswith(("conv1", "ln_pre", "transformer"))
    ]
    assert ViTAdapter(a.without_head()).logits(_x(1)).shape == (1, 32)
    assert m.proj is not None


@pytest.mark.parametrize(
    "kw, what",
    [
        (dict(qk_norm=True), "block_type='custom'"),
        (dict(attentional_pool=True, attn_pooler_heads=2), "attentional pooler"),
        (dict(pool_type="none"), "pool_type='none'"),
        (dict(pool_type="avg", final_ln_after_pool=True), "final_ln_after_pool"),
    ],
)
def test_unserved_layouts_are_refused_in_one_line(kw, what):
    with pytest.raises(TypeError, match="is not supported") as err:
        ViTAdapter(tower(**kw))
    assert what in str(err.value) and "\n" not in str(err.value)
