"""Noisy linear imputation (Rong et al., ICML 2022, "A consistent and efficient
evaluation strategy for attribution methods", ROAD).

Removed pixels are not replaced by a constant, whose shape would tell the model
which pixels were removed, but imputed from their neighbours: every removed pixel
``u`` takes the weighted mean of its (up to 8) neighbours ``v`` inside the image,

``x_u = Σ_v w_v x_v / Σ_v w_v``,  ``w = 1/6`` (horizontal and vertical neighbours),
``w = 1/12`` (diagonal neighbours),

where neighbours may themselves be removed: all removed pixels are solved for at
once as one sparse linear system per image (the same system for every channel), and
Gaussian noise of standard deviation ``noise`` is added to the imputed pixels.

Use it through any metric's ``removal`` argument: ``removal="noisy_linear"`` or
``removal=NoisyLinearImputation(noise=0.01)``; :func:`captum_vit.metrics.road`
uses it by default.
"""

from __future__ import annotations

from typing import Any, Callable, Tuple

import numpy as np
import torch
from scipy.sparse import csc_matrix
from scipy.sparse.linalg import spsolve
from torch import Tensor

from .._utils import check_number
from . import _core

#: (row offset, column offset) and weight of the neighbours of a pixel.
NEIGHBOURS: Tuple[Tuple[Tuple[int, int], float], ...] = (
    ((-1, -1), 1 / 12),
    ((-1, 0), 1 / 6),
    ((-1, 1), 1 / 12),
    ((0, -1), 1 / 6),
    ((0, 1), 1 / 6),
    ((1, -1), 1 / 12),
    ((1, 0), 1 / 6),
    ((1, 1), 1 / 12),
)


def linear_imputation(image: Tensor, known: Tensor) -> Tensor:
    """Impute the unknown pixels of one image from their neighbours (no noise).

    Solves, for all unknown pixels at once, ``Σ_v w_v x_v − (Σ_v w_v) x_u = 0`` over
    the in-image neighbours ``v`` of every unknown pixel ``u`` (known neighbours move
    to the right-hand side), in float64 with scipy's sparse LU solver. When no pixel
    is known the system has no unique solution and the image is filled with zeros.

    Args:
        image: (C, H, W) image.
        known: (H, W) boolean, True where the pixel is kept.

    Returns:
        A (C, H, W) image equal to ``image`` at known pixels.

    Examples::

        >>> known = torch.rand(32, 32) > 0.5
        >>> filled = linear_imputation(image, known)
    """
    c, h, w = image.shape
    known_flat = known.reshape(-1).cpu().numpy()
    unknown = np.flatnonzero(~known_flat)
    n = unknown.size
    if n == 0:
        return image.clone()
    if n == h * w:
        return torch.zeros_like(image)
    img = image.detach().reshape(c, -1).T.cpu().double().numpy()  # (HW, C)
    var = np.full(h * w, -1, dtype=np.int64)
    var[unknown] = np.arange(n)
    r, col = unknown // w, unknown % w
    diag = np.zeros(n)
    rhs = np.zeros((n, c))
    rows, cols, vals = [], [], []
    for (dr, dc), weight in NEIGHBOURS:
        rr, cc = r + dr, col + dc
        inside = np.flatnonzero((rr >= 0) & (rr < h) & (cc >= 0) & (cc < w))
        nb = rr[inside] * w + cc[inside]
        diag[inside] -= weight
        is_known = known_flat[nb]
        rhs[inside[is_known]] -= weight * img[nb[is_known]]
        rows.append(inside[~is_known])
        cols.append(var[nb[~is_known]])
        vals.append(np.full(int((~is_known).sum()), weight))
    rows.append(np.arange(n))
    cols.append(np.arange(n))
    vals.append(diag)
    a = csc_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(n, n),
    )
    sol = np.asarray(spsolve(a, rhs)).reshape(n, c)
    out = img.copy()
    out[unknown] = sol
    return torch.as_tensor(out.T.reshape(c, h, w)).to(image)


class NoisyLinearImputation:
    """ROAD's noisy linear imputation as a metric ``removal``.

    Args:
        noise: Standard deviation of the Gaussian noise added to imputed pixels, in
            the model's input space (0.01 in Rong et al.'s code); 0 disables it.

    Examples::

        >>> from captum_vit.metrics import NoisyLinearImputation, deletion
        >>> deletion(model, images, attr, removal=NoisyLinearImputation(0.01))
    """

    def __init__(self, noise: float = 0.01) -> None:
        self.noise = check_number("noise", noise, 0.0)

    def __repr__(self) -> str:
        return f"NoisyLinearImputation(noise={self.noise})"

    def remover(
        self,
        forward_func: Callable,
        inputs: Tensor,
        args: Any,
        features: "_core.Features",
        seed: int,
    ) -> "ImputingRemover":
        """The metric engine's remover for one call."""
        return ImputingRemover(forward_func, inputs, args, features, self, seed)


class ImputingRemover:
    """Impute the pixels of removed features, then run the model.

    The noise is one seeded (C, H, W) field per call, the same for every row and
    sample, so a sample's score does not depend on its batch.
    """

    sort_by_count = False
    prefix_free = False

    def __init__(
        self,
        forward_func: Callable,
        inputs: Tensor,
        args: Any,
        features: "_core.Features",
        imputation: NoisyLinearImputation,
        seed: int,
    ) -> None:
        if inputs.dim() != 4:
            raise ValueError(
                "removal: imputation needs (B, C, H, W) image inputs, got shape "
                f"{tuple(inputs.shape)}"
            )
        self.forward_func, self.inputs, self.args = forward_func, inputs, args
        self.features = features
        z = torch.randn(inputs.shape[1:], generator=_core.generator(seed, 41))
        self.noise = (imputation.noise * z).to(inputs)

    def impute(self, index: Tensor, keep: Tensor) -> Tensor:
        """The imputed images of the rows, (m, C, H, W)."""
        m = index.numel()
        shape = self.inputs.shape[1:]
        ids = self.features.rows(index)
        mask = keep if ids is None else keep.gather(1, ids)
        mask = mask.reshape(m, *shape)
        known = mask.all(dim=1)
        if not bool((known == mask.any(dim=1)).all()):
            raise ValueError(
                "removal: imputation removes whole pixels, but the features split the "
                "channels of a pixel; use a feature_mask shared by the channels"
            )
        out = []
        for j in range(m):
            x = self.inputs[index[j]]
            filled = linear_imputation(x, known[j])
            out.append(torch.where(known[j], filled, filled + self.noise))
        return torch.stack(out)

    def __call__(self, index: Tensor, keep: Tensor) -> Tensor:
        x = self.impute(index, keep)
        args = _core.select_args(self.args, index, len(self.inputs))
        return _core.logits_of(self.forward_func(x, *args))  # HF: .logits


_core.IMPUTATIONS["noisy_linear"] = NoisyLinearImputation
