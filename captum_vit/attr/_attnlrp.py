"""AttnLRP (Achtibat et al., ICML 2024) and CP-LRP (Ali et al., ICML 2022): layer-wise
relevance propagation through a whole ViT as input × rule-modified gradient."""

from __future__ import annotations

from typing import Any, List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from captum.attr import GradientAttribution
from captum.log import log_usage
from torch import Tensor
from torch.autograd import Function

from ..vit import CLASS_HEAD, ViTAdapter
from ..vit.adapter import installed
from ..vit.lrp_sites import LRPSites, scale_gradient
from ._utils import (
    TargetType,
    all_finite,
    check_choice,
    check_number,
    evaluates_model,
    format_target,
    pack_output,
    require_autograd,
    unpack_inputs,
)

#: The variants: AttnLRP's rules, or CP-LRP's constant attention.
VARIANTS = ("attnlrp", "cp-lrp")

#: The gamma rule's stabiliser when ``epsilon`` is 0 (zennit's default).
_GAMMA_EPS = 1e-6


def _stabilize(x: Tensor, eps: float) -> Tensor:
    """``x + eps · sign(x)``, with sign(+0) = +1: never zero for ``eps > 0``."""
    return torch.copysign(torch.full((), eps, dtype=x.dtype, device=x.device), x).add_(
        x
    )


# ------------------------------------------------------------------------- rules
class _NormRule(Function):
    """Identity rule on a normalisation: ``1/std`` (``1/rms``) is a constant of the
    backward pass, so the gradient is ``(w ⊙ g - mean(w ⊙ g)) / std`` (no centring
    for RMSNorm). The forward output is the module's own."""

    @staticmethod
    def forward(ctx, x, y, weight, eps, centred):  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.eps, ctx.centred, ctx.has_weight = eps, centred, weight is not None
        return y.view_as(y)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        if ctx.centred:  # torch's fused kernel returns 1/std
            rstd = torch.native_layer_norm(x, x.shape[-1:], None, None, ctx.eps)[2]
        else:
            rstd = torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + ctx.eps)
        g = grad * weight if ctx.has_weight else grad
        if ctx.centred:
            g = g - g.mean(dim=-1, keepdim=True)
        return g.mul_(rstd), None, None, None, None


class _IdentityRule(Function):
    """Identity rule on an element-wise activation ``y = f(x)``: the relevance passes
    unchanged, i.e. the gradient is ``g ⊙ f(x) / x``."""

    @staticmethod
    def forward(ctx, x, y):  # type: ignore[override]
        # f(x)/x, exact, kept for the backward (one tensor, one product there);
        # where x = 0 the quotient is not finite and f(0) takes its place (0 for
        # GELU, SiLU, ReLU: the relevance there is 0)
        ratio = torch.div(y, x)
        if not all_finite(ratio):
            ratio = torch.where(x == 0, y, ratio)
        ctx.save_for_backward(ratio)
        return y.view_as(y)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (ratio,) = ctx.saved_tensors
        return grad * ratio, None


class _EpsilonRule(Function):
    """Epsilon rule on a linear layer's output ``z``: the gradient reaching the layer
    is ``g ⊙ z / (z + ε·sign(z))`` (then the layer's own, linear, backward)."""

    @staticmethod
    def forward(ctx, z, eps):  # type: ignore[override]
        ctx.save_for_backward(z)
        ctx.eps = eps
        return z.view_as(z)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (z,) = ctx.saved_tensors
        a = z.abs()  # z / (z + eps·sign(z)) = |z| / (|z| + eps)
        return grad * a.div_(a + ctx.eps), None


