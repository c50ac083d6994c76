"""PLUS / SkipPLUS against direct Captum calls on hand-built sub-networks.

The oracles here never use the package's adapter: hidden states and sub-networks are
written out from timm's own modules (patch_embed, _pos_embed, blocks, norm,
forward_head), and every per-layer attribution is a plain Captum call.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np
import pytest
import torch
import torch.nn as nn
from captum.attr import (
    FeatureAblation,
    GradientShap,
    InputXGradient,
    IntegratedGradients,
    LayerGradientXActivation,
    LayerIntegratedGradients,
    NoiseTunnel,
    Saliency,
    ShapleyValues,
    ShapleyValueSampling,
)
from helpers import images, make_model, map_pool_by_hand, model_state, timm_tokens

from captum_vit import AttentionRollout, GenAtt, patch_scores
from captum_vit.attr._plus import (
    PLUSWrapper,
    SkipPLUSWrapper,
    ViTSubNetwork,
    skipplus_layers,
    token_feature_mask,
)
from captum_vit.vit import record_attention

# ------------------------------------------------------------------- oracles


def hand_states(model: nn.Module, x: torch.Tensor) -> Tuple[List[torch.Tensor], Any]:
    """Block inputs x_0 .. x_L (x_L = last block output) written out from timm."""
    with torch.no_grad():
        h, rope = timm_tokens(model, x)
        states = [h]
        for blk in model.blocks:
            h = blk(h, rope=rope) if rope is not None else blk(h)
            states.append(h)
    return states, rope


class HandSub(nn.Module):
    """f_l from timm's modules: blocks[l:], norm, forward_head."""

    def __init__(self, model: nn.Module, start: int, rope: Any = None) -> None:
        super().__init__()
        self.parts = [model]  # not registered
        self.start, self.rope = start, rope

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        m = self.parts[0]
        for blk in m.blocks[self.start :]:
            h = blk(h, rope=self.rope) if self.rope is not None else blk(h)
        return m.forward_head(m.norm(h))


def direct_plus(
    model: nn.Module,
    x: torch.Tensor,
    make: Callable[[nn.Module], Any],
    layers: Sequence[int],
    reduce: Callable[[torch.Tensor], torch.Tensor] = lambda a: a.sum(-1),
    seed: Optional[int] = None,
    per_layer_kwargs: Callable[[int, List[torch.Tensor]], dict] = lambda layer, s: {},
    **kwargs: Any,
) -> torch.Tensor:
    """Sum over ``layers`` of Captum ``make(f_l).attribute(x_l)`` -> (B, N)."""
    states, rope = hand_states(model, x)
    p = model.num_prefix_tokens
    if seed is not None:
        torch.manual_seed(seed)
        np.random.seed(seed)
    total = 0
    for layer in layers:
        attr = make(HandSub(model, layer, rope)).attribute(
            states[layer].clone().requires_grad_(True),
            **kwargs,
            **per_layer_kwargs(layer, states),
        )
        total = total + reduce(attr.detach())[:, p:]
    return total


def grid_of(attr: torch.Tensor, model: nn.Module) -> torch.Tensor:
    return patch_scores(attr, model).reshape(attr.shape[0], -1).float()


def assert_close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> None:
    scale = max(float(b.abs().max()), 1e-6)
    assert float((a - b).abs().max()) <= tol * scale + 1e-7, (a, b)


def token_mask(model: nn.Module, n: int) -> torch.Tensor:
    """(1, T, D) one id per token (prefix first), materialised."""
    t = model.num_prefix_tokens + n
    ids = torch.arange(t).view(1, t, 1)
    return ids.expand(1, t, model.embed_dim).contiguous()


# ---------------------------------------------------------------- PLUS = sum


def test_plus_equals_direct_ig_sum_every_family(family: str) -> None:
    model = make_model(family, depth=3)
    x = images(family)
    plus = PLUSWrapper(IntegratedGradients(model))
    assert plus.layers == [0, 1, 2]
    attr = plus.attribute(x, target=[1, 3], n_steps=4)
    assert attr.shape == x.shape
    want = direct_plus(
        model, x, IntegratedGradients, [0, 1, 2], target=[1, 3], n_steps=4
    )
    assert_close(grid_of(attr, model), want)
    # patch-constant and identical over channels: nearest spread of the scores
    ph = model.patch_embed.patch_size[0]
    gh = x.shape[-1] // ph
    spread = (
        want.reshape(2, 1, gh, gh).repeat_interleave(ph, 2).repeat_interleave(ph, 3)
    )
    assert_close(attr, spread.expand_as(x))


