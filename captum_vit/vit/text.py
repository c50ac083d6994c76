"""The text side of image–text models, for text-token relevance.

:class:`TextTower` is to the text transformer what :class:`~captum_vit.vit.ViTAdapter`
is to the image tower: tokenising prompts, the text embedding of token ids, the index
of the token the embedding is read from, the token strings, and the post-softmax
attention of every text block (with gradients) during a forward.

Served text towers:

- OpenCLIP ``CLIP`` (and the embedded image–text model, which has its layout):
  ``token_embedding`` + ``positional_embedding`` → ``transformer.resblocks`` (each
  with a batch-first ``nn.MultiheadAttention`` ``attn``, causal mask) → ``ln_final``
  → the features of the token ``text_pool_type`` names (``argmax``: the end-of-text
  token, the largest id) → ``text_projection``. Recording asks each attention module
  for its (K, heads, T, T) weights and, with grad enabled, recomputes its output from
  them (torch returns them outside the graph), as for torchvision's image blocks.
- Hugging Face ``CLIPModel``: ``text_model.encoder.layers`` (``self_attn`` returns its
  probabilities on the eager path, which recording switches on for the call); pooled
  at the end-of-text token; ``text_projection``.
- Hugging Face ``SiglipModel``: the same layers, bidirectional, pooled at the last
  position (then the text head).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from .adapter import installed, logits_of
from .families.hf import record_eager
from .families._mha import record_weights
from .zero_shot import _default_tokenizer, _kind_of


class TextTower:
    """Uniform view of an image–text model's text transformer.

    Args:
        model: Hugging Face ``CLIPModel`` / ``SiglipModel``, an OpenCLIP ``CLIP``, or
            the embedded image–text model.
        tokenizer: As for :class:`~captum_vit.ZeroShotClassifier` (default: the
            model's own, where it has one).

    Raises:
        TypeError: a model without a served text tower (one line).
    """

    def __init__(self, model: nn.Module, tokenizer: Optional[Any] = None) -> None:
        kind = _kind_of(model)
        if kind == "tower":
            raise TypeError(
                "model: an image tower alone has no text tower; pass the image-text "
                "model"
            )
        if kind == "open_clip" and not isinstance(
            getattr(model, "transformer", None), nn.Module
        ):
            raise TypeError(
                f"model: {type(model).__name__}'s text tower is not served (expected "
                "OpenCLIP's CLIP layout: token_embedding, transformer.resblocks, "
                "ln_final)"
            )
        self.model, self.kind = model, kind
        self._tokenizer = tokenizer

    @property
    def tokenizer(self) -> Any:
        """The tokenizer (raises the one-line error of ``ZeroShotClassifier`` when
        the model has none and none was given)."""
        if self._tokenizer is None:
            self._tokenizer = _default_tokenizer(self.model, self.kind)
        return self._tokenizer

    @property
    def blocks(self) -> List[nn.Module]:
        """The text transformer's blocks, in order."""
        if self.kind == "open_clip":
            return list(self.model.transformer.resblocks)
        return list(self.model.text_model.encoder.layers)

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    # ------------------------------------------------------------ tokens
    def tokenize(self, texts: Sequence[str]) -> Tuple[Tensor, Optional[Tensor]]:
        """(K, T) token ids and the attention mask (Hugging Face CLIP; else None)."""
        tok = self.tokenizer
        if self.kind.startswith("hf"):
            padding = "max_length" if self.kind == "hf_siglip" else True
            enc = tok(
                text=list(texts), padding=padding, truncation=True, return_tensors="pt"
            )
            mask = enc.get("attention_mask") if self.kind == "hf_clip" else None
            return enc["input_ids"], mask
        ids = tok(list(texts))
        return (ids if isinstance(ids, Tensor) else torch.as_tensor(ids)), None

    def pool_index(self, ids: Tensor) -> Tensor:
        """(K,) position of the token whose features are the text embedding."""
        k, t = ids.shape
        last = torch.full((k,), t - 1, dtype=torch.long, device=ids.device)
        if self.kind == "hf_siglip":
            return last
        if self.kind == "hf_clip":
            eos = self.model.text_model.config.eos_token_id
            if eos == 2:
                return ids.argmax(dim=-1)
            return (ids == eos).int().argmax(dim=-1)
        pool = getattr(self.model, "text_pool_type", "argmax")
        if pool == "first":
            return torch.zeros_like(last)
        if pool == "last":
            return last
        if pool == "eos":
            return (ids == self.model.text_eos_id).int().argmax(dim=-1)
        return ids.argmax(dim=-1)

    def token_strings(self, ids: Tensor) -> List[List[str]]:
        """The tokens of each text, up to and including its pooled token (the ids
        as strings when there is no tokenizer)."""
        try:
            tok = self.tokenizer
        except ValueError:
            tok = None
        out = []
        for row, stop in zip(ids.tolist(), self.pool_index(ids).tolist()):
            row = row[: stop + 1] if self.kind != "hf_siglip" else row
            if hasattr(tok, "convert_ids_to_tokens"):
                out.append([str(t) for t in tok.convert_ids_to_tokens(row)])
            elif hasattr(tok, "id_to_token"):
                out.append([tok.id_to_token(i) for i in row])
            elif hasattr(tok, "decode"):
                out.append([tok.decode([i]).strip() or str(i) for i in row])
            else:
                out.append([str(i) for i in row])
        return out

    # ------------------------------------------------------------ forward
    def encode(self, ids: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
        """(K, E) text embeddings (not normalised), through the model's own path."""
        if self.kind == "open_clip":
            return logits_of(self.model.encode_text(ids))
        kw = {} if attention_mask is None else {"attention_mask": attention_mask}
        return logits_of(self.model.get_text_features(input_ids=ids, **kw))

    @contextmanager
    def attention_probes(
        self, on_block: Callable[[int, Tensor], None]
    ) -> Iterator[None]:
        """Report every block's (K, heads, T, T) attention probabilities during
        forwards (part of the graph when grad is enabled); restored on exit."""
        with installed(lambda out: self._hooks(on_block, out)):
            yield

    def _hooks(self, on_block: Callable[[int, Tensor], None], out: List[Any]):
        if self.kind == "open_clip":
            record_weights(
                [(i, blk.attn) for i, blk in enumerate(self.blocks)], on_block, out
            )
            return
        attns = [layer.self_attn for layer in self.blocks]
        record_eager(
            self.model.text_model, attns, list(range(len(attns))), on_block, out
        )


__all__ = ["TextTower"]
