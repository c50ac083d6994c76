"""Random coalitions of patches: keep masks drawn from a distribution over subsets.

Two distributions are used by ViT Shapley (Covert, Kim, Lee & Lee, ICLR 2023):

- :class:`UniformSizeSampler`: the size ``m ~ Unif{low..high}`` (default ``0..d``), then
  ``m`` members uniformly without replacement. Used to fine-tune the surrogate (every
  subset size equally often) and by faithfulness metrics.
- :class:`ShapleySampler`: the Shapley kernel
  ``p(s) ∝ 1 / (C(d, |s|) · |s| · (d − |s|))`` for ``0 < |s| < d``, i.e. the size ``m``
  with probability ``∝ 1 / (m (d − m))``, then ``m`` members uniformly. Used by the
  explainer loss and by KernelSHAP.

Both draw **exact** sizes (the members are the ``m`` smallest of ``d`` uniform keys),
and both can return *paired* samples: rows ``2k`` and ``2k + 1`` are complements, the
paired sampling trick of Covert & Lee (AISTATS 2021). Because the Shapley kernel is
symmetric in ``m ↔ d − m``, a paired sample keeps the kernel as its marginal.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor

__all__ = [
    "ShapleySampler",
    "UniformSizeSampler",
    "shapley_kernel_size_probs",
    "subsets_of_sizes",
]

Device = Union[str, torch.device, None]


def shapley_kernel_size_probs(num_players: int) -> Tensor:
    """Probability of each coalition size under the Shapley kernel.

    ``P(|s| = m) ∝ C(d, m) · 1 / (C(d, m) · m · (d − m)) = 1 / (m (d − m))`` for
    ``0 < m < d``, zero for ``m = 0`` and ``m = d``.

    Args:
        num_players: Number of players ``d >= 2``.

    Returns:
        A float64 tensor of length ``d + 1`` summing to 1.

    Raises:
        ValueError: ``num_players < 2`` (the kernel needs ``0 < m < d``).

    Examples::

        >>> shapley_kernel_size_probs(4)
        tensor([0.0000, 0.3750, 0.2500, 0.3750, 0.0000], dtype=torch.float64)
    """
    d = _check_players(num_players, minimum=2)
    m = torch.arange(d + 1, dtype=torch.float64)
    w = torch.zeros(d + 1, dtype=torch.float64)
    inner = m[1:d]
    w[1:d] = 1.0 / (inner * (d - inner))
    return w / w.sum()


def subsets_of_sizes(
    sizes: Tensor,
    num_players: int,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Uniformly random subsets with the given exact sizes.

    Args:
        sizes: (n,) integer sizes in ``[0, num_players]``.
        num_players: Number of players ``d``.
        generator: Optional ``torch.Generator`` (CPU) for reproducibility.

    Returns:
        An (n, d) boolean tensor on ``sizes``' device whose row ``i`` has exactly
        ``sizes[i]`` True entries, every such subset equally likely.

    Examples::

        >>> subsets_of_sizes(torch.tensor([0, 2, 4]), 4).sum(1)
        tensor([0, 2, 4])
    """
    d = _check_players(num_players)
    sizes = sizes.long()
    if sizes.dim() != 1:
        raise ValueError(
            f"sizes: expected a 1-D tensor, got shape {tuple(sizes.shape)}"
        )
    if sizes.numel() and (int(sizes.min()) < 0 or int(sizes.max()) > d):
        raise ValueError(f"sizes: expected values in [0, {d}]")
    keys = torch.rand(sizes.numel(), d, generator=generator)
    ranks = keys.argsort(dim=1).argsort(dim=1)
    return (ranks < sizes.cpu()[:, None]).to(sizes.device)


