"""torchvision and Hugging Face ViTs, Swin, BEiT's shared bias and headless models.

Every oracle here is written directly against the library (torchvision's
``_process_input`` / encoder layers / heads, Hugging Face's embeddings / layers /
classifiers and ``output_attentions=True``), never through captum_vit's adapters.
"""

from __future__ import annotations

import copy
from typing import List

import numpy as np
import pytest
import torch
import torch.nn as nn
from captum.attr import IntegratedGradients
from helpers import OTHER_FAMILIES, make_model, model_state, reduced_forward

from captum_vit import (
    RISE,
    AttentionRollout,
    AttnLRP,
    GenAtt,
    RawAttention,
    SkipPLUSWrapper,
    TokenMask,
    TransformerAttribution,
    TransformerInputSampling,
    ViTAdapter,
    ViTCX,
    ViTGradCAM,
    patch_scores,
    AttentionFlow,
    ViTReciproCAM,
    LeGrad,
)
from captum_vit import BeyondIntuition, TransitionAttentionMaps
from captum_vit.vit import LRP_RULES, logits_of
from captum_vit.metrics import (
    deletion,
    insertion,
    model_parameter_randomization,
    road,
)

#: The other libraries' families that run as a token sequence (all but Swin).
TOKEN_OTHERS = tuple(f for f in OTHER_FAMILIES if f != "swin")
PREFIX = {
    "torchvision": 1,
    "hf_vit": 1,
    "hf_deit": 2,
    "hf_deit_teacher": 2,
    "hf_dinov2": 1,
    "hf_dinov2_reg": 3,
}


