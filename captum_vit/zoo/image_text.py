"""The embedded image–text model: the default ViT's locked image tower and a small
text tower trained on scene captions (LiT, Zhai et al. 2022).

:func:`load_default_image_text` returns an :class:`ImageTextModel`: its ``visual`` is
the embedded default ViT (``load_default_model()``'s shipped weights) without its
classifier, whose 128-d CLS features are the image embedding (locked: LiT trains only
the text side); its text tower maps captions to the same space; ``logit_scale``
turns cosines into logits. Wrapped in :class:`captum_vit.ZeroShotClassifier` with
prompts such as ``"a dress"`` it classifies the embedded scenes zero-shot (see
``IMAGE_TEXT_CARD.md``; the recipe is :mod:`captum_vit.zoo.train_image_text`).

The text tower has the layout of CLIP's (and OpenCLIP's) text transformer, so that
tools written for those read it the same way: ``token_embedding``,
``positional_embedding``, ``transformer.resblocks`` (pre-norm blocks ``ln_1`` →
batch-first ``nn.MultiheadAttention`` ``attn`` with a causal mask → ``ln_2`` →
``mlp``), ``ln_final``, the features of the end-of-text token (the largest token id,
as in CLIP) and ``text_projection``.

The tokenizer is word-level (:class:`WordTokenizer`): lower-cased words (runs of
letters and digits) of a fixed vocabulary (:data:`VOCABULARY`: the words of the
Fashion-MNIST class names, their synonyms and the caption templates), an unknown-word
token for the others, start and end tokens, zero padding to 16 tokens.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn
from torch import Tensor

#: Shipped weights of the text tower and the logit scale.
DEFAULT_IMAGE_TEXT_WEIGHTS = (
    Path(__file__).resolve().parent / "weights" / "default_image_text.pt"
)

#: Names used in captions for each Fashion-MNIST class (the first is the main one).
CLASS_SYNONYMS: Dict[str, Sequence[str]] = {
    "T-shirt/top": ("t-shirt", "top", "tee"),
    "Trouser": ("trousers", "pants", "trouser"),
    "Pullover": ("pullover", "sweater", "jumper"),
    "Dress": ("dress", "gown"),
    "Coat": ("coat", "jacket"),
    "Sandal": ("sandal", "sandals"),
    "Shirt": ("shirt", "blouse"),
    "Sneaker": ("sneaker", "trainer", "sneakers"),
    "Bag": ("bag", "handbag", "purse"),
    "Ankle boot": ("ankle boot", "boot", "boots"),
}

#: Caption templates of the training captions: ``{}`` the main item, ``{d}`` the
#: small distractor item drawn beneath it.
TEMPLATES: Sequence[str] = (
    "{}",
    "a {}",
    "a photo of a {}.",
    "a picture of a {}",
    "an image of a {}",
    "a {} in the picture",
    "a large {}",
    "a {} next to a small {d}",
    "a photo of a {} and a small {d}.",
    "this is a {}",
)

_EXTRA_WORDS = (
    "the an of photo picture image in on with and next to small large this is it "
    "there clothing item piece object shoe shoes wear garment"
)


def _words(text: str) -> List[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _vocabulary() -> List[str]:
    words = set(_words(_EXTRA_WORDS))
    for names in CLASS_SYNONYMS.values():
        for n in names:
            words.update(_words(n))
    for t in TEMPLATES:
        words.update(_words(t.replace("{d}", "").replace("{}", "")))
    for name in CLASS_SYNONYMS:
        words.update(_words(name))
    return sorted(words)


#: The word vocabulary; token ids: 0 padding, 1 unknown word, 2 start, then the
#: words in this order, and the end-of-text token last (the largest id).
VOCABULARY: List[str] = _vocabulary()


class WordTokenizer:
    """Word-level tokenizer of the embedded image–text model.

    ``tokenizer(["a dress", ...])`` gives (K, ``context_length``) token ids: start
    token, the words (unknown words as token 1), end-of-text token (the largest id),
    zero padding; texts longer than the context are cut before the end token.

    Args:
        vocabulary: The words (default :data:`VOCABULARY`).
        context_length: Tokens per text, start and end tokens included.
    """

    pad_id, unk_id, sos_id = 0, 1, 2

    def __init__(
        self, vocabulary: Optional[Sequence[str]] = None, context_length: int = 16
    ) -> None:
        self.vocabulary = list(VOCABULARY if vocabulary is None else vocabulary)
        self.context_length = int(context_length)
        self.index = {w: i + 3 for i, w in enumerate(self.vocabulary)}
        self.eot_id = len(self.vocabulary) + 3

    @property
    def vocab_size(self) -> int:
        """Number of token ids."""
        return self.eot_id + 1

    def tokens(self, text: str) -> List[str]:
        """The words of ``text`` as the tokenizer reads them (unknown ones marked
        ``<unk>``), with ``<start>`` and ``<end>``."""
        words = _words(text)[: self.context_length - 2]
        return (
            ["<start>"] + [w if w in self.index else "<unk>" for w in words] + ["<end>"]
        )

    def id_to_token(self, token_id: int) -> str:
        """The word (or ``<pad>``, ``<unk>``, ``<start>``, ``<end>``) of a token id."""
        special = {0: "<pad>", 1: "<unk>", 2: "<start>", self.eot_id: "<end>"}
        if token_id in special:
            return special[token_id]
        return self.vocabulary[int(token_id) - 3]

    def __call__(self, texts: Union[str, Sequence[str]]) -> Tensor:
        if isinstance(texts, str):
            texts = [texts]
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for i, text in enumerate(texts):
            words = _words(text)[: self.context_length - 2]
            ids = [self.sos_id] + [self.index.get(w, self.unk_id) for w in words]
            ids.append(self.eot_id)
            out[i, : len(ids)] = torch.tensor(ids)
        return out


class _Block(nn.Module):
    """A pre-norm transformer block in CLIP's layout."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width)
        )

    def forward(self, x: Tensor, attn_mask: Optional[Tensor] = None) -> Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class _Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.width = width
        self.resblocks = nn.ModuleList(_Block(width, heads) for _ in range(layers))

    def forward(self, x: Tensor, attn_mask: Optional[Tensor] = None) -> Tensor:
        for blk in self.resblocks:
            x = blk(x, attn_mask=attn_mask)
        return x


