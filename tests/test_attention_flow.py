"""AttentionFlow against networkx's maximum flow on the same attention graph.

The oracle builds the layered graph itself (one node per token per layer, capacities
``rownorm(0.5 * fuse(A) + 0.5 * I)`` from the recorded attention, the head's readout
weights as the capacities into a sink) and asks networkx (float capacities, no
rounding) for the maximum flow from every input patch token. The readout weights are
the per-family oracles of the rollout tests and of the library tests.
"""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch
from helpers import FAMILIES, OTHER_FAMILIES, image_size, make_model, model_state
from test_families import PREFIX, lib_readout
from test_rollout_genatt import _pool_rows, _readout

from captum_vit import AttentionFlow, ViTAdapter, patch_scores
from captum_vit.attr._attention_flow import (
    FLOW_SCALE,
    flow_rounding_bound,
    max_flows,
)
from captum_vit.vit import record_attention

pytestmark = pytest.mark.usefixtures("one_thread")

#: Every family that records attention (all but Swin).
RECORDING = tuple(FAMILIES) + tuple(f for f in OTHER_FAMILIES if f != "swin")
FUSE = {"mean": np.mean, "max": np.max, "min": np.min}


def _images(family: str, b: int = 2, seed: int = 1) -> torch.Tensor:
    s = image_size(family)
    return torch.randn(b, 3, s, s, generator=torch.Generator().manual_seed(seed))


def _oracle_readout(family, model, image, t, head_fusion):
    if family in PREFIX:
        return lib_readout(family, t)
    if model.global_pool == "map":
        return _pool_rows(model, image, head_fusion)
    return _readout(model, model.num_prefix_tokens, t)


def nx_flows(atts, readout, head_fusion, p):
    """Max flow from each input patch token (layer 0) to the sink, by networkx."""
    g = nx.DiGraph()
    t = atts[0].shape[-1]
    for layer, att in enumerate(atts):
        a = FUSE[head_fusion](att, axis=0)
        a = 0.5 * a + 0.5 * np.eye(t)
        a = a / a.sum(axis=1, keepdims=True)
        for i in range(t):
            for j in range(t):
                g.add_edge((layer, j), (layer + 1, i), capacity=float(a[i, j]))
    for i in range(t):
        if readout[i] > 0:
            g.add_edge((len(atts), i), "sink", capacity=float(readout[i]))
    return np.array([nx.maximum_flow_value(g, (0, j), "sink") for j in range(p, t)])


