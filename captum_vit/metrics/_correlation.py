"""Correlation of attribution sums with output drops: faithfulness and sensitivity-n.

For random feature subsets S the metrics correlate ``sum_{i in S} phi_i`` with the
drop ``f(x) - f(x_{-S})`` of the target's score when S is removed, over the subsets
of one example. Faithfulness correlation (Bhatt et al., IJCAI 2020) draws subsets of
all sizes; sensitivity-n (Ancona et al., ICLR 2018) draws subsets of one size n.
Both run on the shared engine of :mod:`._core`.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor

from .._utils import check_choice, check_int
from . import _core
from ._core import BaselineType, TargetType
from ._docs import fill_doc

_CORRELATIONS = ("pearson", "spearman")


class _RandomSubsets:
    """L subset specs (size and seed each), the same subsets for every example."""

    def __init__(self, num: int, sizes: Tensor, seed: int) -> None:
        self.num = num
        self.sizes = sizes.long().cpu()
        self.seeds = torch.randint(
            0, 2**62, (sizes.numel(),), generator=_core.generator(seed, 23)
        )

    def removed(self, sample: Tensor, spec: Tensor) -> Tensor:
        """(m, F) boolean masks of the removed features of the given rows."""
        out = torch.zeros(spec.numel(), self.num, dtype=torch.bool)
        spec_cpu = spec.cpu()
        for u in torch.unique(spec_cpu).tolist():
            rows = torch.nonzero(spec_cpu == u).flatten()
            n = int(self.sizes[u])
            if n == 0:
                continue
            keys = torch.rand(self.num, generator=_core.generator(int(self.seeds[u])))
            idx = torch.argsort(keys)[:n]
            out[rows[:, None], idx[None, :]] = True
        return out.to(sample.device)

    def attribution_sums(self, attributions: Tensor, chunk: int = 256) -> Tensor:
        """(B, L) sums of the attributions over every subset."""
        sums = []
        device = attributions.device
        for start in range(0, self.sizes.numel(), chunk):
            spec = torch.arange(start, min(start + chunk, self.sizes.numel()))
            masks = self.removed(spec.to(device), spec).to(attributions.dtype)
            sums.append(attributions @ masks.to(device).T)
        return torch.cat(sums, dim=1)


class _GivenSubsets:
    """Explicit removal subsets, (L, F) shared or (B, L, F) per example."""

    def __init__(self, subsets: Any, batch: int, num: int) -> None:
        if not isinstance(subsets, Tensor) or subsets.dtype != torch.bool:
            raise TypeError(
                "subsets: expected a boolean tensor (L, F) or (B, L, F) of removed "
                "features"
            )
        if subsets.dim() == 2 and subsets.shape[1] == num:
            subsets = subsets.unsqueeze(0)
        if subsets.dim() != 3 or subsets.shape[0] not in (1, batch):
            raise ValueError(
                f"subsets: expected shape (L, {num}) or ({batch}, L, {num}), got "
                f"{tuple(subsets.shape)}"
            )
        if subsets.shape[2] != num or subsets.shape[1] < 2:
            raise ValueError(
                f"subsets: expected at least 2 subsets over {num} features, got shape "
                f"{tuple(subsets.shape)}"
            )
        self.subsets = subsets
        self.sizes = subsets.sum(dim=-1)  # (1 or B, L)

    def removed(self, sample: Tensor, spec: Tensor) -> Tensor:
        s = self.subsets.to(sample.device)
        b_idx = sample if s.shape[0] > 1 else torch.zeros_like(sample)
        return s[b_idx, spec.to(sample.device)]

    def attribution_sums(self, attributions: Tensor) -> Tensor:
        s = self.subsets.to(attributions.device, attributions.dtype)
        return (attributions[:, None, :] * s).sum(-1)


def _subset_correlations(
    setup: _core.Setup,
    subsets: Union[_RandomSubsets, _GivenSubsets],
    groups: int,
    correlation: str,
) -> Tensor:
    """Correlation per example and group of subsets, (B, groups)."""
    b = setup.batch
    device = setup.inputs.device
    num_specs = subsets.sizes.shape[-1]
    sample = torch.arange(b, device=device).repeat_interleave(num_specs)
    spec = torch.arange(num_specs, device=device).repeat(b)
    sizes = subsets.sizes.to(device)
    sizes = sizes.expand(b, num_specs) if sizes.dim() == 2 else sizes.expand(b, -1)
    kept = setup.num_features - sizes.reshape(-1)

    def make_keep(rows: Tensor) -> Tensor:
        return ~subsets.removed(sample[rows], spec[rows])

    scores = _core.evaluate(setup, sample, kept, make_keep, desc="subsets")
    drops = setup.clean_scores.to(device)[:, None] - scores.view(b, num_specs)
    sums = subsets.attribution_sums(setup.attributions).to(device)
    sums = sums.expand(b, num_specs)
    per = num_specs // groups
    fn = _core.pearson if correlation == "pearson" else _core.spearman
    out = [
        fn(sums[:, g * per : (g + 1) * per], drops[:, g * per : (g + 1) * per])
        for g in range(groups)
    ]
    return torch.stack(out, dim=1).float()


def _check_samples(n_samples: Any) -> int:
    """``n_samples`` random subsets: a correlation needs at least two."""
    n_samples = check_int("n_samples", n_samples, 1)
    if n_samples < 2:
        raise ValueError("n_samples: a correlation needs at least 2 subsets")
    return n_samples


def _check_size(name: str, n: Any, num: int) -> int:
    n = check_int(name, n)
    if not 1 <= n <= num:
        raise ValueError(
            f"{name}: subset size {n} must be between 1 and the number of features "
            f"({num})"
        )
    return n


@_core.evaluates_argument("forward_func")
@fill_doc
def faithfulness_correlation(
    forward_func: Callable,
    inputs: Tensor,
    attributions: Tensor,
    target: TargetType = None,
    additional_forward_args: Any = None,
    *,
    n_samples: int = 100,
    subset_size: Optional[int] = None,
    subsets: Optional[Tensor] = None,
    correlation: str = "pearson",
    feature_mask: Optional[Tensor] = None,
    removal: BaselineType = None,
    score: str = "probability",
    attribution_reduction: str = "sum",
    max_examples_per_batch: Optional[int] = None,
    seed: int = 0,
    show_progress: bool = False,
) -> Tensor:
    """Faithfulness correlation (Bhatt et al., IJCAI 2020).

    ``Corr_S( sum_{i in S} phi_i , f(x) - f(x_{-S}) )`` over ``n_samples`` random
    subsets S of one example. By default subset sizes are uniform over ``0 .. F``
    and, given its size, a subset is uniform: the distribution of the ViT Shapley
    paper's "Faith." column (Covert et al., ICLR 2023; use
    ``correlation="spearman"`` for its rank version). Bhatt et al. and Quantus use
    one fixed size: pass ``subset_size``. Higher is better, in [-1, 1].

    Guard: when the attribution sums or the output drops are constant over the
    subsets (e.g. constant attributions with a fixed subset size) the correlation is
    undefined and 0.0 is returned (no NaN).

    Args:
        {forward_func}
        {inputs}
        {attributions}
        {target}
        {additional_forward_args}
        n_samples: Number of random subsets per example (the ViT Shapley paper uses
            1000; Quantus 100).
        subset_size: Fixed subset size (1 .. F) instead of all sizes.
        subsets: Explicit removal subsets instead of random ones: a boolean tensor
            (L, F) shared by all examples or (B, L, F), True = removed. Overrides
            ``n_samples`` and ``subset_size``; useful to reproduce another tool's
            draws.
        correlation: ``"pearson"`` (default, Bhatt et al.) or ``"spearman"``.
        {feature_mask}
        {removal}
        {score}
        {attribution_reduction}
        {max_examples_per_batch}
        {seed}
        {show_progress}

    Returns:
        (B,) correlations.

    Examples::

        >>> from captum_vit.metrics import faithfulness_correlation
        >>> faithfulness_correlation(model, images, attr, n_samples=1000,
        ...                          correlation="spearman")   # ViT Shapley "Faith."
    """
    check_choice("correlation", correlation, _CORRELATIONS)
    n_samples = check_int("n_samples", n_samples, 1)
    if subset_size is not None:  # range checked once F is known
        check_int("subset_size", subset_size, 1)
    if subsets is None and n_samples < 2:
        raise ValueError("n_samples: a correlation needs at least 2 subsets")
    setup = _core.prepare_call(dict(locals()), "faithfulness_correlation")
    num = setup.num_features
    if subset_size is not None:  # validated also when `subsets` overrides it
        subset_size = _check_size("subset_size", subset_size, num)
    if subsets is not None:
        provider: Any = _GivenSubsets(subsets, setup.batch, num)
    else:
        if subset_size is None:
            sizes = torch.randint(
                0, num + 1, (n_samples,), generator=_core.generator(seed, 29)
            )
        else:
            sizes = torch.full(
                (n_samples,), _check_size("subset_size", subset_size, num)
            )
        provider = _RandomSubsets(num, sizes, seed)
    return _subset_correlations(setup, provider, 1, correlation)[:, 0]


@_core.evaluates_argument("forward_func")
@fill_doc
def sensitivity_n(
    forward_func: Callable,
    inputs: Tensor,
    attributions: Tensor,
    target: TargetType = None,
    additional_forward_args: Any = None,
    *,
    n: Union[int, Sequence[int]] = 1,
    n_samples: int = 100,
    correlation: str = "pearson",
    feature_mask: Optional[Tensor] = None,
    removal: BaselineType = None,
    score: str = "probability",
    attribution_reduction: str = "sum",
    max_examples_per_batch: Optional[int] = None,
    seed: int = 0,
    show_progress: bool = False,
) -> Tensor:
    """Sensitivity-n (Ancona et al., ICLR 2018).

    For each subset size n, the Pearson correlation over ``n_samples`` random
    subsets S with ``|S| = n`` between ``sum_{i in S} phi_i`` and the drop
    ``f(x) - f(x_{-S})`` (ViT Shapley, Covert et al. 2023, appendix G, evaluates
    n = 14, 28, ..., 182 patches with 1000 subsets). Exact attributions of an
    additive model score 1 for every n. Several sizes are evaluated in one batched
    pass. Constant sums or drops give 0.0 (see :func:`faithfulness_correlation`).

    Args:
        {forward_func}
        {inputs}
        {attributions}
        {target}
        {additional_forward_args}
        n: Subset size, or a sequence of sizes (each 1 .. F).
        n_samples: Random subsets per example and size.
        correlation: ``"pearson"`` (default) or ``"spearman"``.
        {feature_mask}
        {removal}
        {score}
        {attribution_reduction}
        {max_examples_per_batch}
        {seed}
        {show_progress}

    Returns:
        (B,) correlations for an int ``n``; (B, len(n)) for a sequence.

    Examples::

        >>> from captum_vit.metrics import sensitivity_n
        >>> sensitivity_n(model, images, attr, n=list(range(14, 183, 14)))
    """
    check_choice("correlation", correlation, _CORRELATIONS)
    n_samples = _check_samples(n_samples)
    single = not isinstance(n, (list, tuple, range)) and not (
        isinstance(n, Tensor) and n.dim() > 0
    )
    if single:
        ns = [n]  # validated below (an integer-like scalar)
    elif isinstance(n, Tensor):
        ns = n.flatten().tolist()
    else:
        ns = list(n)
    if not ns:
        raise ValueError("n: expected at least one subset size")
    ns = [check_int("n", v, 1) for v in ns]  # range checked once F is known
    setup = _core.prepare_call(dict(locals()), "sensitivity_n")
    num = setup.num_features
    ns = [_check_size("n", v, num) for v in ns]
    out = _sensitivity(setup, ns, n_samples, seed, correlation)
    return out[:, 0] if single else out


def _sensitivity(
    setup: _core.Setup, ns: Sequence[int], n_samples: int, seed: int, correlation: str
) -> Tensor:
    """(B, len(ns)) sensitivity-n correlations, all sizes in one batched pass."""
    sizes = torch.tensor(list(ns), dtype=torch.long).repeat_interleave(n_samples)
    provider = _RandomSubsets(setup.num_features, sizes, seed)
    return _subset_correlations(setup, provider, len(ns), correlation)


class SensitivityNCurve(NamedTuple):
    """Result of :func:`sensitivity_n_sweep`.

    Attributes:
        n: (S,) subset sizes, increasing.
        fractions: (S,) the sizes as fractions of the F features.
        curve: (B, S) sensitivity-n of every sample at every size.
        mean: (B,) the mean of each sample's curve over the sizes.
    """

    n: Tensor
    fractions: Tensor
    curve: Tensor
    mean: Tensor


@_core.evaluates_argument("forward_func")
@fill_doc
def sensitivity_n_sweep(
    forward_func: Callable,
    inputs: Tensor,
    attributions: Tensor,
    target: TargetType = None,
    additional_forward_args: Any = None,
    *,
    fractions: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    n_samples: int = 100,
    correlation: str = "pearson",
    feature_mask: Optional[Tensor] = None,
    removal: BaselineType = None,
    score: str = "probability",
    attribution_reduction: str = "sum",
    max_examples_per_batch: Optional[int] = None,
    seed: int = 0,
    show_progress: bool = False,
) -> SensitivityNCurve:
    """Sensitivity-n over a sweep of subset sizes (Ancona et al., ICLR 2018).

    The papers report sensitivity-n as a curve over n (ViT Shapley, Covert et al.
    2023, figure 3: n = 14, 28, ..., 182 of 196 patches, i.e. about 7 % to 93 %).
    Here n runs over ``round(f · F)`` for the given ``fractions`` of the F features
    (clipped to 1 .. F; sizes that round to the same n are evaluated once), all
    sizes in one batched pass with the same subsets as :func:`sensitivity_n`
    (``sensitivity_n(..., n=list(result.n))`` gives ``result.curve``). The mean
    over the sizes is the single number of a table; keep the curve for plots.

    Args:
        {forward_func}
        {inputs}
        {attributions}
        {target}
        {additional_forward_args}
        fractions: Subset sizes as fractions of the features (default 10 % ... 90 %).
        n_samples: Random subsets per example and size (the ViT Shapley paper uses
            1000).
        correlation: ``"pearson"`` (default) or ``"spearman"``.
        {feature_mask}
        {removal}
        {score}
        {attribution_reduction}
        {max_examples_per_batch}
        {seed}
        {show_progress}

    Returns:
        A :class:`SensitivityNCurve` ``(n, fractions, curve, mean)``.

    Examples::

        >>> from captum_vit.metrics import sensitivity_n_sweep
        >>> res = sensitivity_n_sweep(model, images, attr, n_samples=1000)
        >>> res.mean              # (B,) table value
        >>> res.n, res.curve      # (S,) sizes and (B, S) curve
    """
    check_choice("correlation", correlation, _CORRELATIONS)
    n_samples = _check_samples(n_samples)
    f = _core.as_fractions(fractions)
    if f.numel() < 1 or not bool(((f > 0) & (f <= 1)).all()):
        raise ValueError(
            f"fractions: expected at least one fraction in (0, 1], got {f.tolist()}"
        )
    setup = _core.prepare_call(dict(locals()), "sensitivity_n_sweep")
    num = setup.num_features
    ns = sorted(set(torch.round(f * num).long().clamp(1, num).tolist()))
    curve = _sensitivity(setup, ns, n_samples, seed, correlation)
    n = torch.tensor(ns, dtype=torch.long)
    return SensitivityNCurve(
        n=n, fractions=(n.double() / num).float(), curve=curve, mean=curve.mean(dim=1)
    )
