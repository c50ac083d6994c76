"""exact_shapley against closed-form games; KernelSHAP against exact_shapley."""

import math

import pytest
import torch

from captum_vit.shapley import all_coalitions, exact_shapley, kernel_shap

pytestmark = pytest.mark.usefixtures("one_thread")


def test_all_coalitions_enumerates_bits():
    s = all_coalitions(3)
    assert s.shape == (8, 3)
    assert s[5].tolist() == [True, False, True]  # 5 = 0b101
    assert len({tuple(r) for r in s.tolist()}) == 8


def test_additive_game_multiclass():
    w = torch.randn(12, 3, dtype=torch.float64)

    def game(s):
        return s.double() @ w + torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)

    phi = exact_shapley(game, 12)
    assert phi.shape == (12, 3)
    assert torch.allclose(phi, w, atol=1e-12)


def test_unanimity_game():
    d, team = 9, [1, 4, 6]

    def game(s):
        return s[:, team].all(dim=1).double()

    phi = exact_shapley(game, d)
    expected = torch.zeros(d, dtype=torch.float64)
    expected[team] = 1 / len(team)
    assert torch.allclose(phi, expected, atol=1e-12)


def test_majority_games():
    d = 11
    phi = exact_shapley(lambda s: (s.sum(1) > d // 2).double(), d)
    assert torch.allclose(phi, torch.full((d,), 1 / d, dtype=torch.float64))
    # weighted majority [3; 2, 1, 1]: Shapley-Shubik indices 2/3, 1/6, 1/6
    weights = torch.tensor([2.0, 1.0, 1.0], dtype=torch.float64)
    phi = exact_shapley(lambda s: (s.double() @ weights >= 3).double(), 3)
    assert torch.allclose(phi, torch.tensor([2 / 3, 1 / 6, 1 / 6], dtype=torch.float64))


def test_efficiency_and_symmetry_of_exact():
    torch.manual_seed(0)
    q = torch.randn(8, 8, dtype=torch.float64)

    def game(s):
        z = s.double()
        return torch.stack([torch.tanh(((z @ q) * z).sum(1)), z.sum(1) ** 2], dim=1)

    phi = exact_shapley(game, 8, batch_size=37)
    full, empty = game(torch.ones(1, 8, dtype=torch.bool)), game(
        torch.zeros(1, 8, dtype=torch.bool)
    )
    assert torch.allclose(phi.sum(0), (full - empty)[0], atol=1e-12)
    assert torch.allclose(phi[:, 1], torch.full((8,), 8.0, dtype=torch.float64))


def test_exact_rejects_bad_input():
    with pytest.raises(ValueError, match="num_players"):
        exact_shapley(lambda s: s.sum(1).double(), 17)
    with pytest.raises(ValueError, match="game"):
        exact_shapley(lambda s: s.double()[:1], 3)
    with pytest.raises(ValueError, match="non-finite"):
        exact_shapley(lambda s: s.sum(1).double() / 0 * 0, 3)


def _interaction_game(d=10, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, c, generator=g, dtype=torch.float64)
    q = torch.randn(c, d, d, generator=g, dtype=torch.float64) / d

    def game(s):
        z = s.double()
        quad = torch.einsum("nd,cde,ne->nc", z, q, z)
        return torch.softmax(z @ w * 0.5 + quad, dim=1)

    return game


def test_kernel_shap_converges_to_exact():
    d = 10
    game = _interaction_game(d)
    exact = exact_shapley(game, d)
    res = kernel_shap(game, d, batch_size=256, threshold=0.01, seed=3)
    assert res.converged and res.values.shape == (d, 3)
    assert res.num_evals < 1_000_000
    err = (res.values - exact).abs().max()
    span = (exact.amax(0) - exact.amin(0)).min()
    assert err < 0.03 * span
    for c in range(3):
        r = torch.corrcoef(torch.stack([res.values[:, c], exact[:, c]]))[0, 1]
        assert r > 0.999
    # the estimated std is honest: the true error is within a few std
    assert ((res.values - exact).abs() / res.std).max() < 6
    # efficiency holds exactly for every estimate
    full = game(torch.ones(1, d, dtype=torch.bool))[0]
    empty = game(torch.zeros(1, d, dtype=torch.bool))[0]
    assert torch.allclose(res.values.sum(0), full - empty, atol=1e-10)


def test_kernel_shap_paired_beats_unpaired_and_records_history():
    d = 10
    game = _interaction_game(d, seed=1)
    exact = exact_shapley(game, d)
    errs = {}
    for paired in (True, False):
        res = kernel_shap(
            game,
            d,
            batch_size=200,
            threshold=0,
            max_evals=4002,
            paired=paired,
            record_history=True,
            seed=4,
        )
        assert not res.converged and res.num_evals == 4002
        assert len(res.history) == 20 and res.history[-1][0] == 4002
        errs[paired] = float((res.values - exact).pow(2).sum())
    assert errs[True] < errs[False]


def test_kernel_shap_scalar_game_and_validation():
    res = kernel_shap(lambda s: s.double() @ torch.arange(6.0).double(), 6, seed=0)
    assert res.values.shape == (6,)
    assert torch.allclose(res.values, torch.arange(6.0).double(), atol=1e-8)
    with pytest.raises(ValueError, match="batch_size"):
        kernel_shap(lambda s: s.sum(1).double(), 6, batch_size=7)
    with pytest.raises(ValueError, match="converge_on"):
        kernel_shap(lambda s: s.double(), 6, converge_on=[9])
    with pytest.raises(ValueError, match="num_players"):
        kernel_shap(lambda s: s.sum(1).double(), 1)
    assert math.isfinite(float(res.std.max()))


def test_kernel_shap_callback_can_stop():
    seen = []

    def callback(n, values):
        seen.append((n, values.shape))
        return n >= 42

    res = kernel_shap(
        lambda s: s.double().sum(1) ** 2,
        5,
        batch_size=10,
        threshold=0,
        max_evals=10_000,
        callback=callback,
    )
    assert res.num_evals == 42 and not res.converged
    assert [n for n, _ in seen] == [12, 22, 32, 42] and seen[0][1] == (5, 1)
