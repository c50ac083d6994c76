"""Grad-SAM: gradient self-attention maps (Barkan et al., CIKM 2021)."""

from __future__ import annotations

from typing import Tuple, Union

import torch
import torch.nn as nn
from captum.attr import GradientAttribution
from captum.log import log_usage
from torch import Tensor

from ..vit import (
    CLASS_HEAD,
    RECORDED_ATTENTION,
    ViTAdapter,
    record_attention,
    tokens_to_pixels,
)
from ._rollout import fused_pool_rows
from ._utils import (
    TargetType,
    check_choice,
    evaluates_model,
    format_target,
    head_readout,
    pack_output,
    require_autograd,
    unpack_inputs,
)

#: Which index of ``H_ij`` is the scored token (see :class:`GradSAM`).
READINGS = ["query", "key", "readout"]


class GradSAM(GradientAttribution):
    r"""Grad-SAM (Barkan et al., CIKM 2021): attention weighted by its positive
    gradient, summed over layers, heads and attention partners.

    One forward pass records the post-softmax attention ``A^{lh}`` of every block
    ``l`` and head ``h``; one backward pass of the target **logit** ``s``
    (``torch.autograd.grad`` w.r.t. the attention maps only: no parameter ``.grad``
    is written) gives ``G^{lh} = ∂s/∂A^{lh}``. Then, as the review of Kashefi et
    al. prints it (eqs. 9–11),

    ``H^{lh} = A^{lh} ⊙ ReLU(G^{lh})``,
    ``r_i = 1/(L·H·N) Σ_l Σ_h Σ_j [H^{lh}]_ij``,

    with ``L`` blocks, ``H`` heads and ``N`` the length of the token sequence (prefix
    tokens included: ``i`` and ``j`` run over every token). Patch token ``i``'s score
    is ``r_i``; prefix tokens are dropped from the map.

    **Query and key.** ``A_ij = softmax_j(q_i · k_j / √d)``: row ``i`` is the query,
    column ``j`` the key (every row sums to 1; the layout of timm, torchvision and
    Hugging Face, and of ``softmax(QKᵀ)`` in Vaswani et al., which Barkan et al.
    follow). Eq. 11 fixes ``i`` and sums over ``j``, so the default reading,
    ``reading="query"``, scores token ``i`` *as a query*: the gradient-weighted
    attention it pays to all keys, i.e. how much what token ``i`` gathers matters
    for the logit. Without the gradient every row would sum to 1 and all tokens would
    tie, so the map comes from the ``ReLU(G)`` weighting. Two other readings are in
    use and offered:

    - ``reading="key"``: ``r_j = 1/(L·H·N) Σ_l Σ_h Σ_i [H^{lh}]_ij``, token ``j``
      scored as a key (the gradient-weighted attention it receives from all
      queries);
    - ``reading="readout"``: only the row(s) the head reads, ``r_j = 1/(L·H)
      Σ_l Σ_h Σ_i w_i [H^{lh}]_ij`` with the head's readout weights ``w`` (the CLS
      row; the mean of the CLS and distillation rows for distilled DeiT; the mean of
      the pooled rows for average-pooled models; the pool's head-averaged attention
      for attention-pooled heads, as in :class:`~captum_vit.RawAttention`): the
      "CLS row" reading of attention-map methods (Chefer et al.'s baselines).

    These are different maps: per image, the query and readout readings correlate
    at r = −0.18 to 0.17 on random-weight ViTs and 0.71 to 0.95 on the embedded
    default (``benchmarks/chefer_baselines_compare.py``). Grad-SAM has no official
    code; eq. 11 evaluated on the attention and gradients saved by Chefer et al.'s
    reference ViT equals this (r = 1.0). The normalising constant does not change
    rankings.
    The model runs in eval mode (and eagerly, if compiled) for the call, its modes
    restored afterwards. Grad-SAM needs autograd: it cannot run inside
    ``torch.inference_mode()`` (``torch.no_grad()`` around the call is fine).

    Args:
        model: A supported ViT whose family records attention (see
            :class:`captum_vit.vit.ViTAdapter`), with a classifier head.
        reading: ``"query"`` (eq. 11 as printed, default), ``"key"`` or
            ``"readout"``.

    Raises:
        TypeError: an unsupported model, a family without recorded attention (Swin)
            or a model without classifier head.
        ValueError: an unknown ``reading``.

    Examples::

        >>> attr = GradSAM(model).attribute(images, target=labels)
        >>> grid = captum_vit.patch_scores(attr, model)
    """

    def __init__(self, model: nn.Module, reading: str = "query") -> None:
        self.adapter = ViTAdapter(model)
        self.adapter.require(RECORDED_ATTENTION, type(self).__name__)
        self.adapter.require(CLASS_HEAD, type(self).__name__)
        super().__init__(self.adapter.model)
        self.reading = check_choice("reading", reading, READINGS)

    @log_usage()
    @evaluates_model
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor]],
        target: TargetType = None,
        interpolate_mode: str = "nearest",
    ) -> Union[Tensor, Tuple[Tensor]]:
        r"""Grad-SAM score of every patch, spread over its pixels.

        Args:
            inputs: (B, C, H, W) images (or a 1-tuple of them).
            target: Class index: an int, a per-sample list or 1-D tensor; None
                explains the predicted class of each sample.
            interpolate_mode: ``"nearest"`` keeps maps patch-constant (exact for
                :func:`captum_vit.patch_scores`); ``"bilinear"`` for display.

        Returns:
            Attributions of the inputs' shape (and tuple-ness), non-negative.

        Raises:
            ValueError: bad image size or target.
            RuntimeError: inside ``torch.inference_mode()`` (Grad-SAM needs
                autograd).

        Examples::

            >>> attr = GradSAM(model, reading="readout").attribute(images, target=3)
        """
        images, was_tuple = unpack_inputs(inputs)
        grid = self.adapter.check_images(images)
        name = type(self).__name__
        require_autograd(name)
        if target is not None:
            t = format_target(target, images.shape[0], self.adapter.num_classes)
        # An input that requires grad makes the attention maps differentiable even
        # when every parameter is frozen; the model itself is not touched.
        x = images.detach().requires_grad_(True)
        with torch.enable_grad(), record_attention(self.adapter) as rec:
            logits = self.adapter.logits(x)
            if target is None:
                t = logits.argmax(dim=1)
            t = t.to(logits.device)
            grads = rec.grad(logits.gather(1, t[:, None]).sum())
        num_layers, _, heads, tokens, _ = (len(grads), *grads[0].shape)
        # Σ_l Σ_h H^{lh} = Σ_l Σ_h A ⊙ ReLU(G), in place on the gradients (ours)
        h = torch.zeros_like(grads[0][:, 0])  # (B, T, T)
        for a, g in zip(rec.attentions, grads):
            h += g.to(a.dtype).clamp_(min=0).mul_(a.detach()).sum(dim=1)
        if self.reading == "query":
            r = h.sum(dim=2)  # Σ_j H_ij
            scale = 1.0 / (num_layers * heads * tokens)
        elif self.reading == "key":
            r = h.sum(dim=1)  # Σ_i H_ij
            scale = 1.0 / (num_layers * heads * tokens)
        else:
            w = head_readout(
                self.adapter,
                rec,
                rec.attentions[0].detach()[:, 0],  # (B, T, T)
                lambda p: fused_pool_rows(p, "mean"),
            ).to(h)
            r = torch.einsum("bi,bij->bj", w, h)
            scale = 1.0 / (num_layers * heads)
        scores = r[:, self.adapter.num_prefix_tokens :] * scale
        return pack_output(
            tokens_to_pixels(scores.detach(), grid, images, interpolate_mode),
            was_tuple,
        )