METHODS = {
    "saliency": (Saliency, {}, None),
    "saliency_signed": (Saliency, dict(abs=False), None),
    "ixg": (InputXGradient, {}, None),
    "ig": (IntegratedGradients, dict(n_steps=5, method="riemann_trapezoid"), None),
    "gradient_shap": (GradientShap, dict(n_samples=3, stdevs=0.05), 0),
    "nt_ig": (
        lambda f: NoiseTunnel(IntegratedGradients(f)),
        dict(n_steps=3, nt_samples=2, stdevs=0.1),
        0,
    ),
    "feature_ablation": (FeatureAblation, dict(perturbations_per_eval=17), None),
    "shapley_sampling": (
        ShapleyValueSampling,
        dict(n_samples=2, perturbations_per_eval=17),
        0,
    ),
}


@pytest.mark.parametrize("name", list(METHODS))
def test_plus_equals_direct_sum_per_method(name: str) -> None:
    model = make_model("cls", depth=2)
    x = images("cls")
    make, kwargs, seed = METHODS[name]
    kwargs = dict(kwargs)
    base_images = None
    per_layer = lambda layer, s: {}  # noqa: E731
    if name == "gradient_shap":
        base_images = images("cls", b=3, seed=7)
        base_states, _ = hand_states(model, base_images)
        per_layer = lambda k, s: {"baselines": base_states[k]}  # noqa: E731
    perturbation = name in ("feature_ablation", "shapley_sampling")
    n = model.patch_embed.num_patches
    oracle_kw = dict(kwargs)
    if perturbation:
        oracle_kw["feature_mask"] = token_mask(model, n)

    if seed is not None:
        torch.manual_seed(seed)
        np.random.seed(seed)
    call_kw = dict(kwargs)
    if base_images is not None:
        call_kw["baselines"] = base_images
    attr = PLUSWrapper(make(model)).attribute(x, target=2, **call_kw)
    want = direct_plus(
        model,
        x,
        make,
        [0, 1],
        seed=seed,
        per_layer_kwargs=per_layer,
        target=2,
        **oracle_kw,
    )
    assert_close(grid_of(attr, model), want, tol=1e-4)


# ------------------------------------------------------------------ SkipPLUS


@pytest.mark.parametrize("depth, expected", [(12, list(range(6, 12))), (7, [4, 5, 6])])
def test_skipplus_uses_exactly_the_second_half(depth: int, expected: List[int]):
    model = make_model("cls", depth=depth)
    x = images("cls")
    skip = SkipPLUSWrapper(InputXGradient(model))
    assert skip.layers == expected == skipplus_layers(depth)
    got = grid_of(skip.attribute(x, target=0), model)
    assert_close(got, direct_plus(model, x, InputXGradient, expected, target=0))
    # one block more or less is visibly different
    wider = direct_plus(
        model, x, InputXGradient, [expected[0] - 1] + expected, target=0
    )
    narrower = direct_plus(model, x, InputXGradient, expected[1:], target=0)
    assert float((got - wider).abs().max()) > 1e-4 * float(got.abs().max())
    assert float((got - narrower).abs().max()) > 1e-4 * float(got.abs().max())


def test_skipplus_layers_rule() -> None:
    assert [skipplus_layers(n)[0] for n in (2, 3, 4, 5, 12, 24)] == [1, 2, 2, 3, 6, 12]
    assert all(skipplus_layers(n)[-1] == n - 1 for n in range(2, 30))
    assert all(skipplus_layers(n)[0] == math.ceil(n / 2) for n in range(2, 30))
    with pytest.raises(ValueError, match="num_layers"):
        skipplus_layers(1)


# --------------------------------------------------------------------- CAT


