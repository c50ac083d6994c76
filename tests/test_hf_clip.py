"""Hugging Face CLIP and SigLIP image towers (and SigLIP's image classifier).

Every oracle is written against transformers' own modules (the embeddings, the
encoder layers called as the encoder calls them, ``post_layernorm``, SigLIP's pooling
head and ``output_attentions=True`` on an eager copy), never through captum_vit's
adapters.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
from helpers import HF_TEXT, HF_VISION, hf_image_text, model_state

from captum_vit import (
    AttentionRollout,
    GenAtt,
    RawAttention,
    TokenMask,
    ViTAdapter,
    ViTGradCAM,
    patch_scores,
)
from captum_vit.vit import record_attention

tf = pytest.importorskip("transformers")

KINDS = ("clip", "clip_proj", "siglip", "siglip_cls")


def tower(kind: str, depth: int = 2) -> nn.Module:
    """The tiny model of each served kind (eval mode)."""
    if kind == "clip":
        return hf_image_text("clip", depth=depth).vision_model
    if kind == "siglip":
        return hf_image_text("siglip", depth=depth).vision_model
    torch.manual_seed(0)
    vision = dict(HF_VISION, num_hidden_layers=depth)
    if kind == "clip_proj":
        cfg = tf.CLIPVisionConfig(projection_dim=16, **vision)
        return tf.CLIPVisionModelWithProjection(cfg).eval()
    cfg = tf.SiglipConfig(vision_config=vision, text_config=HF_TEXT, num_labels=5)
    return tf.SiglipForImageClassification(cfg).eval()


def _vm(kind, m):
    return m if kind in ("clip", "siglip") else m.vision_model


def _x(b: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def lib_tokens(kind, m, images):
    vm = _vm(kind, m)
    x = vm.embeddings(images)
    return x if kind.startswith("siglip") else vm.pre_layrnorm(x)


def lib_head(kind, m, h):
    """The class's own readout of the last hidden states ``h``."""
    vm = _vm(kind, m)
    if kind == "siglip":
        return vm.head(vm.post_layernorm(h))
    if kind == "siglip_cls":
        return m.classifier(vm.post_layernorm(h).mean(1))
    pooled = vm.post_layernorm(h[:, 0])
    return m.visual_projection(pooled) if kind == "clip_proj" else pooled


def lib_reduced(kind, m, image, kept):
    """Output for one image with the held-out patch tokens physically removed."""
    x = lib_tokens(kind, m, image[None])
    p = 0 if kind.startswith("siglip") else 1
    x = torch.cat([x[:, :p], x[:, p:][:, torch.nonzero(kept).flatten()]], dim=1)
    for layer in _vm(kind, m).encoder.layers:
        x = layer(x, None)
    return lib_head(kind, m, x)[0]