class _SubsetSampler:
    """Shared machinery: a size distribution, exact sizes, optional pairing."""

    def __init__(self, num_players: int, size_probs: Tensor) -> None:
        self.num_players = int(num_players)
        self.size_probs = size_probs

    def sample_sizes(
        self, n: int, generator: Optional[torch.Generator] = None
    ) -> Tensor:
        """Draw ``n`` coalition sizes (CPU long tensor)."""
        return torch.multinomial(
            self.size_probs.float(), n, replacement=True, generator=generator
        )

    def sample(
        self,
        n: int,
        paired: bool = False,
        generator: Optional[torch.Generator] = None,
        device: Device = None,
    ) -> Tensor:
        """Draw ``n`` keep masks.

        Args:
            n: Number of subsets (even when ``paired``).
            paired: If True, rows ``2k + 1`` are the complements of rows ``2k``.
            generator: Optional CPU ``torch.Generator`` for reproducibility.
            device: Device of the result (sampling itself runs on the CPU).

        Returns:
            An (n, d) boolean tensor, True = the patch is in the coalition (kept).

        Raises:
            ValueError: ``n`` is negative, or odd with ``paired=True``.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n: expected a non-negative int, got {n!r}")
        if paired and n % 2:
            raise ValueError(f"n: paired sampling needs an even number, got {n}")
        half = n // 2 if paired else n
        sizes = self.sample_sizes(half, generator)
        s = subsets_of_sizes(sizes, self.num_players, generator)
        if paired:
            s = torch.stack([s, ~s], dim=1).reshape(n, self.num_players)
        return s.to(device) if device is not None else s

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_players={self.num_players})"


class UniformSizeSampler(_SubsetSampler):
    """Subsets whose size is uniform on ``{low, ..., high}``, members uniform.

    With the default ``low=0, high=d`` this is the distribution
    ``p(s) = 1 / (C(d, |s|) · (d + 1))`` used to train the surrogate.

    Args:
        num_players: Number of players (patches) ``d``.
        low: Smallest size (default 0).
        high: Largest size (default ``d``).

    Examples::

        >>> sampler = UniformSizeSampler(16)
        >>> keep = sampler.sample(8, generator=torch.Generator().manual_seed(0))
        >>> keep.shape, keep.dtype
        (torch.Size([8, 16]), torch.bool)
    """

    def __init__(self, num_players: int, low: int = 0, high: Optional[int] = None):
        d = _check_players(num_players)
        high = d if high is None else int(high)
        if not 0 <= int(low) <= high <= d:
            raise ValueError(
                f"low/high: expected 0 <= low <= high <= {d}, got {low}, {high}"
            )
        probs = torch.zeros(d + 1, dtype=torch.float64)
        probs[int(low) : high + 1] = 1.0 / (high - int(low) + 1)
        super().__init__(d, probs)
        self.low, self.high = int(low), high


class ShapleySampler(_SubsetSampler):
    """Subsets from the Shapley kernel ``p(s) ∝ 1/(C(d,|s|)·|s|·(d−|s|))``.

    Sizes ``0 < m < d`` are drawn exactly from :func:`shapley_kernel_size_probs`, so the
    empty and full coalitions (which carry no information once the efficiency
    constraint fixes ``Σφ = v(1) − v(0)``) never occur.

    Args:
        num_players: Number of players (patches) ``d >= 2``.

    Examples::

        >>> sampler = ShapleySampler(16)
        >>> gen = torch.Generator().manual_seed(0)
        >>> s = sampler.sample(32, paired=True, generator=gen)
        >>> bool((s[0::2] ^ s[1::2]).all())     # each pair is complementary
        True
    """

    def __init__(self, num_players: int) -> None:
        super().__init__(num_players, shapley_kernel_size_probs(num_players))


def _check_players(num_players: int, minimum: int = 1) -> int:
    if isinstance(num_players, bool) or not isinstance(num_players, int):
        raise TypeError(f"num_players: expected an int, got {type(num_players)}")
    if num_players < minimum:
        raise ValueError(f"num_players: expected >= {minimum}, got {num_players}")
    return num_players