def test_ixg_plus_is_cat() -> None:
    """IxG∘PLUS = Σ_l Σ_d h_l ⊙ ∂y/∂h_l from one forward of the full model."""
    model = make_model("distilled", depth=4)
    x = images("distilled", b=3)
    target = torch.tensor([0, 4, 2])
    inputs: List[torch.Tensor] = []

    def grab(mod, args):
        args[0].retain_grad()
        inputs.append(args[0])

    handles = [blk.register_forward_pre_hook(grab) for blk in model.blocks]
    try:
        xr = x.clone().requires_grad_(True)
        y = model(xr).gather(1, target[:, None]).sum()
        grads = torch.autograd.grad(y, inputs)
    finally:
        for h in handles:
            h.remove()
    p = model.num_prefix_tokens
    cat = sum((h * g).sum(-1)[:, p:] for h, g in zip(inputs, grads)).detach()
    got = PLUSWrapper(InputXGradient(model)).attribute(x, target=target)
    assert_close(grid_of(got, model), cat)


# -------------------------------------------------------------- GenAtt, rollout


def genatt_oracle(model: nn.Module, x: torch.Tensor, target, layers) -> torch.Tensor:
    """Σ_l of GenAtt run separately on every hand-built f_l at x_l."""
    states, rope = hand_states(model, x)
    p, n_layers = model.num_prefix_tokens, len(model.blocks)
    t = states[0].shape[1]
    w = torch.zeros(t)
    if model.global_pool == "token":
        w[: 2 if getattr(model, "dist_token", None) is not None else 1] = 1.0
        w = w / w.sum()
    else:
        w[p:] = 1.0 / (t - p)
    total = 0
    for start in layers:
        h = states[start].clone().requires_grad_(True)
        blocks = list(range(start, n_layers))
        with torch.enable_grad(), record_attention(model, layers=blocks) as rec:
            if model.global_pool == "map":  # SigLIP: the pool by hand, read out
                hb = h
                for blk in model.blocks[start:]:
                    hb = blk(hb)
                logits, pool = map_pool_by_hand(model, model.norm(hb))
            else:
                logits, pool = HandSub(model, start, rope)(h), None
            obj = logits.gather(1, torch.as_tensor(target)[:, None]).sum()
            atts = [rec.attentions[k] for k in blocks]
            grads = torch.autograd.grad(
                obj, atts + ([pool] if pool is not None else [])
            )
        r = torch.eye(t).expand(x.shape[0], t, t)
        for a, g in zip(atts, grads):
            a_bar = (g * a.detach()).clamp(min=0).mean(1)
            r = r + a_bar @ r
        if pool is not None:
            rows = (grads[-1] * pool.detach()).clamp(min=0).mean(1).mean(1)
            wb = torch.cat([rows.new_zeros(rows.shape[0], t - rows.shape[1]), rows], 1)
        else:
            wb = w.expand(x.shape[0], t)
        total = total + torch.einsum("bt,bts->bs", wb, r)[:, p:]
    return total


def test_genatt_plus_equals_per_layer_genatt(family: str) -> None:
    model = make_model(family, depth=3)
    x = images(family)
    got = PLUSWrapper(GenAtt(model)).attribute(x, target=[1, 2])
    assert_close(grid_of(got, model), genatt_oracle(model, x, [1, 2], [0, 1, 2]))
    skip = SkipPLUSWrapper(GenAtt(model)).attribute(x, target=[1, 2])
    assert_close(grid_of(skip, model), genatt_oracle(model, x, [1, 2], [2]))
    # f_0 is the whole model: PLUS over layer 0 alone is GenAtt itself
    only0 = PLUSWrapper(GenAtt(model), layers=[0]).attribute(x, target=[1, 2])
    assert_close(only0, GenAtt(model).attribute(x, target=[1, 2]))


def test_rollout_plus_is_sum_of_rollouts_from_each_start() -> None:
    model = make_model("reg_gap", depth=3)
    x = images("reg_gap")
    got = PLUSWrapper(AttentionRollout(model, discard_ratio=0.2), layers=[0, 2])
    want = sum(
        AttentionRollout(model, discard_ratio=0.2, start_layer=s).attribute(x)
        for s in (0, 2)
    )
    assert_close(got.attribute(x), want)


# ------------------------------------------------------------- keywords


class Spy(Saliency):
    """Records what the wrapper passes to the wrapped method at every layer."""

    calls: List[dict] = []

    def attribute(self, inputs, target=None, **kwargs):  # type: ignore[override]
        Spy.calls.append(
            dict(
                forward=self.forward_func,
                inputs=inputs.detach(),
                target=target,
                **kwargs,
            )
        )
        return torch.zeros_like(inputs)


