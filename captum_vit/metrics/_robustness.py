"""Max-sensitivity: a thin wrapper over Captum's ``sensitivity_max``."""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

import torch
from captum.attr import GradientAttribution
from captum.metrics import sensitivity_max
from torch import Tensor

from .._guard import require_autograd
from .._utils import as_target, check_int, check_number, check_seed, format_target
from ..vit import CLASS_HEAD, ViTAdapter, is_supported_vit
from . import _core

#: Matrix norms by name (``torch.norm``); numbers, including ``inf``, are p-norms.
_NORMS = ("fro", "nuc")


def _check_target(target: Any, explainer: Any, inputs: Tensor) -> Any:
    """Integer-like ``target`` as an int or a long tensor, never negative; checked
    against the class count too when the explainer's forward function is a supported
    ViT."""
    t = as_target(target)
    if t is None:
        return None
    owner = getattr(explainer, "__self__", explainer)  # a bound .attribute
    model = getattr(owner, "forward_func", None)
    if is_supported_vit(model):
        adapter = ViTAdapter(model)
        adapter.require(CLASS_HEAD, "max_sensitivity(target=...)")
        checked = format_target(t, inputs.shape[0], adapter.num_classes)
        return t if isinstance(t, int) else checked.to(inputs.device)
    if (t < 0) if isinstance(t, int) else bool((t < 0).any()):
        raise ValueError(f"target: class indices must be >= 0, got {target!r}")
    return t if isinstance(t, int) else t.to(inputs.device)


@_core.evaluates_argument("explainer")
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
        target: Target class(es), passed to the explainer (expanded by Captum);
            NumPy integers and arrays become an int or a long tensor.
        n_perturb_samples: Number of perturbations per example (TIS: 10).
        perturb_radius: L-infinity radius of the perturbations (TIS: 0.02).
        norm_ord: Norm of the explanation difference (Captum's ``norm_ord``):
            ``"fro"``, ``"nuc"`` or a number (``inf`` allowed, NaN refused).
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
    seed = check_seed("seed", seed)
    n_perturb_samples = check_int("n_perturb_samples", n_perturb_samples, 1)
    perturb_radius = check_number("perturb_radius", perturb_radius, 0.0)
    if max_examples_per_batch is not None:
        max_examples_per_batch = check_int(
            "max_examples_per_batch", max_examples_per_batch, 1
        )
    if not (isinstance(norm_ord, str) and norm_ord in _NORMS):
        if isinstance(norm_ord, str):
            raise ValueError(
                f"norm_ord: expected one of {_NORMS} or a number, got {norm_ord!r}"
            )
        norm_ord = check_number("norm_ord", norm_ord, allow_inf=True)
    target = _check_target(target, explainer, inputs)
    owner = getattr(explainer, "__self__", explainer)
    if isinstance(owner, GradientAttribution):
        require_autograd(type(owner).__name__)
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