@pytest.mark.parametrize("family", RECORDING)
def test_equals_networkx_max_flow(family):
    model = make_model(family)
    x = _images(family)
    attr = AttentionFlow(model).attribute(x)
    grid = patch_scores(attr, model).reshape(len(x), -1).double().numpy()
    adapter = ViTAdapter(model)
    p = adapter.num_prefix_tokens
    with torch.no_grad(), record_attention(adapter) as rec:
        adapter.logits(x)
    t = rec.attentions[0].shape[-1]
    for b in range(len(x)):
        atts = [a[b].double().numpy() for a in rec.attentions]
        w = _oracle_readout(family, model, x[b], t, "mean")
        ref = nx_flows(atts, w, "mean", p)
        bound = flow_rounding_bound(len(atts), t, int((w > 0).sum()))
        # float32 output on top of the documented rounding bound
        np.testing.assert_allclose(grid[b], ref, rtol=0, atol=bound + 1e-6)
        assert (ref > 1e-3).all() and ref.std() > 0  # a non-trivial comparison
    # the batch equals each sample on its own; the map is patch-constant
    single = torch.cat([AttentionFlow(model).attribute(x[i : i + 1]) for i in range(2)])
    assert torch.equal(single, attr)
    gh, gw = adapter.grid_size
    cell = attr[:, 0].reshape(len(x), gh, x.shape[-2] // gh, gw, x.shape[-1] // gw)
    assert torch.equal(cell.amax(dim=(2, 4)), cell.amin(dim=(2, 4)))


@pytest.mark.parametrize("head_fusion", ["max", "min"])
@pytest.mark.parametrize("family", ["cls", "siglip"])
def test_head_fusions_equal_networkx(family, head_fusion):
    model = make_model(family, depth=3)
    x = _images(family, b=1, seed=2)
    attr = AttentionFlow(model, head_fusion=head_fusion).attribute(x)
    grid = patch_scores(attr, model).reshape(-1).double().numpy()
    adapter = ViTAdapter(model)
    with torch.no_grad(), record_attention(adapter) as rec:
        adapter.logits(x)
    atts = [a[0].double().numpy() for a in rec.attentions]
    t = atts[0].shape[-1]
    w = _oracle_readout(family, model, x[0], t, head_fusion)
    ref = nx_flows(atts, w, head_fusion, adapter.num_prefix_tokens)
    bound = flow_rounding_bound(len(atts), t, int((w > 0).sum()))
    np.testing.assert_allclose(grid, ref, rtol=0, atol=bound + 1e-6)


def test_hand_computed_graphs():
    eye = np.eye(2)
    half = np.full((2, 2), 0.5)
    e0 = np.array([1.0, 0.0])
    # identity then uniform: token 0 keeps its whole unit up to block 1, where the CLS
    # output node takes half of it; so does token 1
    np.testing.assert_allclose(
        max_flows(np.stack([eye, half]), e0, np.array([0, 1])), [0.5, 0.5]
    )
    # uniform then identity: each token reaches both nodes (0.5 each) but only node 0
    # feeds the output, through an edge of capacity 1
    np.testing.assert_allclose(
        max_flows(np.stack([half, eye]), e0, np.array([0, 1])), [0.5, 0.5]
    )
    # flow adds the bottlenecks of disjoint routes (rollout multiplies along them):
    # token 2 reaches node 0 (0.7, then 0.4 into the output) and node 2 (1, then 0.3)
    a1 = np.array([[0.3, 0.0, 0.7], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    a2 = np.array([[0.4, 0.3, 0.3], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    out = max_flows(np.stack([a1, a2]), np.array([1.0, 0, 0]), np.arange(3))
    np.testing.assert_allclose(out, [0.3, 0.3, 0.7], atol=1e-9)
    # the rounding to multiples of 1 / FLOW_SCALE stays inside the bound
    third = np.full((1, 3, 3), 1 / 3)
    got = max_flows(third, np.array([1.0, 0, 0]), np.arange(3))
    assert np.abs(got - 1 / 3).max() <= flow_rounding_bound(1, 3, 1)
    assert np.abs(got - 1 / 3).max() > 0  # 1/3 is not a multiple of 2**-30
    assert FLOW_SCALE == 2**30


def test_model_left_as_found_and_target_validated():
    model = make_model("cls")
    x = _images("cls")
    before = model_state(model)
    flow = AttentionFlow(model)
    a = flow.attribute(x, target=[1, 4])
    assert torch.equal(a, flow.attribute(x))  # class-agnostic
    assert torch.equal(flow.attribute((x,))[0], a)
    assert model_state(model) == before
    with pytest.raises(ValueError, match="target"):
        flow.attribute(x, target=5)  # 5 classes
    assert model_state(model) == before
    assert ((a >= 0) & (a <= 1 + flow_rounding_bound(2, 17, 1))).all()


def test_bad_arguments_and_capability():
    with pytest.raises(ValueError, match="head_fusion"):
        AttentionFlow(make_model("cls"), head_fusion="sum")
    swin = make_model("swin")
    with pytest.raises(TypeError) as err:
        AttentionFlow(swin)
    msg = str(err.value)
    assert "AttentionFlow" in msg and "recorded attention" in msg
    assert ViTAdapter(swin).family_name in msg


def test_hub_tokens_with_large_out_capacity_equal_networkx():
    """Every token attends to tokens 3 and 5: their out-capacity sums to ~8 (far
    above int32 once scaled), the flows still equal networkx's."""
    t, n_layers = 24, 3
    rng = np.random.default_rng(1)
    att = rng.random((n_layers, 1, t, t)) * 1e-3
    att[..., 3] += 1.0
    att[..., 5] += 0.5
    att /= att.sum(-1, keepdims=True)
    caps = 0.5 * att[:, 0] + 0.5 * np.eye(t)
    caps /= caps.sum(-1, keepdims=True)
    assert caps.sum(1).max() * FLOW_SCALE > 2**33
    for w in (np.full(t, 1.0 / t), np.eye(t)[3]):
        got = max_flows(caps, w, np.arange(t))
        ref = nx_flows(list(att), w, "mean", 0)
        bound = flow_rounding_bound(n_layers, t, int((w > 0).sum()))
        np.testing.assert_allclose(got, ref, rtol=0, atol=bound)
        assert ref[3] == pytest.approx(1.0)