def _x(b: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------- library oracles
def lib_tokens(family: str, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Tokens entering the first layer, from the library's own embedding."""
    if family == "torchvision":
        x = model._process_input(images)
        x = torch.cat([model.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return x + model.encoder.pos_embedding
    base = getattr(model, model.base_model_prefix)
    return base.embeddings(images)


def lib_layers(family: str, model: nn.Module) -> List[nn.Module]:
    if family == "torchvision":
        return list(model.encoder.layers)
    base = getattr(model, model.base_model_prefix)
    return list(base.layers if hasattr(base, "layers") else base.encoder.layer)


def lib_layer(family: str, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return layer(x) if family == "torchvision" else layer(x, None)


def lib_head(family: str, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Final norm and the class's own head."""
    if family == "torchvision":
        return model.heads(model.encoder.ln(x)[:, 0])
    x = getattr(model, model.base_model_prefix).layernorm(x)
    if family == "hf_deit_teacher":
        return (
            model.cls_classifier(x[:, 0]) + model.distillation_classifier(x[:, 1])
        ) / 2
    if family.startswith("hf_dinov2"):
        p = PREFIX[family]
        return model.classifier(torch.cat([x[:, 0], x[:, p:].mean(1)], dim=1))
    return model.classifier(x[:, 0])


def lib_reduced(family: str, model: nn.Module, image: torch.Tensor, kept: torch.Tensor):
    """Logits with the held-out patch tokens physically removed from the sequence."""
    x = lib_tokens(family, model, image[None])
    p = PREFIX[family]
    x = torch.cat([x[:, :p], x[:, p:][:, torch.nonzero(kept).flatten()]], dim=1)
    for layer in lib_layers(family, model):
        x = lib_layer(family, layer, x)
    return lib_head(family, model, x)[0]


def lib_readout(family: str, t: int) -> np.ndarray:
    """Rows each head reads (the documented readout), for the oracles."""
    w = np.zeros(t)
    p = PREFIX[family]
    if family == "hf_deit_teacher":
        w[:2] = 0.5
    elif family.startswith("hf_dinov2"):
        w[0] = 0.5
        w[p:] = 0.5 / (t - p)
    else:
        w[0] = 1.0
    return w


def lib_attentions(family: str, model: nn.Module, x: torch.Tensor, grad_target=None):
    """The attentions the library returns itself, (B, heads, T, T) per layer, and
    optionally their gradients w.r.t. the logit of ``grad_target`` (ordinary
    backward)."""
    if family == "torchvision":
        # need_weights=True on each layer's own MultiheadAttention; for gradients the
        # attention is written out from the module's parameters (torch returns the
        # weights as a view outside the graph).
        h = lib_tokens(family, model, x)
        atts = []
        for layer in model.encoder.layers:
            y = layer.ln_1(h)
            mha = layer.self_attention
            _, w = mha(y, y, y, need_weights=True, average_attn_weights=False)
            b, t, e = y.shape
            q, k, v = nn.functional.linear(
                y, mha.in_proj_weight, mha.in_proj_bias
            ).chunk(3, -1)
            q, k, v = (z.reshape(b, t, 2, e // 2).transpose(1, 2) for z in (q, k, v))
            a = (q @ k.transpose(-2, -1) / (e // 2) ** 0.5).softmax(-1)
            assert torch.allclose(a, w, atol=1e-6)
            if a.requires_grad:
                a.retain_grad()
            atts.append(a)
            h = h + mha.out_proj((a @ v).transpose(1, 2).reshape(b, t, e))
            h = h + layer.mlp(layer.ln_2(h))
        logits = lib_head(family, model, h)
        assert torch.allclose(logits, model(x), atol=1e-5)
    else:
        eager = copy.deepcopy(model)
        eager.set_attn_implementation("eager")
        out = eager(x, output_attentions=True)
        logits, atts = out.logits, list(out.attentions)
        assert len(atts) == len(lib_layers(family, model))
        for a in atts:
            if a.requires_grad:
                a.retain_grad()
    if grad_target is None:
        return [a.detach() for a in atts], None
    logits.gather(1, torch.as_tensor(grad_target)[:, None]).sum().backward()
    return [a.detach() for a in atts], [a.grad for a in atts]


# ------------------------------------------------------------------- tests
@pytest.mark.parametrize("family", TOKEN_OTHERS)
def test_adapter_reproduces_the_library_forward(family):
    model = make_model(family)
    adapter = ViTAdapter(model)
    x = _x()
    assert adapter.num_prefix_tokens == PREFIX[family]
    assert (adapter.grid_size, adapter.patch_size, adapter.num_classes) == (
        (4, 4),
        (8, 8),
        5,
    )
    with torch.no_grad():
        ref = adapter.logits(x)
        hand = torch.stack(
            [
                lib_reduced(family, model, x[i], torch.ones(16, dtype=torch.bool))
                for i in range(3)
            ]
        )
        out = adapter.head(adapter.run_blocks(adapter.embed(x)))
        two = adapter.head(
            adapter.run_blocks(adapter.run_blocks(adapter.embed(x), 0, 1), 1)
        )
    assert torch.allclose(hand, ref, atol=1e-5)
    assert torch.allclose(out, ref, atol=1e-5) and torch.allclose(two, ref, atol=1e-5)


@pytest.mark.parametrize("family", TOKEN_OTHERS)
@pytest.mark.parametrize("mode", ["attention", "drop"])
def test_token_mask_equals_physically_reduced_sequence(family, mode):
    model = make_model(family)
    x = _x(b=4)
    keep = torch.rand(4, 16, generator=torch.Generator().manual_seed(0)) < 0.5
    keep[0] = True
    keep[1] = False
    keep[1, 3] = True
    keep[3] = False  # prefix tokens only
    with torch.no_grad():
        out = TokenMask(model, mode)(x, keep)
        ref = torch.stack([lib_reduced(family, model, x[i], keep[i]) for i in range(4)])
        with TokenMask(model, mode).keep(keep):
            cm = ViTAdapter(model).logits(x)
    if family.startswith("hf_dinov2"):
        # the library's mean over no patch token is NaN; TokenMask pools nothing to 0
        assert torch.isnan(ref[3]).all() and torch.isfinite(out[3]).all()
        out, ref, cm, x, keep = out[:3], ref[:3], cm[:3], x[:3], keep[:3]
    assert torch.allclose(out, ref, atol=1e-5), (out - ref).abs().max()
    assert torch.allclose(cm, out, atol=1e-6)
    # batch equals per sample
    with torch.no_grad():
        single = torch.cat(
            [
                TokenMask(model, mode)(x[i : i + 1], keep[i : i + 1])
                for i in range(len(x))
            ]
        )
    assert torch.allclose(single, out, atol=1e-5)


@pytest.mark.parametrize("family", TOKEN_OTHERS)
def test_rollout_equals_product_of_library_attentions(family):
    model = make_model(family, depth=3)
    x = _x()
    ro = AttentionRollout(model, discard_ratio=0.3, start_layer=1)
    grid = patch_scores(ro.attribute(x), model).reshape(3, -1)
    with torch.no_grad():
        atts, _ = lib_attentions(family, model, x)
    p = PREFIX[family]
    for b in range(3):
        r = None
        for a in atts[1:]:
            a = a[b].double().numpy().mean(0)
            sub = a[p:, p:].reshape(-1).copy()
            sub[np.argsort(sub, kind="stable")[: int(0.3 * sub.size)]] = 0.0
            a[p:, p:] = sub.reshape(a[p:, p:].shape)
            a = a + np.eye(a.shape[0])
            a = a / a.sum(1, keepdims=True)
            r = a if r is None else a @ r
        ref = lib_readout(family, r.shape[0]) @ r
        np.testing.assert_allclose(grid[b].numpy(), ref[p:], rtol=1e-4, atol=1e-6)
    single = torch.cat([ro.attribute(x[i : i + 1]) for i in range(3)])
    assert torch.allclose(single, ro.attribute(x), atol=1e-6)


@pytest.mark.parametrize("family", TOKEN_OTHERS)
def test_genatt_equals_formula_with_ordinary_backward(family):
    model = make_model(family, depth=2)
    x = _x()
    target = [0, 3, 4]
    attr = GenAtt(model).attribute(x, target=target)
    grid = patch_scores(attr, model).reshape(3, -1)
    atts, grads = lib_attentions(family, model, x, grad_target=target)
    model.zero_grad(set_to_none=True)
    p = PREFIX[family]
    for b in range(3):
        t = atts[0].shape[-1]
        r = np.eye(t)
        for a, g in zip(atts, grads):
            cam = (g[b] * a[b]).double().numpy()
            r = r + np.clip(cam, 0, None).mean(0) @ r
        ref = (lib_readout(family, t) @ r)[p:]
        np.testing.assert_allclose(grid[b].numpy(), ref, rtol=1e-4, atol=1e-7)
    single = torch.cat(
        [GenAtt(model).attribute(x[i : i + 1], target=target[i]) for i in range(3)]
    )
    assert torch.allclose(single, attr, atol=1e-6)


@pytest.mark.parametrize("family", TOKEN_OTHERS)
def test_state_restored_after_calls_and_errors(family):
    model = make_model(family)
    x = _x(b=2)
    fast = torch.backends.mha.get_fastpath_enabled()
    before = model_state(model)
    keep = torch.rand(2, 16, generator=torch.Generator().manual_seed(1)) < 0.5
    for mode in ("attention", "drop"):
        TokenMask(model, mode)(x, keep)
    AttentionRollout(model).attribute(x)
    GenAtt(model).attribute(x, target=1)
    TransformerInputSampling(model, n_masks=4).attribute(x, seed=0)
    assert model_state(model) == before
    norm = ViTAdapter(model)._final_norm_module()

    def boom(*args):
        raise RuntimeError("boom")

    h = norm.register_forward_hook(boom)
    before = model_state(model)
    for call in (
        lambda: TokenMask(model, "drop")(x, keep),
        lambda: TokenMask(model, "attention")(x, keep),
        lambda: AttentionRollout(model).attribute(x),
        lambda: GenAtt(model).attribute(x, target=1),
    ):
        with pytest.raises(RuntimeError, match="boom"):
            call()
    assert model_state(model) == before
    h.remove()
    assert torch.backends.mha.get_fastpath_enabled() == fast
    if family.startswith("hf"):
        assert model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("family", ["torchvision", "hf_deit_teacher", "hf_dinov2_reg"])
def test_plus_tis_and_vitcx_parts_equal_library_computations(family):
    from captum.attr import InputXGradient

    from captum_vit.attr._plus import PLUSWrapper

    model = make_model(family, depth=3)
    x = _x(b=2)
    target = torch.tensor([1, 4])
    p = PREFIX[family]
    # PLUS(InputXGradient) = CAT: sum over blocks of (x_l * dy/dx_l) summed over D
    inputs = []
    h = lib_tokens(family, model, x).detach().requires_grad_(True)
    for layer in lib_layers(family, model):
        inputs.append(h)
        h = lib_layer(family, layer, h)
    logits = lib_head(family, model, h)
    grads = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), inputs)
    cat = sum((a * g).sum(-1)[:, p:] for a, g in zip(inputs, grads)).detach()
    got = PLUSWrapper(InputXGradient(model)).attribute(x, target=target)
    got = patch_scores(got, model).reshape(2, -1)
    assert torch.allclose(got, cat, rtol=1e-4, atol=1e-6)
    # TIS: a mask's score is the probability on the physically reduced sequence
    tis = TransformerInputSampling(model, n_masks=3)
    masks = tis.masks(x, seed=0)
    scores = tis.scores(x, masks, target)
    with torch.no_grad():
        for i in range(2):
            for m, sc in zip(masks[i], scores[i]):
                ref = torch.softmax(lib_reduced(family, model, x[i], m), -1)[target[i]]
                assert abs(float(sc) - float(ref)) < 1e-5
    # ViT-CX: default features are the last block's normalised input, prefix dropped
    seen = []
    norm = model.encoder.layers[-1].ln_1 if family == "torchvision" else None
    if norm is None:
        last = lib_layers(family, model)[-1]
        norm = getattr(last, "layernorm_before", None) or last.norm1
    hook = norm.register_forward_hook(lambda m, a, out: seen.append(out))
    try:
        with torch.no_grad():
            model(x)
    finally:
        hook.remove()
    want = seen[0][:, p:].reshape(2, 4, 4, -1).permute(0, 3, 1, 2)
    assert torch.allclose(ViTCX(model).features(x), want)


def test_hf_outputs_and_metrics_use_logits():
    from captum_vit.metrics import insertion_deletion_curves

    model = make_model("hf_dinov2_reg")
    x = _x(b=2)
    attr = torch.randn(2, 16, generator=torch.Generator().manual_seed(2))
    c = insertion_deletion_curves(model, x, attr, [1, 2], n_steps=2)
    order = torch.argsort(-attr, dim=1)
    with torch.no_grad():
        for i, t in enumerate([1, 2]):
            kept = torch.ones(16, dtype=torch.bool)
            kept[order[i, :8]] = False  # half-way point of the deletion curve
            p = torch.softmax(lib_reduced("hf_dinov2_reg", model, x[i], kept), -1)[t]
            assert abs(float(c.deletion[i, 1]) - float(p)) < 1e-5
            kept = ~kept
            p = torch.softmax(lib_reduced("hf_dinov2_reg", model, x[i], kept), -1)[t]
            assert abs(float(c.insertion[i, 1]) - float(p)) < 1e-5


def test_beit_shared_bias_and_absolute_positions_mask_and_drop_exactly():
    model = make_model(
        "beit",
        use_shared_rel_pos_bias=True,
        use_rel_pos_bias=False,
        use_abs_pos_emb=True,
        init_values=0.1,
    )
    assert model.rel_pos_bias is not None and model.pos_embed is not None
    x = _x(b=3)
    keep = torch.rand(3, 16, generator=torch.Generator().manual_seed(4)) < 0.4
    keep[2] = False
    keep[2, 5] = True
    with torch.no_grad():
        ref = torch.stack([reduced_forward(model, x[i], keep[i]) for i in range(3)])
        for mode in ("attention", "drop"):
            before = model_state(model)
            out = TokenMask(model, mode)(x, keep)
            assert torch.allclose(out, ref, atol=1e-5), (mode, (out - ref).abs().max())
            assert model_state(model) == before


# ----------------------------------------------------------------- Swin
def test_swin_vitcx_on_last_stage_feature_map():
    model = make_model("swin")
    x = _x(b=2)
    cx = ViTCX(model, noise_std=0.0)
    assert cx.distance_threshold == 0.05  # the paper's Swin setting
    feats = cx.features(x)
    with torch.no_grad():
        stage = model.layers(model.patch_embed(x))  # NHWC, the last stage's output
    assert torch.allclose(feats, stage.permute(0, 3, 1, 2), atol=1e-6)
    before = model_state(model)
    attr = cx.attribute(x, target=[0, 2], seed=0)
    assert attr.shape == x.shape and torch.isfinite(attr).all()
    single = torch.cat(
        [cx.attribute(x[i : i + 1], target=t, seed=0) for i, t in enumerate([0, 2])]
    )
    assert torch.allclose(single, attr, atol=1e-5)
    assert model_state(model) == before


def test_swin_metrics_use_pixel_baselines_on_its_patch_grid():
    model = make_model("swin")
    x = _x(b=2)
    adapter = ViTAdapter(model)
    assert adapter.grid_size == (8, 8) and adapter.patch_size == (4, 4)
    attr = torch.randn(2, 64, generator=torch.Generator().manual_seed(5))
    from captum_vit.metrics import insertion_deletion_curves

    c = insertion_deletion_curves(model, x, attr, [1, 3], n_steps=2)  # black pixels
    order = torch.argsort(-attr, dim=1)
    with torch.no_grad():
        for i, t in enumerate([1, 3]):
            gone = torch.zeros(64, dtype=torch.bool)
            gone[order[i, :32]] = True
            pix = gone.view(8, 8).repeat_interleave(4, 0).repeat_interleave(4, 1)
            p = torch.softmax(model(torch.where(pix, 0.0, x[i])[None]), -1)[0, t]
            assert abs(float(c.deletion[i, 1]) - float(p)) < 1e-5
    with pytest.raises(TypeError, match="token dropping, which timm SwinTransformer"):
        insertion(model, x, attr, 1, removal="tokens")


# -------------------------------------------------------------- headless
@pytest.mark.parametrize("family", ["cls", "hf_vit", "torchvision", "swin"])
def test_headless_models_are_refused_by_class_methods(family):
    model = make_model(family, num_classes=0)
    x = _x(b=2)
    adapter = ViTAdapter(model)
    assert not adapter.has_head and adapter.num_classes == 0
    attr = torch.rand(2, adapter.num_patches)
    calls = [
        lambda: ViTCX(model),
        lambda: insertion(model, x, attr, removal="black"),
        lambda: RISE(model),
        lambda: ViTGradCAM(model),
        lambda: road(model, x, attr, 0),
        lambda: model_parameter_randomization(model, lambda i, **k: i, x, target=0),
    ]
    if family != "swin":
        calls += [
            lambda: GenAtt(model),
            lambda: TransformerInputSampling(model),
            lambda: SkipPLUSWrapper(IntegratedGradients(model)),
        ]
    if family == "cls":  # the one family here with LRP rules
        calls.append(lambda: TransformerAttribution(model))
    calls.append(lambda: AttnLRP(model))
    for call in calls:
        with pytest.raises(TypeError, match="the model has no classifier head"):
            call()
    if family != "swin":  # class-agnostic tools still work
        assert AttentionRollout(model).attribute(x).shape == x.shape
        assert RawAttention(model).attribute(x).shape == x.shape
        keep = torch.ones(2, 16, dtype=torch.bool)
        assert TokenMask(model, "drop")(x, keep).shape[0] == 2
        res = model_parameter_randomization(model, RawAttention(model), x)
        assert res.spearman.shape == (2, len(adapter.parameter_groups()))


# ------------------------------------------------------- supported-models matrix
README = __import__("pathlib").Path(__file__).resolve().parents[1] / "README.md"
ROWS = {
    "timm ViT (CLS)": "cls",
    "timm DeiT distilled": "distilled",
    "timm ViT registers, avg pool": "reg_gap",
    'timm SigLIP (`global_pool="map"`)': "siglip",
    "timm Eva (EVA-02)": "eva",
    "timm BEiT": "beit",
    "torchvision ViT": "torchvision",
    "HF ViT": "hf_vit",
    "HF DeiT": "hf_deit",
    "HF DeiT with teacher": "hf_deit_teacher",
    "HF DINOv2": "hf_dinov2",
    "HF DINOv2 with registers": "hf_dinov2_reg",
    "timm Swin": "swin",
    "HF CLIP, zero-shot": "zs_hf_clip",
    "HF SigLIP, zero-shot": "zs_hf_siglip",
    "OpenCLIP, zero-shot": "zs_open_clip",
    "timm ViT tower + text embeddings, zero-shot": "zs_timm",
}


def _run_cell(column: str, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    from captum_vit import ViTShapley
    from captum_vit.shapley import ShapleyExplainer

    from captum_vit import GradSAM, PartialLRP

    adapter = ViTAdapter(model)
    n = adapter.num_patches
    keep = torch.arange(n).expand(x.shape[0], n) % 2 == 0
    attr = torch.rand(x.shape[0], n, generator=torch.Generator().manual_seed(0))
    if column == "TokenMask":
        return TokenMask(model)(x, keep)
    if column == "TokenMask drop":
        return TokenMask(model, "drop")(x, keep)
    if column == "AttentionRollout":
        return AttentionRollout(model).attribute(x)
    if column == "GenAtt":
        return GenAtt(model).attribute(x, target=1)
    if column == "ViTCX":
        return ViTCX(model, noise_std=0.0).attribute(x, target=1, seed=0)
    if column == "TransformerInputSampling":
        return TransformerInputSampling(model, n_masks=4).attribute(x, target=1, seed=0)
    if column == "SkipPLUSWrapper(IG)":
        plus = SkipPLUSWrapper(IntegratedGradients(model))
        return plus.attribute(x, target=1, n_steps=2)
    if column == "Captum IG":
        return IntegratedGradients(adapter.logits).attribute(x, target=1, n_steps=2)
    if column == "ViTShapley":
        explainer = ShapleyExplainer.from_surrogate(model).eval()
        return ViTShapley(explainer, model).attribute(x, target=1)
    if column == "TransformerAttribution":
        return TransformerAttribution(model).attribute(x, target=1)
    if column == "RawAttention":
        return RawAttention(model).attribute(x)
    if column == "RISE":
        rise = RISE(model, n_masks=8, grid_size=2)
        return rise.attribute(x, target=1, seed=0, perturbations_per_eval=8)
    if column == "ViTGradCAM":
        return ViTGradCAM(model).attribute(x, target=1)
    if column == "AttentionFlow":
        return AttentionFlow(model).attribute(x)
    if column == "TransitionAttentionMaps":
        return TransitionAttentionMaps(model, steps=2).attribute(x, target=1)
    if column.startswith("BeyondIntuition("):
        mode = column[len("BeyondIntuition(") : -1]
        return BeyondIntuition(model, mode=mode, steps=2).attribute(x, target=1)
    if column == "AttnLRP":
        return AttnLRP(model).attribute(x, target=1)
    if column == "ViTReciproCAM":
        return ViTReciproCAM(model).attribute(x, target=1)
    if column == "LeGrad":
        return LeGrad(model).attribute(x, target=1)
    if column == "metrics, ROAD":
        return road(model, x, attr, 1, fractions=(0.25, 0.5))
    if column == "GradSAM":
        return GradSAM(model).attribute(x, target=1)
    if column == "PartialLRP":
        return PartialLRP(model).attribute(x, target=1)
    if column == "ViTGradCAM(attention)":
        return ViTGradCAM(model, on="attention").attribute(x, target=1)
    if column == "metrics, randomisation":
        res = model_parameter_randomization(model, ViTGradCAM(model), x, target=1)
        return res.spearman[:, -1]
    removal = "tokens" if column == "metrics, token removal" else "black"
    # (no empty token set: prefix-free models cannot evaluate one by token removal)
    return deletion(model, x, attr, 1, removal=removal, fractions=[0.0, 0.5])


def _matrix():
    lines = README.read_text().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("| family |"))
    columns = [c.strip() for c in lines[start].strip("|").split("|")][1:]
    cells = []
    for ln in lines[start + 2 :]:
        if not ln.startswith("|"):
            break
        row = [c.strip() for c in ln.strip("|").split("|")]
        cells.append((row[0], dict(zip(columns, row[1:]))))
    return columns, cells


def test_readme_matrix_covers_every_family_and_method():
    columns, cells = _matrix()
    assert len(columns) == 27
    assert [r for r, _ in cells] == list(ROWS)
    assert all(len(c) == len(columns) for _, c in cells)


@pytest.mark.parametrize("row", list(ROWS))
def test_supported_models_matrix(row):
    """Every cell of the README matrix either runs or raises the documented
    capability error (a TypeError naming method, family and capability)."""
    from helpers import image_size

    columns, cells = _matrix()
    family = ROWS[row]
    model = make_model(family)
    s = image_size(family)
    x = torch.randn(2, 3, s, s, generator=torch.Generator().manual_seed(3))
    before = model_state(model)
    name = ViTAdapter(model).family_name
    for column, cell in dict(cells)[row].items():
        if cell == "✓":
            out = _run_cell(column, model, x)
            expected = (2,) if column.startswith("metrics") else None
            if expected is None and column.startswith("TokenMask"):
                expected = (2, 5)
            assert tuple(out.shape) == (expected or tuple(x.shape)), (row, column)
            assert torch.isfinite(out).all(), (row, column)
        else:
            assert cell.startswith("✗ "), (row, column, cell)
            with pytest.raises(TypeError) as err:
                _run_cell(column, model, x)
            msg = str(err.value)
            assert f"needs {cell[2:]}" in msg or f"needs a {cell[2:]}" in msg, msg
            assert name in msg, msg
    assert model_state(model) == before


# ------------------------------------------- baselines' methods on every family
def _last_attention_input(family: str, model: nn.Module) -> nn.Module:
    """The library's own pre-attention norm of the last block."""
    if family == "torchvision":
        return model.encoder.layers[-1].ln_1
    if family == "swin":
        return model.layers[-1].blocks[-1].norm1
    last = lib_layers(family, model)[-1]
    return getattr(last, "layernorm_before", None) or last.norm1


@pytest.mark.parametrize(
    "family", ["torchvision", "hf_vit", "hf_deit_teacher", "hf_dinov2_reg", "swin"]
)
def test_gradcam_raw_attention_and_rise_equal_library_computations(family):
    model = make_model(family)
    x = _x(b=2)
    target = torch.tensor([1, 4])
    before = model_state(model)
    # Grad-CAM: an ordinary backward on a copy, hooked at the library's own norm
    ref_model = copy.deepcopy(model)
    seen = []
    norm = _last_attention_input(family, ref_model)
    norm.register_forward_hook(lambda m, a, out: seen.append(out))
    out = ref_model(x)
    logits = getattr(out, "logits", out)
    (grad,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), seen[0])
    act = seen[0].detach()
    if family == "swin":  # NHWC map of the last stage
        act, grad = act.permute(0, 3, 1, 2), grad.permute(0, 3, 1, 2)
    else:  # patch tokens on the 4 x 4 grid
        p = PREFIX[family]
        act = act[:, p:].reshape(2, 4, 4, -1).permute(0, 3, 1, 2)
        grad = grad[:, p:].reshape(2, 4, 4, -1).permute(0, 3, 1, 2)
    cam = (act * grad.mean(dim=(2, 3), keepdim=True)).sum(1).clamp(min=0)
    got = ViTGradCAM(model).attribute(x, target=target)
    s = x.shape[-1] // cam.shape[-1]  # nearest upsampling of the (h, w) map
    assert torch.allclose(got[:, 0, ::s, ::s], cam, atol=1e-5)
    one = ViTGradCAM(model).attribute(x[1:], target=4)
    assert torch.allclose(one[0], got[1], atol=1e-6)
    # RISE through the adapter equals RISE on the plain logits function
    rise = RISE(model, n_masks=6, grid_size=2).attribute(x, target=target, seed=0)
    plain = RISE(lambda z: logits_of(model(z)), n_masks=6, grid_size=2)
    assert torch.allclose(rise, plain.attribute(x, target=target, seed=0))
    # raw attention: the last block's attention as the library returns it
    if family == "swin":
        with pytest.raises(TypeError, match="which timm SwinTransformer"):
            RawAttention(model)
    else:
        atts, _ = lib_attentions(family, model, x)
        w = torch.tensor(lib_readout(family, atts[-1].shape[-1]), dtype=torch.float32)
        ref = torch.einsum("t,bts->bs", w, atts[-1].mean(dim=1))[:, PREFIX[family] :]
        got = patch_scores(RawAttention(model).attribute(x), model).flatten(1)
        assert torch.allclose(got, ref, atol=1e-6)
    assert model_state(model) == before


def lib_groups(family: str, model: nn.Module) -> List[tuple]:
    """Parameter groups for the randomisation test, from parameter names."""
    import re

    depth = len(lib_layers(family, model)) if family in TOKEN_OTHERS else None
    if family == "swin":
        starts = np.cumsum([0] + [len(s.blocks) for s in model.layers])
        depth = int(starts[-1])
    elif depth is None:
        depth = len(model.blocks)

    def group(name: str) -> str:
        if family == "torchvision":
            head = name.startswith(("encoder.ln.", "heads."))
            m = re.match(r"encoder\.layers\.encoder_layer_(\d+)\.", name)
        elif family.startswith("hf"):
            head = bool(re.match(r"(\w+\.layernorm|\w*classifier)\.", name))
            m = re.search(r"\.(?:layers|encoder\.layer)\.(\d+)\.", name)
        elif family == "swin":
            head = name.startswith(("norm.", "head."))
            m = re.match(r"layers\.(\d+)\.(?:blocks\.(\d+)|downsample)\.", name)
            if m:  # patch merging goes with the first block of its stage
                return f"blocks.{starts[int(m[1])] + int(m[2] or 0)}"
        else:
            head = name.split(".")[0] in ("norm", "fc_norm", "head", "attn_pool")
            m = re.match(r"blocks\.(\d+)\.", name)
        if head:
            return "head"
        return f"blocks.{m[1]}" if m else "embedding"

    names = ["head"] + [f"blocks.{i}" for i in reversed(range(depth))]
    names.append("embedding")
    groups = {n: [] for n in names}
    for name, _ in model.named_parameters():
        groups[group(name)].append(name)
    return [(g, ps) for g, ps in groups.items() if ps]


@pytest.mark.parametrize(
    "family", ["cls", "siglip", "beit", "swin"] + list(TOKEN_OTHERS)
)
def test_parameter_groups_and_input_normalization_of_every_family(family):
    from helpers import FAMILIES

    model = make_model(family)
    adapter = ViTAdapter(model)
    got = [(g, [n for n, _ in ps]) for g, ps in adapter.parameter_groups()]
    assert got == lib_groups(family, model)
    lrp = family == "cls"  # the only family here with LRP rules (SigLIP: map pool)
    assert adapter.has(LRP_RULES) == (LRP_RULES in adapter.capabilities) == lrp
    if family in FAMILIES or family == "swin":  # recorded by timm.create_model
        cfg = model.pretrained_cfg
        assert adapter.input_normalization == (tuple(cfg["mean"]), tuple(cfg["std"]))
    else:  # torchvision / HF keep it in their transforms: "black" needs it given
        assert adapter.input_normalization is None
        x = _x(b=1)
        cx = ViTCX(model, noise_std=0.0)
        with pytest.raises(ValueError, match="'black' needs the model's input"):
            cx.attribute(x, target=0, baselines="black")
        cx = ViTCX(model, noise_std=0.0, input_mean=[0.5] * 3, input_std=[0.5] * 3)
        assert cx.attribute(x, target=0, baselines="black").shape == x.shape


def test_road_on_swin_uses_its_patch_grid():
    model = make_model("swin")
    x = _x(b=2)
    attr = torch.randn(2, 64, generator=torch.Generator().manual_seed(5))
    ids = torch.arange(64).reshape(8, 8).repeat_interleave(4, 0).repeat_interleave(4, 1)
    pix = attr[:, ids.flatten()].reshape(2, 1, 32, 32).expand(2, 3, 32, 32)
    got = road(model, x, attr, [1, 3], fractions=(0.25, 0.5))
    ref = road(
        model, x, pix, [1, 3], fractions=(0.25, 0.5), feature_mask=ids[None, None]
    )
    assert torch.allclose(got, ref)
