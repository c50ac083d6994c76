"""Coalition samplers: exact size distributions, uniform members, pairing."""

import math

import pytest
import torch
from scipy.stats import chisquare

from captum_vit.shapley import (
    ShapleySampler,
    UniformSizeSampler,
    shapley_kernel_size_probs,
    subsets_of_sizes,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_kernel_size_probs_match_subset_weights():
    d = 7
    # p(s) ∝ 1/(C(d,|s|) |s| (d-|s|)) summed over the C(d, m) subsets of size m
    w = (
        [0.0]
        + [math.comb(d, m) / (math.comb(d, m) * m * (d - m)) for m in range(1, d)]
        + [0.0]
    )
    expected = torch.tensor(w, dtype=torch.float64) / sum(w)
    assert torch.allclose(shapley_kernel_size_probs(d), expected)
    assert shapley_kernel_size_probs(d)[[0, d]].eq(0).all()


@pytest.mark.parametrize("paired", [False, True])
def test_shapley_sampler_sizes_chi_square(paired):
    d, n = 16, 40000
    s = ShapleySampler(d).sample(n, paired=paired, generator=_gen(1))
    assert s.shape == (n, d) and s.dtype == torch.bool
    sizes = s.sum(1)
    assert int(sizes.min()) >= 1 and int(sizes.max()) <= d - 1  # never empty/full
    counts = torch.bincount(sizes, minlength=d + 1)[1:d].double()
    expected = shapley_kernel_size_probs(d)[1:d] * n
    assert chisquare(counts.numpy(), expected.numpy()).pvalue > 1e-3


def test_uniform_size_sampler_chi_square():
    d, n = 16, 34000
    s = UniformSizeSampler(d).sample(n, generator=_gen(2))
    counts = torch.bincount(s.sum(1), minlength=d + 1).double()
    assert chisquare(counts.numpy(), [n / (d + 1)] * (d + 1)).pvalue > 1e-3
    s = UniformSizeSampler(d, low=3, high=5).sample(3000, generator=_gen(3))
    assert set(s.sum(1).tolist()) == {3, 4, 5}


def test_members_are_uniform_given_size():
    d, n, m = 10, 20000, 3
    s = subsets_of_sizes(torch.full((n,), m), d, generator=_gen(4))
    assert s.sum(1).eq(m).all()
    counts = s.sum(0).double()
    assert chisquare(counts.numpy(), [n * m / d] * d).pvalue > 1e-3
    # pairs of members are uniform too (no positional bias in the rank trick)
    pair = (s[:, 0] & s[:, 1]).sum().item()
    expected = n * m * (m - 1) / (d * (d - 1))
    assert abs(pair - expected) < 5 * math.sqrt(expected)


def test_pairing_gives_complements():
    d = 12
    s = ShapleySampler(d).sample(64, paired=True, generator=_gen(5))
    assert torch.equal(s[1::2], ~s[0::2])
    assert s[0::2].sum(1).add(s[1::2].sum(1)).eq(d).all()
    u = UniformSizeSampler(d).sample(10, paired=True, generator=_gen(5))
    assert torch.equal(u[1::2], ~u[0::2])


def test_seeded_and_validated():
    a = ShapleySampler(8).sample(20, generator=_gen(7))
    b = ShapleySampler(8).sample(20, generator=_gen(7))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="n"):
        ShapleySampler(8).sample(5, paired=True)
    with pytest.raises(ValueError, match="num_players"):
        ShapleySampler(1)
    with pytest.raises(ValueError, match="low/high"):
        UniformSizeSampler(8, low=5, high=2)
    with pytest.raises(ValueError, match="sizes"):
        subsets_of_sizes(torch.tensor([9]), 8)