class _GammaRule(Function):
    """Generalised gamma rule (Montavon et al. 2019; Andéol et al. 2021, as zennit's
    ``Gamma``) on a linear or convolution module, in input × gradient form.

    Positive outputs share their relevance in proportion to
    ``(W + γW⁺)x⁺ + (W + γW⁻)x⁻ (+ b + γb⁺)``, negative outputs to
    ``(W + γW⁻)x⁺ + (W + γW⁺)x⁻ (+ b + γb⁻)``; the input relevance is divided by the
    input to give the gradient. With γ = 0 this is the epsilon rule.
    """

    @staticmethod
    def forward(ctx, x, y, module, gamma, eps):  # type: ignore[override]
        ctx.save_for_backward(x, y)
        ctx.module, ctx.gamma, ctx.eps = module, gamma, eps
        return y.view_as(y)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, y = ctx.saved_tensors
        m, gamma, eps = ctx.module, ctx.gamma, ctx.eps
        w = m.weight.detach()
        b = None if m.bias is None else m.bias.detach()
        wp, wn = w + gamma * w.clamp(min=0), w + gamma * w.clamp(max=0)
        bp = None if b is None else b + gamma * b.clamp(min=0)
        bn = None if b is None else b + gamma * b.clamp(max=0)
        if isinstance(m, nn.Conv2d):

            def fn(inp, weight, bias):
                return m._conv_forward(inp, weight, bias)

        else:
            fn = F.linear
        relevance = grad * y
        with torch.enable_grad():
            xp = x.detach().clamp(min=0).requires_grad_(True)
            xn = x.detach().clamp(max=0).requires_grad_(True)
            o1, o2 = fn(xp, wp, bp), fn(xn, wn, None)
            o3, o4 = fn(xp, wn, bn), fn(xn, wp, None)
            s_pos = relevance * (y > 0) / _stabilize((o1 + o2).detach(), eps)
            s_neg = relevance * (y < 0) / _stabilize((o3 + o4).detach(), eps)
            gp, gn = torch.autograd.grad(
                (o1, o2, o3, o4), (xp, xn), (s_pos, s_pos, s_neg, s_neg)
            )
        r = xp.detach() * gp + xn.detach() * gn
        return r.div_(torch.where(x == 0, 1.0, x)), None, None, None, None


# ------------------------------------------------------------------------ hooks
def _norm_hook(kind: str):
    def hook(module: nn.Module, args: Any, out: Tensor) -> Tensor:
        eps = getattr(module, "eps", None)
        if eps is None:  # nn.RMSNorm(eps=None): torch's default
            eps = torch.finfo(out.dtype).eps
        weight = getattr(module, "weight", None)
        return _NormRule.apply(
            args[0], out.detach(), weight, float(eps), kind == "layer"
        )

    return hook


def _identity_hook(module: nn.Module, args: Any, out: Tensor) -> Tensor:
    return _IdentityRule.apply(args[0], out.detach())


def _linear_hook(gamma: float, eps: float):
    def hook(module: nn.Module, args: Any, out: Tensor) -> Tensor:
        if gamma > 0:
            stab = eps if eps > 0 else _GAMMA_EPS
            return _GammaRule.apply(args[0], out.detach(), module, gamma, stab)
        return _EpsilonRule.apply(out, eps)

    return hook


def _product_hook(module: nn.Module, args: Any) -> Tuple[Any, ...]:
    return (scale_gradient(args[0], 0.5),) + tuple(args[1:])


def install_rules(
    sites: LRPSites,
    variant: str,
    epsilon: float,
    lin_gamma: float,
    conv_gamma: float,
    handles: List[Any],
) -> None:
    """Install the forward hooks that give every site its rule; append the handles.

    Args:
        sites: The model's sites (:meth:`ViTAdapter.lrp_sites`).
        variant: ``"attnlrp"`` or ``"cp-lrp"``.
        epsilon: The epsilon rule's stabiliser (0: the plain gradient, LRP-0).
        lin_gamma: Gamma of ``nn.Linear`` layers (0: epsilon rule).
        conv_gamma: Gamma of ``nn.Conv2d`` layers (0: epsilon rule).
        handles: Where the handles go.
    """
    for module, kind in sites.norms:
        handles.append(module.register_forward_hook(_norm_hook(kind)))
    for module in sites.activations:
        handles.append(module.register_forward_hook(_identity_hook))
    for module in sites.linears:
        gamma = conv_gamma if isinstance(module, nn.Conv2d) else lin_gamma
        if gamma > 0 or epsilon > 0:
            handles.append(module.register_forward_hook(_linear_hook(gamma, epsilon)))
    for module in sites.products:
        handles.append(module.register_forward_pre_hook(_product_hook))
    assert sites.attention is not None
    if variant == "attnlrp":
        sites.attention(0.25, 0.5, handles)
    else:
        sites.attention(0.0, 1.0, handles)


