"""Max-sensitivity: a thin wrapper over Captum's ``sensitivity_max``."""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

import torch
from captum.metrics import sensitivity_max
from torch import Tensor

from . import _core


def max_sensitivity(
    explainer: Union[Callable[..., Any], Any],
    inputs: Tensor,
    target: _core.TargetType = None,
    *,
    n_perturb_samples: int = 10,
    perturb_radius: float = 0.02,
    norm_ord: Union[str, float] = "fro",
    max_examples_per_batch: Optional[int] = None,
    seed: int = 0,
    **kwargs: Any,
) -> Tensor:
    """Max-sensitivity (Yeh et al., NeurIPS 2019) with the TIS settings.

    Calls :func:`captum.metrics.sensitivity_max` with 10 perturbations drawn
    uniformly from the L-infinity ball of radius 0.02 (Englebert et al. 2023), seeded
    without touching the global random state. Works with any Captum attributor and
    every captum_vit attributor: pass the attributor itself (its ``attribute`` is
    called) or any explanation function; 1-tuples of inputs/outputs are unwrapped, and
    per-example ``feature_mask`` / ``baselines`` keywords are repeated for the
    perturbed copies (Captum's ``sensitivity_max`` does not do that itself).

    Args:
        explainer: An attributor with an ``attribute`` method, or a callable
            ``f(inputs, **kwargs) -> attributions``.
        inputs: (B, ...) input batch.
        target: Target class(es), passed to the explainer (expanded by Captum).
        n_perturb_samples: Number of perturbations per example (TIS: 10).
        perturb_radius: L-infinity radius of the perturbations (TIS: 0.02).
        norm_ord: Norm of the explanation difference (Captum's ``norm_ord``).
        max_examples_per_batch: Examples per explainer call (Captum semantics:
            at least B; None = all at once).
        seed: Seed of the perturbations.
        **kwargs: More keyword arguments for the explainer (``n_steps``,
            ``baselines``, ``additional_forward_args``, ...).

    Returns:
        (B,) max-sensitivity values (lower is more robust).

    Examples::

        >>> from captum.attr import Saliency
        >>> from captum_vit.metrics import max_sensitivity
        >>> max_sensitivity(Saliency(model), images, target=labels)
        >>> max_sensitivity(GenAtt(model), images, target=3)
    """
    inputs = _core.check_inputs(inputs)
    seed = _core.check_seed(seed)
    n_perturb_samples = _core.check_positive_int(
        n_perturb_samples, "n_perturb_samples", allow_none=False
    )
    if isinstance(perturb_radius, bool) or not isinstance(perturb_radius, (int, float)):
        raise TypeError(f"perturb_radius: expected a number, got {perturb_radius!r}")
    if perturb_radius < 0:
        raise ValueError(f"perturb_radius: expected >= 0, got {perturb_radius}")
    fn = getattr(explainer, "attribute", explainer)
    if not callable(fn):
        raise TypeError(
            "explainer: expected an attributor with .attribute or a callable"
        )
    batch = inputs.shape[0]
    per_example = {
        k: v
        for k, v in kwargs.items()
        if k in ("feature_mask", "baselines")
        and isinstance(v, Tensor)
        and v.dim() > 0
        and v.shape[0] == batch
        and batch > 1
    }

    def explain(x: Any, **kw: Any) -> Any:
        # Captum passes a 1-tuple first and expects the same tuple-ness back
        as_tuple = isinstance(x, tuple)
        x = x[0] if as_tuple and len(x) == 1 else x
        rows = x.shape[0]
        if rows != batch:
            for k, v in per_example.items():
                if k in kw and isinstance(kw[k], Tensor) and kw[k].shape[0] == batch:
                    kw[k] = v.repeat_interleave(rows // batch, dim=0)
        out = fn(x, **kw)
        if isinstance(out, tuple) and len(out) == 1:
            out = out[0]
        return (out,) if as_tuple else out

    if target is not None:
        kwargs["target"] = target
    devices = [inputs.device] if inputs.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return sensitivity_max(
            explain,
            inputs,
            perturb_radius=float(perturb_radius),
            n_perturb_samples=n_perturb_samples,
            norm_ord=norm_ord,
            max_examples_per_batch=max_examples_per_batch,
            **kwargs,
        )