def test_keywords_and_baselines_reach_the_wrapped_method() -> None:
    model = make_model("cls", depth=3)
    x = images("cls")
    base = images("cls", b=1, seed=5)
    states, _ = hand_states(model, x)
    bstates, _ = hand_states(model, base)
    Spy.calls = []
    PLUSWrapper(Spy(model), layers=[1, 2]).attribute(
        x, target=3, baselines=base, n_steps=7, internal_batch_size=2, foo="bar"
    )
    assert len(Spy.calls) == 2
    for call, l in zip(Spy.calls, [1, 2]):
        assert isinstance(call["forward"], ViTSubNetwork)
        assert call["forward"].start == l
        assert call["n_steps"] == 7 and call["internal_batch_size"] == 2
        assert call["foo"] == "bar"
        assert call["target"].tolist() == [3, 3]
        assert_close(call["inputs"], states[l])
        assert_close(call["baselines"], bstates[l])  # image baseline seen at layer l
    # scalar and per-layer callable baselines
    Spy.calls = []
    seen = []
    PLUSWrapper(Spy(model), layers=[0, 2]).attribute(
        x, baselines=lambda k, h: seen.append(k) or 0.25
    )
    assert seen == [0, 2] and [c["baselines"] for c in Spy.calls] == [0.25, 0.25]
    # target=None explains the predicted class
    assert Spy.calls[0]["target"].tolist() == model(x).argmax(1).tolist()


def test_ig_keywords_change_the_result_as_in_captum() -> None:
    model = make_model("cls", depth=2)
    x = images("cls")
    plus = PLUSWrapper(IntegratedGradients(model))
    a3 = grid_of(plus.attribute(x, target=1, n_steps=3, baselines=0.5), model)
    want = direct_plus(
        model, x, IntegratedGradients, [0, 1], target=1, n_steps=3, baselines=0.5
    )
    assert_close(a3, want)
    a3b = grid_of(
        plus.attribute(x, target=1, n_steps=3, baselines=0.5, internal_batch_size=2),
        model,
    )
    assert_close(a3b, want)
    a30 = grid_of(plus.attribute(x, target=1, n_steps=30, baselines=0.5), model)
    assert float((a30 - a3).abs().max()) > 1e-4 * float(a30.abs().max())