class ImageTextModel(nn.Module):
    """A locked image tower and a CLIP-layout text tower (LiT).

    Args:
        visual: The image tower: a headless model whose output is the image
            embedding (the default ViT with ``num_classes=0``).
        embed_dim: Width of the shared embedding (the image tower's output).
        vocab_size: Token ids of the tokenizer.
        context_length: Tokens per text.
        width, layers, heads: The text transformer.
        tokenizer: The tokenizer (kept as ``model.tokenizer``).

    Attributes:
        logit_scale: log of the multiplier of the cosine (a parameter, as CLIP's).
    """

    def __init__(
        self,
        visual: nn.Module,
        embed_dim: int,
        vocab_size: int,
        context_length: int = 16,
        width: int = 64,
        layers: int = 2,
        heads: int = 4,
        tokenizer: Optional[Any] = None,
    ) -> None:
        super().__init__()
        self.visual = visual
        self.context_length = int(context_length)
        self.vocab_size = int(vocab_size)
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(
            0.01 * torch.randn(context_length, width)
        )
        self.transformer = _Transformer(width, layers, heads)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(width**-0.5 * torch.randn(width, embed_dim))
        self.logit_scale = nn.Parameter(
            torch.tensor(float(torch.log(torch.tensor(10.0))))
        )
        mask = torch.full((context_length, context_length), float("-inf")).triu(1)
        self.register_buffer("attn_mask", mask, persistent=False)
        self.tokenizer = tokenizer

    def lock_image_tower(self) -> None:
        """Freeze the image tower (LiT): no gradients, eval mode kept by training."""
        for p in self.visual.parameters():
            p.requires_grad_(False)

    def encode_image(self, images: Tensor, normalize: bool = False) -> Tensor:
        """(B, E) image embeddings."""
        f = self.visual(images)
        return nn.functional.normalize(f, dim=-1) if normalize else f

    def encode_text(self, token_ids: Tensor, normalize: bool = False) -> Tensor:
        """(K, E) text embeddings: the end-of-text token's features, projected."""
        x = self.token_embedding(token_ids) + self.positional_embedding
        x = self.transformer(x, attn_mask=self.attn_mask.to(x.dtype))
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), token_ids.argmax(dim=-1)]
        f = x @ self.text_projection
        return nn.functional.normalize(f, dim=-1) if normalize else f

    def forward(self, images: Tensor, token_ids: Tensor) -> Tensor:
        """(B, K) image–text logits."""
        img = self.encode_image(images, normalize=True)
        txt = self.encode_text(token_ids, normalize=True)
        return self.logit_scale.exp() * img @ txt.t()

    def text_state_dict(self) -> Dict[str, Tensor]:
        """The trained (text-side) tensors: everything but the image tower."""
        return {
            k: v for k, v in self.state_dict().items() if not k.startswith("visual.")
        }


