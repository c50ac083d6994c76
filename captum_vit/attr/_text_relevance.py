"""Text-token relevance of an image–text score (Chefer et al. 2021b)."""

from __future__ import annotations

from typing import Any, List, NamedTuple, Optional, Sequence, Union

import torch
import torch.nn as nn
from captum.log import log_usage
from torch import Tensor

from .._guard import eval_mode, require_autograd
from .._utils import check_int
from ..vit import ViTAdapter, logits_of
from ..vit.text import TextTower
from ..vit.zero_shot import _image_side, _kind_of, check_prompts


class TextRelevanceOutput(NamedTuple):
    """What :meth:`TextRelevance.attribute` returns.

    Attributes:
        scores: (B, T) relevance of each token position of the explained text (zero
            after its pooled token on causal towers).
        token_ids: (B, T) the explained texts' token ids.
        tokens: Per image, the explained text's tokens up to its pooled token.
        target: (B,) index of the explained text.
        logits: (B, K) the image–text scores of every text.
    """

    scores: Tensor
    token_ids: Tensor
    tokens: List[List[str]]
    target: Tensor
    logits: Tensor


class TextRelevance:
    r"""Which words of a prompt made an image match it (Chefer et al. 2021b).

    The bi-modal generic attention explainability of Chefer, Gur and Wolf (ICCV 2021,
    "Generic Attention-model Explainability for Interpreting Bi-Modal and
    Encoder-Decoder Transformers") on the text side: for the score
    :math:`s = \text{logit\_scale} \cdot \cos(f(x), g(t))` (+ SigLIP's bias) of image
    :math:`x` and text :math:`t`, start from :math:`R = I` over the text tokens and,
    for every text block :math:`l \ge` ``start_layer``,

    .. math:: \bar A_l = \mathbb{E}_h\big[(\nabla_{A_l} s \odot A_l)^+\big],\qquad
              R \leftarrow R + \bar A_l R;

    the relevance of the tokens is the row of :math:`R` of the token the text
    embedding is read from (CLIP's end-of-text token, SigLIP's last position). The
    gradient flows through the text tower only; the image embedding is computed once
    without gradients.

    Args:
        model: Hugging Face ``CLIPModel`` / ``SiglipModel``, an OpenCLIP ``CLIP`` or
            the embedded image–text model.
        tokenizer: Its tokenizer (default: the model's own where it has one).
        start_layer: First text block used (negative counts from the end; ``-1``,
            the last block only, is the default of the authors' CLIP notebook; the
            paper uses every block: ``0``, the default here).

    Examples::

        >>> tr = TextRelevance(clip, tokenizer=processor)
        >>> out = tr.attribute(images, ["a dog on grass", "a cat"])
        >>> out.scores.shape, out.tokens[0]     # (B, T), ['<|startoftext|>', ...]
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Optional[Any] = None,
        start_layer: int = 0,
    ) -> None:
        self.text = TextTower(model, tokenizer)
        self.model = model
        n = self.text.num_layers
        self.start_layer = check_int("start_layer", start_layer, -n, n - 1) % n
        tower, self.projection, scale, bias = _image_side(model, _kind_of(model))
        self.tower = tower
        self.adapter = ViTAdapter(tower)
        self.logit_scale, self.logit_bias = scale, bias

    @log_usage()
    def attribute(
        self,
        inputs: Tensor,
        texts: Optional[Sequence[str]] = None,
        token_ids: Optional[Tensor] = None,
        target: Union[None, int, Sequence[int], Tensor] = None,
    ) -> TextRelevanceOutput:
        """Token relevance of text ``target[b]`` for image ``b``.

        Args:
            inputs: (B, C, H, W) images, as the image tower takes them.
            texts: The K candidate texts (or ``token_ids``).
            token_ids: (K, T) token ids instead of ``texts``.
            target: Which text to explain per image (an int for all, or B ints);
                default: each image's best-scoring text.

        Returns:
            A :class:`TextRelevanceOutput`.

        Raises:
            ValueError / TypeError: naming the argument (texts, token_ids, target,
                inputs).
        """
        require_autograd("TextRelevance")
        self.adapter.check_images(inputs)
        if (texts is None) == (token_ids is None):
            raise ValueError("texts: give texts or token_ids (one of them)")
        mask = None
        if texts is not None:
            ids, mask = self.text.tokenize(check_prompts(texts))
        else:
            if not isinstance(token_ids, Tensor) or token_ids.dim() != 2:
                raise TypeError("token_ids: expected a (K, T) integer tensor")
            ids = token_ids
        dev = inputs.device
        ids = ids.to(dev)
        mask = None if mask is None else mask.to(dev)
        b = inputs.shape[0]
        with eval_mode(self.model), torch.no_grad():
            img = logits_of(self.tower(inputs))
            if self.projection is not None:
                img = self.projection(img)
            img = img / img.norm(dim=-1, keepdim=True)
            txt = self.text.encode(ids, mask)
            txt = txt / txt.norm(dim=-1, keepdim=True)
            logits = self.logit_scale * img @ txt.t() + self.logit_bias
        tgt = self._target(target, logits)
        sel_ids = ids[tgt]
        sel_mask = None if mask is None else mask[tgt]
        atts: List[Optional[Tensor]] = [None] * self.text.num_layers

        def keep(i: int, probs: Tensor) -> None:
            atts[i] = probs

        with eval_mode(self.model), self.text.attention_probes(keep):
            with torch.enable_grad():
                feats = self.text.encode(sel_ids, sel_mask)
                feats = feats / feats.norm(dim=-1, keepdim=True)
                score = self.logit_scale * (feats * img).sum(-1) + self.logit_bias
                used = atts[self.start_layer :]
                grads = torch.autograd.grad(score.sum(), used)
        t = sel_ids.shape[1]
        rel = torch.eye(t, device=dev, dtype=img.dtype).expand(b, t, t).clone()
        for a, g in zip(used, grads):
            cam = (g.detach() * a.detach()).clamp(min=0).mean(dim=1)
            rel = rel + cam.to(rel.dtype) @ rel
        pool = self.text.pool_index(sel_ids)
        scores = rel[torch.arange(b, device=dev), pool]
        return TextRelevanceOutput(
            scores=scores.detach(),
            token_ids=sel_ids,
            tokens=self.text.token_strings(sel_ids.cpu()),
            target=tgt,
            logits=logits,
        )

    def _target(self, target: Any, logits: Tensor) -> Tensor:
        b, k = logits.shape
        if target is None:
            return logits.argmax(dim=-1)
        t = torch.as_tensor(target)
        if t.is_floating_point() or t.dtype == torch.bool:
            raise TypeError(f"target: expected integer text indices, got {t.dtype}")
        t = t.to(logits.device).long().reshape(-1)
        if t.numel() == 1:
            t = t.expand(b)
        if t.numel() != b:
            raise ValueError(f"target: expected 1 or {b} indices, got {t.numel()}")
        if bool(((t < 0) | (t >= k)).any()):
            raise ValueError(
                f"target: text indices must lie in [0, {k}), got {t.tolist()}"
            )
        return t.clone()


__all__ = ["TextRelevance", "TextRelevanceOutput"]
