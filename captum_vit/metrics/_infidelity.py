"""Infidelity (Yeh et al., NeurIPS 2019) on the patch grid, through Captum.

Infidelity is the expected squared error between the attribution's prediction of an
output change, ``I . phi``, and the change itself, ``f(x) - f(x - I)``, over random
perturbations ``I``. :func:`infidelity` calls :func:`captum.metrics.infidelity` on the
*feature* space of the package's metrics (the patch grid of a ViT, or a Captum-style
``feature_mask``): Captum sees a (B, F) tensor, one entry per feature, and the
forward function it is given puts the perturbation back into the model's input.

- ``"square"`` (Yeh et al.'s square removal, on patches): ``I`` is the indicator of a
  random k x k square of patches; the perturbed input is the image with that square
  removed (by the metrics' ``removal``: token dropping by default on ViTs, or a pixel
  baseline), and ``I . phi`` is the sum of the square's patch attributions, the
  binary perturbation Captum's documentation prescribes for global attributions.
- ``"noise"`` (Gaussian noise, on patches): ``I_j ~ N(0, noise_std^2)`` per patch;
  the perturbed input is the image with every element of patch ``j`` shifted by
  ``-I_j``, and ``I . phi = sum_j I_j phi_j`` with ``phi_j`` the patch's summed
  attribution (the pixel-space dot product of a patch-constant perturbation).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from captum.metrics import infidelity as captum_infidelity
from torch import Tensor

from .._utils import check_choice, check_int, check_number
from . import _core
from ._core import BaselineType, TargetType
from ._docs import fill_doc

#: The patch-level perturbations of :func:`infidelity`.
PERTURBATIONS = ("square", "noise")


def default_square_size(grid: Any) -> int:
    """Side of the removed square in patches: a quarter of the grid's shorter side,
    rounded, at least 1 (2 on the default model's 8 x 8 grid, 4 on 14 x 14)."""
    return max(1, int(round(min(int(grid[0]), int(grid[1])) / 4)))


def perturbation_bank(
    kind: str,
    num_features: int,
    n_perturb_samples: int,
    *,
    grid: Optional[Any] = None,
    square_size: Optional[int] = None,
    noise_std: float = 0.1,
    seed: int = 0,
) -> Tensor:
    """The ``n_perturb_samples`` perturbations ``I`` of :func:`infidelity`, (S, F).

    Every example of a batch gets the same S perturbations (the package's rule: a
    sample's score does not depend on the rest of the batch).

    ``"square"``: row s is 1.0 on a ``square_size`` x ``square_size`` square of the
    row-major ``grid`` whose top-left patch ``(r, c)`` is drawn uniformly from the
    positions where the square fits (``torch.randint`` with a generator seeded by
    ``seed``: rows first, then columns), 0.0 elsewhere. ``"noise"``: ``noise_std``
    times standard normal draws (``torch.randn`` with the same kind of generator).

    Raises:
        ValueError: ``"square"`` without a grid, or a square larger than the grid.
    """
    check_choice("perturbation", kind, PERTURBATIONS)
    g = _core.generator(seed, 41)
    if kind == "noise":
        return noise_std * torch.randn(n_perturb_samples, num_features, generator=g)
    if grid is None:
        raise ValueError(
            "perturbation: 'square' removes squares of the ViT's patch grid; with a "
            "feature_mask or a model without a patch grid use perturbation='noise'"
        )
    gh, gw = int(grid[0]), int(grid[1])
    k = default_square_size(grid) if square_size is None else square_size
    if k > min(gh, gw):
        raise ValueError(
            f"square_size: {k} patches is larger than the {gh} x {gw} patch grid"
        )
    rows = torch.randint(0, gh - k + 1, (n_perturb_samples,), generator=g)
    cols = torch.randint(0, gw - k + 1, (n_perturb_samples,), generator=g)
    r = torch.arange(gh)[None, :, None]
    c = torch.arange(gw)[None, None, :]
    inside = (
        (r >= rows[:, None, None])
        & (r < rows[:, None, None] + k)
        & (c >= cols[:, None, None])
        & (c < cols[:, None, None] + k)
    )
    return inside.reshape(n_perturb_samples, gh * gw).float()


@_core.evaluates_argument("forward_func")
@fill_doc
def infidelity(
    forward_func: Callable,
    inputs: Tensor,
    attributions: Tensor,
    target: TargetType = None,
    additional_forward_args: Any = None,
    *,
    perturbation: str = "square",
    n_perturb_samples: int = 16,
    square_size: Optional[int] = None,
    noise_std: float = 0.1,
    normalize: bool = True,
    feature_mask: Optional[Tensor] = None,
    removal: BaselineType = None,
    score: str = "probability",
    attribution_reduction: str = "sum",
    max_examples_per_batch: Optional[int] = None,
    seed: int = 0,
    show_progress: bool = False,
) -> Tensor:
    """Infidelity (Yeh et al., NeurIPS 2019) with patch-level perturbations, computed
    by :func:`captum.metrics.infidelity`.

    ``INFD = E_I[(I . phi - (f(x) - f(x - I)))^2]`` over ``n_perturb_samples``
    perturbations ``I`` of the patches (see :func:`perturbation_bank`):
    ``"square"`` removes a random square of patches (``I`` its indicator, so
    ``I . phi`` is the square's summed attribution) and ``"noise"`` shifts every
    patch by a Gaussian amount. Lower is better. With ``normalize`` (default, and
    Yeh et al.'s comparison of methods) the attributions are first rescaled by the
    factor ``beta`` that minimises the value (Captum's ``normalize=True``), so maps
    on different scales compare; ``normalize=False`` is the raw value.

    Args:
        {forward_func}
        {inputs}
        {attributions}
        {target}
        {additional_forward_args}
        perturbation: ``"square"`` (square removal on the patch grid; needs a ViT
            patch grid) or ``"noise"`` (Gaussian noise per feature).
        n_perturb_samples: Perturbations per example (Captum's default is 10).
        square_size: Side of the removed square in patches (default: a quarter of
            the grid's shorter side, at least 1).
        noise_std: Standard deviation of the per-patch shift, in units of the
            model's input (``"noise"``).
        normalize: Rescale the attributions optimally first (Captum's
            ``normalize``).
        {feature_mask}
        {removal}
        {score}
        {attribution_reduction}
        {max_examples_per_batch}
        seed: Seed of the perturbations (and of a ``"uniform"`` baseline): the same
            seed gives the same result; every example gets the same perturbations,
            so a sample's score does not depend on the rest of the batch.
        {show_progress}

    Returns:
        (B,) infidelity values (>= 0; lower is better).

    Examples::

        >>> from captum_vit.metrics import infidelity
        >>> infidelity(model, images, attr, target=3)                  # squares
        >>> infidelity(model, images, attr, perturbation="noise", noise_std=0.2)
    """
    check_choice("perturbation", perturbation, PERTURBATIONS)
    n_perturb_samples = check_int("n_perturb_samples", n_perturb_samples, 1)
    if square_size is not None:
        square_size = check_int("square_size", square_size, 1)
    noise_std = check_number("noise_std", noise_std, 0.0, low_open=True)
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize: expected True or False, got {normalize!r}")
    setup = _core.prepare_call(dict(locals()), "infidelity")
    b, num = setup.batch, setup.num_features
    device = setup.inputs.device
    bank = perturbation_bank(
        perturbation,
        num,
        n_perturb_samples,
        grid=setup.features.grid,
        square_size=square_size,
        noise_std=noise_std,
        seed=seed,
    ).to(device, torch.float64)
    # Captum's arithmetic in float64: the normalised value is a difference of
    # near-equal sums (beta^2 a - 2 beta ab + b^2), lost in float32 rounding when
    # the map explains the changes well
    attr = setup.attributions.double()
    kind = setup.score

    def scores(outputs: Tensor) -> Tensor:
        out = outputs.double()
        return torch.softmax(out, dim=-1) if kind == "probability" else out

    def perturb(x: Tensor):
        # Captum passes each example repeated S times (repeat_interleave): row r is
        # perturbation r % S of example r // S
        i = bank[torch.arange(x.shape[0], device=device) % n_perturb_samples]
        return i, x - i

    bar = None
    if setup.show_progress:
        bar = _core.progress_bar(total=b * n_perturb_samples, desc="infidelity")

    if perturbation == "square":
        # Captum's inputs: feature presence (1 kept, 0 removed)
        start = torch.ones(b, num, device=device, dtype=torch.float64)

        def forward(z: Tensor) -> Tensor:
            sample = torch.arange(z.shape[0], device=device) // (z.shape[0] // b)
            keep = z > 0.5
            counts = keep.sum(dim=1)
            if bool((counts >= num).all()):  # Captum's clean pass
                return scores(setup.clean_outputs)[sample]
            if setup.remover.prefix_free and bool((counts <= 0).any()):
                raise ValueError(
                    "square_size: the square covers every patch, and token removal "
                    "cannot evaluate an empty token set on a ViT without prefix "
                    "tokens; use a smaller square or a pixel baseline"
                )
            outs = []
            for s in range(0, z.shape[0], setup.batch_size):
                rows = slice(s, s + setup.batch_size)
                outs.append(scores(setup.remover(sample[rows], keep[rows])))
                if bar is not None:
                    bar.update(int(z[rows].shape[0]))
            return torch.cat(outs)

    else:
        # Captum's inputs: a shift per feature, added to every element of it
        start = torch.zeros(b, num, device=device, dtype=torch.float64)
        x0 = setup.inputs
        ids = setup.features.ids

        def forward(u: Tensor) -> Tensor:
            sample = torch.arange(u.shape[0], device=device) // (u.shape[0] // b)
            if not bool(u.any()):  # Captum's clean pass
                return scores(setup.clean_outputs)[sample]
            outs = []
            for s in range(0, u.shape[0], setup.batch_size):
                idx = sample[s : s + setup.batch_size]
                shift = u[s : s + setup.batch_size]
                m = idx.numel()
                if ids is not None:
                    shift = shift.gather(1, setup.features.rows(idx))
                x = x0[idx] + shift.reshape(m, *x0.shape[1:]).to(x0.dtype)
                args = _core.select_args(additional_forward_args, idx, b)
                outs.append(scores(_core.logits_of(forward_func(x, *args))))
                if bar is not None:
                    bar.update(m)
            return torch.cat(outs)

    try:
        with torch.no_grad():
            out = captum_infidelity(
                forward,
                perturb,
                start,
                attr,
                target=setup.target,
                n_perturb_samples=n_perturb_samples,
                normalize=normalize,
            )
    finally:
        if bar is not None:
            bar.close()
    return out.float()