def build_image_text(
    config: Dict[str, Any], visual: Optional[nn.Module] = None
) -> ImageTextModel:
    """An untrained :class:`ImageTextModel` of ``config`` around ``visual`` (default:
    the embedded default ViT with its shipped weights, headless)."""
    from . import load_default_model

    if visual is None:
        visual = load_default_model()
        visual.reset_classifier(0)
        visual.eval()
    tok = WordTokenizer(config.get("vocabulary"), int(config["context_length"]))
    return ImageTextModel(
        visual,
        embed_dim=int(config["embed_dim"]),
        vocab_size=tok.vocab_size,
        context_length=tok.context_length,
        width=int(config["width"]),
        layers=int(config["layers"]),
        heads=int(config["heads"]),
        tokenizer=tok,
    )


def load_default_image_text(
    device: Union[str, torch.device] = "cpu",
    weights: Optional[Union[str, Path]] = None,
) -> ImageTextModel:
    """The embedded image–text model (see ``IMAGE_TEXT_CARD.md``), in eval mode.

    Args:
        device: Where to put it.
        weights: A text-tower file in the shipped format (default
            :data:`DEFAULT_IMAGE_TEXT_WEIGHTS`).

    Returns:
        The :class:`ImageTextModel`; ``captum_vit.ZeroShotClassifier(model,
        ["a dress", "a sandal"])`` makes it a classifier (its tokenizer is
        ``model.tokenizer``).

    Raises:
        FileNotFoundError: no weights file.

    Examples::

        >>> from captum_vit import ZeroShotClassifier
        >>> zs = ZeroShotClassifier(load_default_image_text(), ["a dress", "a bag"])
    """
    path = Path(weights) if weights is not None else DEFAULT_IMAGE_TEXT_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"no image-text weights at {path}")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    model = build_image_text(dict(payload["config"]))
    state = {k: v.float() for k, v in payload["state_dict"].items()}
    missing = model.load_state_dict(state, strict=False)
    bad = [k for k in missing.missing_keys if not k.startswith("visual.")]
    if bad or missing.unexpected_keys:
        raise ValueError(
            f"weights: {path} does not fit the image-text model (missing {bad[:3]}, "
            f"unexpected {missing.unexpected_keys[:3]})"
        )
    return model.to(device).eval()


__all__ = [
    "CLASS_SYNONYMS",
    "DEFAULT_IMAGE_TEXT_WEIGHTS",
    "ImageTextModel",
    "TEMPLATES",
    "VOCABULARY",
    "WordTokenizer",
    "build_image_text",
    "load_default_image_text",
]
