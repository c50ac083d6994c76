"""Where AttnLRP's rules act in a model: the sites a family adapter supplies.

AttnLRP (Achtibat et al., ICML 2024) and CP-LRP (Ali et al., ICML 2022) are computed
as input × gradient through rule-modified functions: one forward pass, one backward
pass. Every rule is a change of the backward pass of one kind of operation, so a
family only has to say *where* those operations are:

- ``norms``: LayerNorm / RMSNorm modules (identity rule on the normalisation: the
  scale ``1/std`` is a constant of the backward pass);
- ``activations``: element-wise activation modules (identity rule);
- ``linears``: ``nn.Linear`` / ``nn.Conv2d`` modules called as modules (epsilon or
  gamma rule; a linear layer called functionally keeps the plain gradient, LRP-0);
- ``products``: modules whose input is the element-wise product of two
  input-dependent factors (a gated MLP; uniform rule: half the relevance to each);
- ``attention``: a function installing hooks that multiply the gradient reaching the
  query and key projections by ``qk`` and the value projection by ``v`` (AttnLRP:
  ``qk = 1/4``, ``v = 1/2``, the uniform rule of both matrix products; CP-LRP:
  ``qk = 0``, ``v = 1``, the attention probabilities treated as constants). The
  softmax itself keeps its gradient: in the input × gradient framework that *is*
  the paper's softmax rule (linearisation at the input, the bias term absorbed).

:func:`walk_sites` classifies a model's leaf modules into these kinds and names the
first module no rule covers; the families add what they know of their attention.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor
from torch.autograd import Function

#: Module packages whose parameter-free element-wise activations get the identity rule.
_ACTIVATION_PACKAGES = (
    "torch.nn.modules.activation",
    "timm.layers.activations",
    "timm.layers.activations_me",
    "transformers.activations",
)
#: Classes of those packages that are not element-wise activations.
_NOT_ACTIVATIONS = {
    "MultiheadAttention",
    "Softmax",
    "Softmax2d",
    "LogSoftmax",
    "Softmin",
    "GLU",
    "ClassInstantier",
}
#: Leaf modules that are the identity in eval mode or multiply by a parameter.
_PASS_THROUGH = {
    "Identity",
    "Dropout",
    "Dropout1d",
    "Dropout2d",
    "DropPath",
    "PatchDropout",
    "LayerScale",
    "Flatten",
}


def _pass_through(module: nn.Module) -> bool:
    name = type(module).__name__
    return name in _PASS_THROUGH or name.endswith(("LayerScale", "DropPath"))


@dataclass
class LRPSites:
    """The modules where AttnLRP's rules act (see the module docstring).

    Attributes:
        norms: Normalisation modules with their kind, ``"layer"`` (centred) or
            ``"rms"``.
        activations: Element-wise activation modules.
        linears: Linear and convolution modules called as modules.
        products: Modules whose first input is an element-wise product of two
            input-dependent factors.
        attention: ``attention(qk, v, handles)`` installs the attention hooks and
            appends their handles.
    """

    norms: List[Tuple[nn.Module, str]] = field(default_factory=list)
    activations: List[nn.Module] = field(default_factory=list)
    linears: List[nn.Module] = field(default_factory=list)
    products: List[nn.Module] = field(default_factory=list)
    attention: Optional[Callable[[float, float, List[Any]], None]] = None


def norm_kind(module: nn.Module) -> Optional[str]:
    """``"layer"`` for a LayerNorm over the last dimension, ``"rms"`` for an RMSNorm,
    None for anything else (a LayerNorm over several dimensions included)."""
    name = type(module).__name__.lower()
    shape = getattr(module, "normalized_shape", None)
    if shape is None and hasattr(module, "weight") and "rms" in name:
        shape = tuple(module.weight.shape)
    last_dim = shape is not None and len(tuple(shape)) == 1
    if isinstance(module, nn.LayerNorm) or name in ("layernorm", "layernormfp32"):
        return "layer" if last_dim else None
    if "rmsnorm" in name or name in ("rmsnorm", "rmsnormfp32"):
        return "rms" if last_dim else None
    return None


def is_activation(module: nn.Module) -> bool:
    """Whether ``module`` is a parameter-free element-wise activation."""
    cls = type(module)
    return (
        cls.__module__ in _ACTIVATION_PACKAGES
        and cls.__name__ not in _NOT_ACTIVATIONS
        and not any(True for _ in module.parameters(recurse=False))
    )


def walk_sites(
    model: nn.Module,
    containers: Callable[[nn.Module], bool],
    skip: Tuple[nn.Module, ...] = (),
) -> Tuple[LRPSites, Optional[str]]:
    """Classify the modules of ``model`` for AttnLRP's rules.

    Args:
        model: The model.
        containers: Whether a module with children is one whose own forward only
            adds, averages, reshapes or concatenates (or is handled by the family's
            attention hooks).
        skip: Modules handled by the family (their subtree is not visited).

    Returns:
        ``(sites, problem)``: the sites found (``attention`` left None) and the
        first module no rule covers (None when every module is covered).
    """
    sites = LRPSites()
    skipped = {id(m) for m in skip}
    stack = [("", model)]
    while stack:
        name, mod = stack.pop()
        if id(mod) in skipped:
            continue
        children = list(mod.named_children())
        kind = norm_kind(mod)
        where = f"{type(mod).__name__} at {name or '<model>'!r}"
        if kind is not None:
            sites.norms.append((mod, kind))
        elif isinstance(mod, (nn.Linear, nn.Conv2d)):
            sites.linears.append(mod)
        elif is_activation(mod):
            sites.activations.append(mod)
        elif _pass_through(mod) and not children:
            pass
        elif containers(mod):
            for n, c in reversed(children):
                stack.append((f"{name}.{n}" if name else n, c))
        else:
            return sites, f"a rule for {where}"
    return sites, None


# ----------------------------------------------------------- gradient functions
class _ScaleGradient(Function):
    """Identity forward; the backward multiplies the gradient by ``factor`` (a float
    or a tensor broadcasting against the last dimension)."""

    @staticmethod
    def forward(ctx, x: Tensor, factor: Any) -> Tensor:  # type: ignore[override]
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        factor = ctx.factor
        if isinstance(factor, Tensor):
            factor = factor.to(device=grad.device, dtype=grad.dtype)
        return grad * factor, None


def scale_gradient(x: Tensor, factor: Any) -> Tensor:
    """``x`` whose gradient is multiplied by ``factor`` in the backward pass (0
    detaches it; 1 returns ``x`` unchanged)."""
    if not isinstance(factor, Tensor):
        if factor == 1:
            return x
        if factor == 0:
            return x.detach()
    return _ScaleGradient.apply(x, factor)


def qkv_factors(width: int, qk: float, v: float) -> Tensor:
    """Per-channel gradient factors of a fused ``[q | k | v]`` projection output."""
    third = width // 3
    return torch.cat(
        [
            torch.full((2 * third,), float(qk)),
            torch.full((width - 2 * third,), float(v)),
        ]
    )


__all__ = [
    "LRPSites",
    "is_activation",
    "norm_kind",
    "qkv_factors",
    "scale_gradient",
    "walk_sites",
]