def lib_pool_attention(m, h_normed):
    """SigLIP's pooling attention written out from its nn.MultiheadAttention's
    parameters: (B, heads, 1, T) probabilities and the pooled output."""
    head = m.head
    mha = head.attention
    b, t, e = h_normed.shape
    heads = mha.num_heads
    w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
    b_q, b_k, b_v = mha.in_proj_bias.chunk(3)
    probe = head.probe.expand(b, -1, -1)
    q = nn.functional.linear(probe, w_q, b_q).reshape(b, 1, heads, -1).transpose(1, 2)
    k = nn.functional.linear(h_normed, w_k, b_k).reshape(b, t, heads, -1)
    v = nn.functional.linear(h_normed, w_v, b_v).reshape(b, t, heads, -1)
    k, v = k.transpose(1, 2), v.transpose(1, 2)
    a = (q @ k.transpose(-2, -1) / (e // heads) ** 0.5).softmax(-1)
    y = mha.out_proj((a @ v).transpose(1, 2).reshape(b, 1, e))
    y = y + head.mlp(head.layernorm(y))
    return a, y[:, 0]


@pytest.mark.parametrize("kind", KINDS)
def test_adapter_reproduces_the_tower(kind):
    m = tower(kind)
    a = ViTAdapter(m)
    p = 0 if kind.startswith("siglip") else 1
    assert a.family == "hf_clip_vision"
    assert (a.grid_size, a.patch_size, a.num_prefix_tokens) == ((4, 4), (8, 8), p)
    assert a.num_classes == (5 if kind == "siglip_cls" else 0)
    x = _x()
    with torch.no_grad():
        ref = a.logits(x)
        hand = torch.stack(
            [
                lib_reduced(kind, m, x[i], torch.ones(16, dtype=torch.bool))
                for i in (0, 1, 2)
            ]
        )
        out = a.head(a.run_blocks(a.embed(x)))
        two = a.head(a.run_blocks(a.run_blocks(a.embed(x), 0, 1), 1))
    assert torch.allclose(hand, ref, atol=1e-5)
    assert torch.allclose(out, ref, atol=1e-5) and torch.allclose(two, ref, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", ["attention", "drop"])
def test_token_mask_equals_physically_reduced_sequence(kind, mode):
    m = tower(kind)
    x = _x(b=4)
    keep = torch.rand(4, 16, generator=torch.Generator().manual_seed(0)) < 0.5
    keep[0] = True
    keep[1] = False
    keep[1, 3] = True  # a single patch
    before = model_state(m)
    with torch.no_grad():
        out = TokenMask(m, mode)(x, keep)
        ref = torch.stack([lib_reduced(kind, m, x[i], keep[i]) for i in range(4)])
        with TokenMask(m, mode).keep(keep):
            cm = ViTAdapter(m).logits(x)
        single = torch.cat(
            [TokenMask(m, mode)(x[i : i + 1], keep[i : i + 1]) for i in range(4)]
        )
    assert torch.allclose(out, ref, atol=1e-5), (out - ref).abs().max()
    assert torch.allclose(cm, out, atol=1e-6)
    assert torch.allclose(single, out, atol=1e-5)
    assert model_state(m) == before


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_recorded_attention_and_gradients_equal_the_library(kind):
    m = tower(kind, depth=3)
    x = _x()
    eager = copy.deepcopy(m)
    eager.set_attn_implementation("eager")
    out = eager(x, output_attentions=True)
    atts = list(out.attentions)
    for a in atts:
        a.retain_grad()
    if kind == "siglip":  # the pool written out, so that its weights are in the graph
        pool, feats = lib_pool_attention(eager, out.last_hidden_state)
        pool.retain_grad()
        assert torch.allclose(feats, out.pooler_output, atol=1e-5)
    else:
        feats = out.pooler_output
    feats.square().sum().backward()
    before = model_state(m)
    with record_attention(m, with_grad=True) as rec:
        got = ViTAdapter(m).logits(x)
        grads = rec.grad(got.square().sum())
    assert torch.allclose(got, feats, atol=1e-5)
    for a, r, g in zip(rec.attentions, atts, grads):
        assert torch.allclose(a, r, atol=1e-6)
        assert torch.allclose(g, r.grad, atol=1e-5, rtol=1e-4)
    if kind == "siglip":
        assert rec.pool_attention.shape == (3, 2, 1, 16)
        assert torch.allclose(rec.pool_attention, pool, atol=1e-6)
        assert torch.allclose(rec.pool_gradient, pool.grad, atol=1e-5, rtol=1e-4)
    else:
        assert rec.pool_attention is None
    assert model_state(m) == before
    assert m.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("kind", KINDS)
def test_rollout_and_raw_attention_equal_products_of_library_attentions(kind):
    m = tower(kind, depth=3)
    x = _x()
    eager = copy.deepcopy(m)
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        out = eager(x, output_attentions=True)
        pool = None
        if kind == "siglip":
            h = eager.post_layernorm(out.last_hidden_state)
            pool = lib_pool_attention(eager, h)[0]
    atts = [a.double().numpy() for a in out.attentions]
    p = 0 if kind.startswith("siglip") else 1
    grid = patch_scores(AttentionRollout(m).attribute(x), m).reshape(3, -1)
    raw = patch_scores(RawAttention(m).attribute(x), m).reshape(3, -1)
    for b in range(3):
        if kind == "siglip":
            w = pool[b].double().numpy().mean(0)  # heads fused by the mean
            w = (w / w.sum(-1, keepdims=True)).mean(0)
        elif kind == "siglip_cls":
            w = np.full(16, 1 / 16)
        else:
            w = np.eye(17)[0]
        r = np.eye(atts[0].shape[-1])
        for a in atts:
            a = a[b].mean(0) + np.eye(a.shape[-1])
            r = (a / a.sum(1, keepdims=True)) @ r
        np.testing.assert_allclose(grid[b].numpy(), (w @ r)[p:], rtol=1e-4, atol=1e-6)
        last = w @ atts[-1][b].mean(0)
        np.testing.assert_allclose(raw[b].numpy(), last[p:], rtol=1e-4, atol=1e-6)


def test_siglip_classifier_runs_class_methods_and_towers_refuse_them():
    m = tower("siglip_cls")
    x = _x(2)
    before = model_state(m)
    g = GenAtt(m).attribute(x, target=[1, 3])
    single = torch.cat(
        [GenAtt(m).attribute(x[i : i + 1], target=t) for i, t in ((0, 1), (1, 3))]
    )
    assert torch.allclose(single, g, atol=1e-6)
    assert ViTGradCAM(m).attribute(x, target=1).shape == x.shape
    assert model_state(m) == before
    for kind in ("clip", "siglip"):
        t = tower(kind)
        with pytest.raises(TypeError, match="ZeroShotClassifier"):
            GenAtt(t)


def test_unserved_models_are_refused_in_one_line():
    torch.manual_seed(0)
    cfg = tf.SiglipVisionConfig(vision_use_head=False, **HF_VISION)
    with pytest.raises(TypeError, match="vision_use_head=False"):
        ViTAdapter(tf.SiglipVisionModel(cfg))
    cfg = tf.CLIPConfig(vision_config=HF_VISION, text_config=HF_TEXT, num_labels=3)
    with pytest.raises(TypeError, match="expected a supported Vision Transformer"):
        ViTAdapter(tf.CLIPForImageClassification(cfg))


@pytest.mark.parametrize("kind", KINDS)
def test_parameter_groups(kind):
    m = tower(kind)
    groups = dict((g, [n for n, _ in ps]) for g, ps in ViTAdapter(m).parameter_groups())
    assert list(groups) == ["head", "blocks.1", "blocks.0", "embedding"]
    for i in (0, 1):
        assert all(f"encoder.layers.{i}." in n for n in groups[f"blocks.{i}"])
    assert all(
        ".embeddings." in f".{n}" or "pre_layrnorm" in n for n in groups["embedding"]
    )
    head = {n.split(".")[-2] for n in groups["head"]}
    assert "post_layernorm" in head
    names = [n for ps in groups.values() for n in ps]
    assert sorted(names) == sorted(n for n, _ in m.named_parameters())