def test_feature_mask_groups_patches() -> None:
    model = make_model("cls", depth=2)
    x = images("cls")
    n = model.patch_embed.num_patches
    groups = (torch.arange(n) >= n // 2).long()[None]  # two halves
    got = PLUSWrapper(FeatureAblation(model)).attribute(
        x, target=0, feature_mask=groups.reshape(1, 4, 4)
    )
    g = grid_of(got, model)
    assert torch.allclose(g[:, : n // 2], g[:, :1].expand(-1, n // 2))
    mask = torch.cat([torch.tensor([[0]]), groups + 1], 1)[..., None]
    mask = mask.expand(1, n + 1, model.embed_dim).contiguous()
    want = direct_plus(model, x, FeatureAblation, [0, 1], target=0, feature_mask=mask)
    assert_close(g, want)
    assert token_feature_mask(1, 3, patch_groups=groups).is_contiguous()


def test_token_level_shapley_equals_exact_enumeration() -> None:
    """ShapleyValues with the default token mask at layer 1 vs enumeration."""
    model = make_model("cls", img_size=16, depth=2)
    x = images("cls", b=1, size=16)
    got = PLUSWrapper(ShapleyValues(model), layers=[1], token_reduction="mean")
    got = grid_of(got.attribute(x, target=1, perturbations_per_eval=40), model)[0]
    states, _ = hand_states(model, x)
    f = HandSub(model, 1)
    h = states[1][0]
    t = h.shape[0]

    subsets = [s for k in range(t + 1) for s in itertools.combinations(range(t), k)]
    z = torch.zeros(len(subsets), *h.shape)
    for i, s in enumerate(subsets):
        z[i, list(s)] = h[list(s)]
    with torch.no_grad():
        value = dict(zip(subsets, f(z)[:, 1].tolist()))
    phi = torch.zeros(t)
    for i in range(t):
        others = [j for j in range(t) if j != i]
        for k in range(t):
            for s in itertools.combinations(others, k):
                wgt = math.factorial(k) * math.factorial(t - k - 1) / math.factorial(t)
                phi[i] += wgt * (value[tuple(sorted(s + (i,)))] - value[s])
    assert_close(got, phi[1:], tol=1e-4)


# ----------------------------------------------------- batch, families, NoiseTunnel


def test_batch_equals_per_sample() -> None:
    model = make_model("reg_gap", depth=4)
    x = images("reg_gap", b=3)
    target = [0, 3, 4]
    for plus, kw in [
        (SkipPLUSWrapper(IntegratedGradients(model)), dict(n_steps=4)),
        (
            PLUSWrapper(FeatureAblation(model), layers=[3]),
            dict(perturbations_per_eval=20),
        ),
        (PLUSWrapper(GenAtt(model)), {}),
    ]:
        batch = plus.attribute(x, target=target, **kw)
        single = torch.cat(
            [plus.attribute(x[i : i + 1], target=target[i], **kw) for i in range(3)]
        )
        assert_close(batch, single, tol=1e-4)


def test_eva_at_another_image_size_uses_its_grid() -> None:
    model = make_model("eva", depth=2, dynamic_img_size=True)
    x = images("eva", size=42)  # 3x3 patches instead of the default 4x4
    got = PLUSWrapper(InputXGradient(model)).attribute(x, target=1)
    want = direct_plus(model, x, InputXGradient, [0, 1], target=1)
    assert got.shape == x.shape
    assert_close(grid_of(got, model), want)


def test_noise_tunnel_around_skipplus() -> None:
    model = make_model("cls", depth=4)
    x = images("cls")
    skip = SkipPLUSWrapper(IntegratedGradients(model))
    torch.manual_seed(3)
    got = NoiseTunnel(skip).attribute(x, target=1, nt_samples=3, stdevs=0.2, n_steps=3)
    torch.manual_seed(3)
    noisy = x.repeat_interleave(3, 0) + torch.normal(0, torch.full((6, 3, 32, 32), 0.2))
    each = skip.attribute(noisy, target=1, n_steps=3)
    assert_close(got, each.reshape(2, 3, *x.shape[1:]).mean(1), tol=1e-4)


def test_class_plus_model_and_constructor_options() -> None:
    model = make_model("cls", depth=2)
    x = images("cls")
    a = PLUSWrapper(
        IntegratedGradients, model=model, init_kwargs={"multiply_by_inputs": False}
    ).attribute(x, target=0, n_steps=3)
    b = PLUSWrapper(IntegratedGradients(model, multiply_by_inputs=False)).attribute(
        x, target=0, n_steps=3
    )
    assert_close(a, b)
    assert not PLUSWrapper(IntegratedGradients(model, False)).multiplies_by_inputs
    c = PLUSWrapper(IntegratedGradients(model)).attribute(x, target=0, n_steps=3)
    assert float((a - c).abs().max()) > 0
    ig = IntegratedGradients(model)
    PLUSWrapper(ig).attribute(x, target=0, n_steps=2)
    assert ig.forward_func is model  # the wrapped attributor is not rebound
    out = PLUSWrapper(ig).attribute((x,), target=0, n_steps=2)
    assert isinstance(out, tuple) and out[0].shape == x.shape


def test_token_reductions() -> None:
    model = make_model("distilled", depth=2)
    x = images("distilled")
    for red, fn in [
        ("mean", lambda a: a.mean(-1)),
        ("abs_sum", lambda a: a.abs().sum(-1)),
        ("l2", lambda a: a.norm(dim=-1)),
        (lambda a: a.amax(-1), lambda a: a.amax(-1)),
    ]:
        for make, kw in [(InputXGradient, {}), (IntegratedGradients, {"n_steps": 2})]:
            got = PLUSWrapper(make(model), token_reduction=red)
            got = grid_of(got.attribute(x, target=1, **kw), model)
            want = direct_plus(model, x, make, [0, 1], reduce=fn, target=1, **kw)
            assert_close(got, want, tol=1e-4)
    bad = PLUSWrapper(InputXGradient(model), token_reduction=lambda a: a.sum())
    with pytest.raises(ValueError, match="token_reduction"):
        bad.attribute(x, target=1)


# ------------------------------------------------------------ model untouched


def test_model_unchanged_also_after_exceptions() -> None:
    model = make_model("cls", depth=3)
    model.blocks[0].attn.qkv.weight.requires_grad_(False)
    model.train()  # drop rates are 0: results stay deterministic
    x = images("cls")
    before = model_state(model)
    PLUSWrapper(IntegratedGradients(model)).attribute(x, target=0, n_steps=3)
    PLUSWrapper(GenAtt(model)).attribute(x, target=0)
    PLUSWrapper(AttentionRollout(model)).attribute(x)
    assert model_state(model) == before

    def boom(layer, hidden):
        if layer == 1:
            raise RuntimeError("boom")
        return 0.0

    with pytest.raises(RuntimeError, match="boom"):
        PLUSWrapper(IntegratedGradients(model)).attribute(x, target=0, baselines=boom)
    assert model_state(model) == before

    def explode(mod, args, out):
        raise RuntimeError("explode")

    for wrapper in (PLUSWrapper(GenAtt(model)), PLUSWrapper(Saliency(model))):
        handle = model.blocks[-1].register_forward_hook(explode)
        try:
            with pytest.raises(RuntimeError, match="explode"):
                wrapper.attribute(x, target=0)
        finally:
            handle.remove()
        assert model_state(model) == before


# ---------------------------------------------------------------- bad input


def test_bad_input() -> None:
    model = make_model("cls", depth=3)
    x = images("cls")
    with pytest.raises(TypeError, match="attributor"):
        PLUSWrapper(IntegratedGradients(nn.Sequential(nn.Flatten(), nn.Linear(3, 2))))
    with pytest.raises(TypeError, match="attributor"):
        PLUSWrapper(IntegratedGradients(lambda z: model(z)))
    with pytest.raises(TypeError, match="attributor"):
        PLUSWrapper(model)
    with pytest.raises(TypeError, match="model"):
        PLUSWrapper(IntegratedGradients)
    with pytest.raises(TypeError, match="outside blocks"):
        PLUSWrapper(LayerIntegratedGradients(model, model.patch_embed))
    with pytest.raises(TypeError, match="block 1"):
        PLUSWrapper(LayerGradientXActivation(model, model.blocks[1].mlp))
    with pytest.raises(TypeError, match="attributor"):
        PLUSWrapper(PLUSWrapper(Saliency(model)))
    with pytest.raises(ValueError, match="layers"):
        PLUSWrapper(Saliency(model), layers=[0, 3])
    with pytest.raises(ValueError, match="layers"):
        PLUSWrapper(Saliency(model), layers=[-4])
    with pytest.raises(ValueError, match="layers"):
        PLUSWrapper(Saliency(model), layers=[1, -2])
    with pytest.raises(ValueError, match="token_reduction"):
        PLUSWrapper(Saliency(model), token_reduction="max")
    with pytest.raises(ValueError, match="start_layer"):
        PLUSWrapper(AttentionRollout(model, start_layer=1))
    with pytest.raises(ValueError, match="num_layers"):
        SkipPLUSWrapper(Saliency(make_model("cls", depth=1)))
    plus = PLUSWrapper(IntegratedGradients(model))
    with pytest.raises(ValueError, match="target"):
        plus.attribute(x, target=5)
    with pytest.raises(ValueError, match="inputs"):
        plus.attribute(x[..., :16])
    with pytest.raises(ValueError, match="baselines"):
        plus.attribute(x, target=0, baselines=torch.zeros(2, 17, 32))
    with pytest.raises(ValueError, match="additional_forward_args"):
        plus.attribute(x, target=0, additional_forward_args=(1,))
    with pytest.raises(ValueError, match="return_convergence_delta"):
        plus.attribute(x, target=0, return_convergence_delta=True)
    with pytest.raises(ValueError, match="feature_mask"):
        PLUSWrapper(FeatureAblation(model)).attribute(
            x, target=0, feature_mask=torch.zeros(1, 15, dtype=torch.long)
        )
    with pytest.raises(ValueError, match="n_steps"):
        PLUSWrapper(GenAtt(model)).attribute(x, target=0, n_steps=3)
    with pytest.raises(ValueError, match="interpolate_mode"):
        plus.attribute(x, target=0, interpolate_mode="area")
