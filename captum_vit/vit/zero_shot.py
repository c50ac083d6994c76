"""``ZeroShotClassifier``: an image–text model as a classifier over prompts.

CLIP-style models score an image against texts: ``logit_scale · cos(image, text)``
(CLIP), ``logit_scale · cos(image, text) + logit_bias`` (SigLIP). Given the prompts,
:class:`ZeroShotClassifier` encodes them once with the model's own text tower and
tokenizer and keeps the normalised text embeddings; its forward maps images to the
model's own image–text scores, one logit per prompt. It is an ordinary classifier,
so every method and metric explains "why this image matches prompt ``k``" with
``target=k``: :class:`~captum_vit.vit.ViTAdapter` sees through it to the image tower
(:mod:`captum_vit.vit.families.zero_shot`).

Served models: Hugging Face ``CLIPModel`` and ``SiglipModel`` (fixed-resolution SigLIP
and SigLIP 2 checkpoints that load as ``SiglipModel``; the NaFlex ``Siglip2Model``
takes pre-cut patch sequences and is refused), OpenCLIP models
(``open_clip.create_model(...)``: ``CLIP``, ``CustomTextCLIP``; SigLIP ones carry
their ``logit_bias``), any object with an OpenCLIP-like interface (``visual``,
``encode_text``, ``logit_scale``; the embedded image–text default is one), and any
headless image tower a family adapter serves (a timm ViT built with
``num_classes=0``, an OpenCLIP or Hugging Face image tower) with given
``text_embeddings``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .._guard import eval_mode
from .adapter import ViTAdapter, logits_of

#: OpenCLIP's default BPE tokenizer's vocabulary size (``open_clip.tokenize``).
_OPENAI_VOCAB = 49408


def _class_names(model: Any) -> List[str]:
    return [k.__name__ for k in type(model).__mro__]


def _kind_of(model: Any) -> str:
    """``hf_clip``, ``hf_siglip``, ``open_clip`` or ``tower``; raise otherwise."""
    names = _class_names(model)
    module = type(model).__module__
    if "Siglip2Model" in names:
        raise TypeError(
            "model: the NaFlex Siglip2Model takes pre-cut patch sequences, not images, "
            "and is not supported; fixed-resolution SigLIP 2 checkpoints that load as "
            "SiglipModel are"
        )
    if module.startswith("transformers."):
        if "CLIPModel" in names:
            return "hf_clip"
        if "SiglipModel" in names:
            return "hf_siglip"
    if (
        isinstance(getattr(model, "visual", None), nn.Module)
        and callable(getattr(model, "encode_text", None))
        and getattr(model, "logit_scale", None) is not None
    ):
        return "open_clip"
    if isinstance(model, nn.Module):
        try:
            adapter = ViTAdapter(model)
        except TypeError:
            adapter = None
        if adapter is not None:
            if adapter.num_classes > 0:
                raise TypeError(
                    f"model: this {adapter.family_name} ends in a classifier head "
                    f"({adapter.num_classes} classes); pass an image-text model or a "
                    "headless image tower (e.g. timm num_classes=0) whose output is "
                    "the image embedding"
                )
            return "tower"
    raise TypeError(
        "model: expected an image-text model (Hugging Face CLIPModel or SiglipModel, "
        "an OpenCLIP model) or a headless image tower with text_embeddings; got "
        f"{type(model).__name__}"
    )


def check_prompts(prompts: Any, template: Optional[str] = None) -> List[str]:
    """Validate class names (with a ``template``) or prompts: a non-empty list of
    distinct non-empty strings; returns it as a list. Errors name ``prompts``."""
    what = "class names" if template is not None else "prompts"
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise TypeError(
            f"prompts: expected a list of {what} (strings), got "
            f"{type(prompts).__name__}"
        )
    names = list(prompts)
    if not names:
        raise ValueError(f"prompts: expected at least one of the {what}, got none")
    for n in names:
        if not isinstance(n, str) or not n.strip():
            raise ValueError(
                f"prompts: every entry must be a non-empty string, got {n!r}"
            )
    seen = set()
    for n in names:
        if n in seen:
            raise ValueError(f"prompts: duplicate {what[:-1]} {n!r}")
        seen.add(n)
    return names


def check_template(template: Any) -> str:
    """Validate a prompt template: a string with one ``{}`` for the class name.

    Args:
        template: The template, e.g. ``"a photo of a {}."``.

    Returns:
        ``template``.

    Raises:
        TypeError / ValueError: naming ``template``.
    """
    if not isinstance(template, str):
        raise TypeError(
            f"template: expected a string with '{{}}' for the class name, got "
            f"{type(template).__name__}"
        )
    if template.count("{}") != 1:
        raise ValueError(
            "template: expected exactly one '{}' where the class name goes, got "
            f"{template!r}"
        )
    return template


class ZeroShotClassifier(nn.Module):
    """An image–text model as a classifier: one logit per prompt.

    The logits are the model's own image–text scores, ``logit_scale · cos(f(x), t_k)``
    (+ ``logit_bias`` for SigLIP), with ``f`` the image tower and its projection and
    ``t_k`` the embedding of prompt ``k``. The prompts are encoded once, without
    gradients, with the model's text tower in eval mode; the normalised embeddings are
    kept in the buffer ``text_embeddings`` (K, E). The model's own modules are used
    (not copied): the image tower is this module's ``tower``.

    Args:
        model: Hugging Face ``CLIPModel`` / ``SiglipModel``, an OpenCLIP model, or a
            headless image tower served by :class:`~captum_vit.vit.ViTAdapter` (then
            ``text_embeddings`` are needed).
        prompts: Class names (with ``template``) or whole prompts; with
            ``text_embeddings`` or ``token_ids`` they only name the classes.
        template: A string with one ``{}``: prompt ``k`` is
            ``template.format(prompts[k])``.
        text_embeddings: (K, E) text embeddings (normalised here), instead of
            encoding prompts.
        token_ids: (K, L) token ids for the model's text tower, instead of prompts
            (a Hugging Face ``attention_mask`` can be passed as ``attention_mask``).
        attention_mask: (K, L) mask going with ``token_ids`` (Hugging Face only).
        tokenizer: The model's tokenizer: a Hugging Face tokenizer or processor (called
            as ``tokenizer(text=..., padding=..., return_tensors="pt")``), or a
            callable mapping a list of strings to (K, L) token ids (OpenCLIP's
            ``open_clip.get_tokenizer(arch)``). Default: the model's ``tokenizer``
            attribute, else OpenCLIP's BPE tokenizer for OpenCLIP models with its
            vocabulary.
        logit_scale: Multiplier of the cosine (default: ``exp`` of the model's learnt
            ``logit_scale``; 100 for a bare image tower).
        logit_bias: Added to every logit (default: SigLIP's learnt bias, else 0).

    Raises:
        TypeError / ValueError: one line naming the argument (no tokenizer, empty or
            duplicate prompts, a template without ``{}``, text embeddings whose width
            is not the image embedding's, ...).

    Examples::

        >>> zs = ZeroShotClassifier(clip, ["cat", "dog"], template="a photo of a {}.",
        ...                         tokenizer=processor)
        >>> zs(images).shape                        # (B, 2)
        >>> GenAtt(zs).attribute(images, target=1)  # why "a photo of a dog."
    """

    def __init__(
        self,
        model: nn.Module,
        prompts: Optional[Sequence[str]] = None,
        *,
        template: Optional[str] = None,
        text_embeddings: Optional[Tensor] = None,
        token_ids: Optional[Tensor] = None,
        attention_mask: Optional[Tensor] = None,
        tokenizer: Optional[Any] = None,
        logit_scale: Optional[float] = None,
        logit_bias: Optional[float] = None,
    ) -> None:
        super().__init__()
        kind = _kind_of(model)
        if template is not None:
            check_template(template)
        if text_embeddings is not None and token_ids is not None:
            raise ValueError(
                "text_embeddings: pass either text_embeddings or token_ids, not both"
            )
        names = None if prompts is None else check_prompts(prompts, template)
        self.kind = kind
        tower, projection, scale, bias = _image_side(model, kind)
        self.tower = tower
        self.projection = projection
        if logit_scale is not None:
            scale = _finite("logit_scale", logit_scale)
        if logit_bias is not None:
            bias = _finite("logit_bias", logit_bias)
        if text_embeddings is None and token_ids is None and names is None:
            raise ValueError(
                "prompts: expected prompts (or class names with a template), "
                "text_embeddings or token_ids"
            )
        texts: Optional[List[str]] = None
        if names is not None:
            texts = [template.format(n) for n in names] if template else list(names)
        if text_embeddings is not None:
            emb = _check_embeddings(text_embeddings)
        elif token_ids is not None:
            emb = _encode_ids(model, kind, _check_ids(token_ids), attention_mask)
        else:
            tok = (
                tokenizer if tokenizer is not None else _default_tokenizer(model, kind)
            )
            emb = _encode_texts(model, kind, texts, tok)
        k = emb.shape[0]
        if names is not None and len(names) != k:
            raise ValueError(
                f"prompts: {len(names)} names for {k} text embeddings; give one per "
                "class"
            )
        width = self._image_width()
        if emb.shape[1] != width:
            raise ValueError(
                f"text_embeddings: expected width {width} (the image embedding's), got "
                f"shape {tuple(emb.shape)}"
            )
        self.class_names: List[str] = names or [f"class {i}" for i in range(k)]
        self.prompts: List[str] = texts or list(self.class_names)
        self.template = template
        ref = next(iter(tower.parameters()), None)
        dtype = ref.dtype if ref is not None and ref.is_floating_point() else None
        emb = F.normalize(emb.detach().float(), dim=-1)
        self.register_buffer("text_embeddings", emb.to(dtype or torch.float32))
        self.register_buffer("logit_scale", torch.tensor(float(scale)))
        self.register_buffer("logit_bias", torch.tensor(float(bias)))

    # ------------------------------------------------------------------ forward
    @property
    def num_classes(self) -> int:
        """Number of prompts K (0 once the text side is removed: image features)."""
        return int(self.text_embeddings.shape[0])

    def image_features(self, images: Tensor) -> Tensor:
        """(B, E) image embeddings (not normalised): the tower, then the projection."""
        feats = logits_of(self.tower(images))
        return feats if self.projection is None else self.projection(feats)

    def scores(self, features: Tensor) -> Tensor:
        """(B, K) image–text scores of (B, E) image embeddings."""
        if self.num_classes == 0:
            return features
        f = features / features.norm(p=2, dim=-1, keepdim=True)
        t = self.text_embeddings.to(f.dtype)
        return self.logit_scale.to(f.dtype) * (f @ t.t()) + self.logit_bias.to(f.dtype)

    def forward(self, images: Tensor) -> Tensor:
        """(B, K) logits: the model's own image–text scores."""
        return self.scores(self.image_features(images))

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, classes={self.class_names!r}"

    def _image_width(self) -> int:
        adapter = ViTAdapter(self.tower)
        size = adapter.image_size
        x = torch.zeros(1, adapter.in_chans or 3, *size)
        ref = next(iter(self.tower.parameters()), None)
        if ref is not None:
            x = x.to(device=ref.device, dtype=ref.dtype)
        with torch.no_grad(), eval_mode(self.tower):
            return int(self.image_features(x).shape[-1])


# ------------------------------------------------------------------ helpers
def _finite(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    if not math.isfinite(v):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    return v


def _image_side(
    model: Any, kind: str
) -> Tuple[nn.Module, Optional[nn.Module], float, float]:
    """(tower, projection, logit scale, logit bias) of an image-text model."""
    if kind == "hf_clip":
        return (
            model.vision_model,
            model.visual_projection,
            float(model.logit_scale.detach().exp()),
            0.0,
        )
    if kind == "hf_siglip":
        return (
            model.vision_model,
            None,
            float(model.logit_scale.detach().exp()),
            float(model.logit_bias.detach().reshape(-1)[0]),
        )
    if kind == "open_clip":
        bias = getattr(model, "logit_bias", None)
        scale = model.logit_scale.detach().reshape(-1)[0]
        return (
            model.visual,
            None,
            float(scale.exp()),
            0.0 if bias is None else float(bias.detach().reshape(-1)[0]),
        )
    return model, None, 100.0, 0.0


def _check_embeddings(emb: Any) -> Tensor:
    if not isinstance(emb, Tensor) or not emb.is_floating_point() or emb.dim() != 2:
        shape = tuple(emb.shape) if isinstance(emb, Tensor) else type(emb).__name__
        raise TypeError(
            f"text_embeddings: expected a (K, E) floating-point tensor, got {shape}"
        )
    if emb.shape[0] == 0:
        raise ValueError("text_embeddings: expected at least one row, got none")
    if not bool(torch.isfinite(emb).all()) or bool((emb.norm(dim=-1) == 0).any()):
        raise ValueError("text_embeddings: every row must be finite and non-zero")
    return emb.detach()


def _check_ids(ids: Any) -> Tensor:
    if (
        not isinstance(ids, Tensor)
        or ids.dim() != 2
        or ids.dtype not in (torch.int32, torch.int64)
        or ids.shape[0] == 0
    ):
        shape = tuple(ids.shape) if isinstance(ids, Tensor) else type(ids).__name__
        raise TypeError(f"token_ids: expected a (K, L) integer tensor, got {shape}")
    return ids


def _default_tokenizer(model: Any, kind: str) -> Callable:
    own = getattr(model, "tokenizer", None)
    if callable(own):
        return own
    if kind == "open_clip" and getattr(model, "vocab_size", None) == _OPENAI_VOCAB:
        from open_clip.tokenizer import SimpleTokenizer

        return SimpleTokenizer(context_length=int(model.context_length))
    hint = {
        "hf_clip": "AutoTokenizer.from_pretrained(...) or the CLIPProcessor",
        "hf_siglip": "AutoTokenizer.from_pretrained(...) or the SiglipProcessor",
        "open_clip": "open_clip.get_tokenizer(ARCH)",
    }.get(kind)
    if hint is None:
        raise ValueError(
            "tokenizer: this image tower has no text side; pass text_embeddings=(K, E) "
            "image-space text embeddings"
        )
    raise ValueError(
        f"tokenizer: no tokenizer for this {type(model).__name__}; pass tokenizer="
        f"{hint}, or text_embeddings=... or token_ids=..."
    )


def _encode_texts(model: Any, kind: str, texts: List[str], tokenizer: Any) -> Tensor:
    if kind == "tower":
        _default_tokenizer(model, kind)  # raises: no text side
    if kind.startswith("hf"):
        padding = "max_length" if kind == "hf_siglip" else True
        enc = tokenizer(
            text=texts, padding=padding, truncation=True, return_tensors="pt"
        )
        ids = enc["input_ids"]
        mask = enc.get("attention_mask") if kind == "hf_clip" else None
        return _encode_ids(model, kind, ids, mask)
    ids = tokenizer(texts)
    if not isinstance(ids, Tensor):
        ids = torch.as_tensor(ids)
    return _encode_ids(model, kind, _check_ids(ids), None)


def _encode_ids(
    model: Any, kind: str, ids: Tensor, attention_mask: Optional[Tensor]
) -> Tensor:
    if kind == "tower":
        raise ValueError(
            "token_ids: this image tower has no text tower; pass text_embeddings"
        )
    dev = next(iter(model.parameters())).device
    ids = ids.to(dev)
    with torch.no_grad(), eval_mode(model):
        if kind.startswith("hf"):
            kw = (
                {}
                if attention_mask is None
                else {"attention_mask": attention_mask.to(dev)}
            )
            out = model.get_text_features(input_ids=ids, **kw)
            return logits_of(out).float()
        return logits_of(model.encode_text(ids)).float()


__all__ = ["ZeroShotClassifier", "check_prompts", "check_template"]