class AttnLRP(GradientAttribution):
    r"""AttnLRP (Achtibat et al., ICML 2024) or CP-LRP (Ali et al., ICML 2022)
    relevance of every input pixel.

    Both are computed the efficient way of the AttnLRP paper: one forward pass and
    one backward pass of the target **logit** through rule-modified functions, then
    input × gradient (``torch.autograd.grad`` with respect to the images only: no
    parameter ``.grad`` is written). The rules (``variant="attnlrp"``):

    - softmax: linearisation at its input, the bias term absorbed
      (``R_in = x ⊙ (R_out - s Σ R_out)``), which in the input × gradient framework
      is the softmax's own gradient;
    - attention matrix products ``q kᵀ`` and ``A v``: the uniform rule, half the
      relevance to each factor (the query and key receive a quarter, the value a
      half);
    - LayerNorm / RMSNorm: the identity rule on the normalisation (``1/std`` a
      constant), the mean subtraction and the affine part as linear layers;
    - element-wise activations (GELU, SiLU, ...): the identity rule;
    - element-wise products of two input-dependent factors (gated MLPs such as
      Eva-02's SwiGLU): the uniform rule;
    - linear layers: the epsilon rule (``epsilon``), or the generalised gamma rule
      with ``lin_gamma`` > 0 on ``nn.Linear`` and ``conv_gamma`` > 0 on the patch
      embedding's ``nn.Conv2d`` (its denominators stabilised by ε, or 1e-6 when
      ε = 0, zennit's default).

    ``variant="cp-lrp"`` treats the attention probabilities as constants in the
    backward pass (no relevance flows through the softmax to queries and keys; the
    value path gets all of it), Ali et al.'s conservative propagation; every other
    rule is the same (their LayerNorm rule is the identity rule above).

    **Gamma.** The defaults ``lin_gamma = conv_gamma = 0`` give the epsilon rule,
    which conserves relevance (below). The AttnLRP paper applies the gamma rule to
    ViTs to denoise their heatmaps and tunes γ per model; the LXT library's ViT
    example sweeps ``conv_gamma`` ∈ {0.1, 0.25, 100} and ``lin_gamma`` ∈ {0, 0.01,
    0.05, 0.1, 1} by eye. Pass the values you choose (e.g.
    ``AttnLRP(model, lin_gamma=0.05, conv_gamma=0.25)``). The gamma rule recomputes
    each layer on the positive and negative parts (four products and their
    gradients) in the backward pass. It reaches linear layers
    called as modules only: projections called functionally inside an attention
    module (torchvision's ``nn.MultiheadAttention``, BEiT's and Eva's ``qkv`` with
    separate biases) keep the plain gradient, as in LXT.

    **Conservation.** With the epsilon/identity rules, relevance is conserved layer
    by layer except for what biases absorb: the sum of the returned relevance equals
    the explained logit minus the relevance of every bias (linear and norm biases,
    the CLS/register tokens, position embeddings, BEiT's relative position bias) and,
    for ``"attnlrp"``, minus the bias terms of the softmax linearisations; the
    epsilon stabiliser absorbs a little more. For CP-LRP the softmax term is absent.

    Families (the adapter supplies their attention, norm and MLP modules): timm
    ``VisionTransformer`` (CLS, distilled, registers, average pooling), Eva and
    BEiT; torchvision ``VisionTransformer``; Hugging Face ViT, DeiT and DINOv2.
    Attention-pooled heads, max pooling, gated attention, Swin and modules without a
    rule raise the capability error. The hooks that apply the rules exist only for
    the call: the model's modules are left as found, also when the call raises. The
    model runs in eval mode (and eagerly, if compiled) for the call. The method
    needs autograd: it cannot run inside ``torch.inference_mode()``
    (``torch.no_grad()`` around the call is fine).

    Args:
        model: A supported ViT with a classifier head.
        variant: ``"attnlrp"`` (default) or ``"cp-lrp"``.
        epsilon: The epsilon rule's ε on linear layers (≥ 0). The default 0 is
            LRP-0, the plain gradient: in the input × gradient form no division
            occurs, so no stabiliser is needed; ε > 0 damps weak contributions
            (LRP-ε, each output's relevance scaled by ``|z| / (|z| + ε)``).
        lin_gamma: Gamma of the ``nn.Linear`` layers (≥ 0; 0: epsilon rule).
        conv_gamma: Gamma of the ``nn.Conv2d`` patch embedding (≥ 0; 0: epsilon
            rule).

    Raises:
        TypeError: an unsupported model ("AttnLRP needs AttnLRP rules for every
            module, which <family> ...") or a model without classifier head.
        ValueError: a bad ``variant``, ``epsilon`` or gamma.

    Examples::

        >>> attr = AttnLRP(model).attribute(images, target=labels)   # (B, C, H, W)
        >>> heat = attr.sum(1)                                       # pixel map
        >>> grid = captum_vit.patch_scores(attr, model)              # patch means
        >>> cp = AttnLRP(model, variant="cp-lrp").attribute(images, target=labels)
    """

    def __init__(
        self,
        model: nn.Module,
        variant: str = "attnlrp",
        epsilon: float = 0.0,
        lin_gamma: float = 0.0,
        conv_gamma: float = 0.0,
    ) -> None:
        self.variant = check_choice("variant", variant, VARIANTS)
        self.epsilon = check_number("epsilon", epsilon, 0.0)
        self.lin_gamma = check_number("lin_gamma", lin_gamma, 0.0)
        self.conv_gamma = check_number("conv_gamma", conv_gamma, 0.0)
        self.adapter = ViTAdapter(model)
        self.adapter.require(CLASS_HEAD, type(self).__name__)
        # the capability error, early; the sites are walked once (a walk costs about
        # a millisecond, a tenth of a small model's forward and backward)
        self._sites = self.adapter.lrp_sites(type(self).__name__)
        super().__init__(self.adapter.model)

    @property
    def multiplies_by_inputs(self) -> bool:
        return True

    @log_usage()
    @evaluates_model
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor]],
        target: TargetType = None,
    ) -> Union[Tensor, Tuple[Tensor]]:
        r"""Relevance of every input pixel and channel for the target logit.

        Args:
            inputs: (B, C, H, W) images (or a 1-tuple of them).
            target: Class index: an int, a per-sample list or 1-D tensor; None
                explains the predicted class of each sample.

        Returns:
            Signed relevance of the inputs' shape (and tuple-ness); sum over the
            channels for a heatmap.

        Raises:
            ValueError: bad image size or target.
            TypeError: images of another dtype than the model's (uint8 included).
            RuntimeError: inside ``torch.inference_mode()``.

        Examples::

            >>> attr = AttnLRP(model).attribute(images, target=3)
        """
        images, was_tuple = unpack_inputs(inputs)
        self.adapter.check_images(images)
        name = type(self).__name__
        require_autograd(name)
        t: Optional[Tensor] = None
        if target is not None:
            t = format_target(target, images.shape[0], self.adapter.num_classes)
        sites = self._sites
        x = images.detach().requires_grad_(True)
        with torch.enable_grad(), installed(
            lambda handles: install_rules(
                sites,
                self.variant,
                self.epsilon,
                self.lin_gamma,
                self.conv_gamma,
                handles,
            )
        ):
            logits = self.adapter.logits(x)
            if t is None:
                t = logits.argmax(dim=1)
            t = t.to(logits.device)
            objective = logits.gather(1, t[:, None]).sum()
            (grad,) = torch.autograd.grad(objective, x)
        return pack_output((x.detach() * grad).detach(), was_tuple)


__all__ = ["AttnLRP", "VARIANTS", "install_rules"]
