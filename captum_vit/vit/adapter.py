"""The protocol every method uses to talk to a Vision Transformer.

``ViTAdapter(model)`` looks at the model's type and returns the adapter of its family
(one small class per file in :mod:`captum_vit.vit.families`). Every adapter is an
instance of :class:`ViTAdapter`; methods and metrics only use the members defined
here, so they never learn a family's internals, and adding a family means adding one
file (and its tests). A family file registers its class with :func:`register_family`
(as timm's ``register_model`` does), so this module never imports the families:
:mod:`captum_vit.vit` imports them, and they fill the registry :func:`family_of`
reads.

Each adapter declares its *capabilities* (:data:`CAPABILITIES`). A method that needs
one the family lacks calls :meth:`ViTAdapter.require`, which raises a ``TypeError``
naming the method, the family and the capability, for example "TransformerInputSampling
needs token dropping, which timm SwinTransformer does not allow: its shifted windows
need the full patch grid".

Token-sequence families (everything except Swin) share the machinery below: the
hidden states are a flat ``(B, P + N, D)`` sequence with ``P`` prefix tokens (CLS,
distillation, registers) followed by the ``N`` patch tokens in row-major order; a
held-out patch is either masked as an attention key in every block or dropped from the
sequence right after the position embedding (:meth:`ViTAdapter.masking`, used by
:class:`~captum_vit.vit.TokenMask`).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import (
    Any,
    Callable,
    Dict,
    FrozenSet,
    Iterator,
    List,
    Optional,
    Sequence,
    Set,
    Tuple,
    Type,
    TypeVar,
    Union,
)

import torch
import torch.nn as nn
from torch import Tensor

from .._guard import check_dtype, check_layout, unwrap_compiled
from .._utils import check_int
from .lrp_sites import LRPSites

# ----------------------------------------------------------------- capabilities
#: A flat (B, P + N, D) token sequence with ``embed`` / ``run_blocks`` / ``head``.
TOKENS = "tokens"
#: Removing patch tokens from the sequence after the position embedding.
TOKEN_DROP = "token_drop"
#: Masking held-out patch tokens as attention keys in every block.
ATTENTION_MASK = "attention_mask"
#: Post-softmax attention probabilities (and their gradients) of every block.
RECORDED_ATTENTION = "recorded_attention"
#: At least one prefix token (CLS, distillation or register token).
PREFIX_TOKENS = "prefix_tokens"
#: A classifier head: outputs are class logits.
CLASS_HEAD = "class_head"
#: Layer-wise relevance propagation rules for every block and the head
#: (:mod:`captum_vit.vit.lrp`, Transformer Attribution).
LRP_RULES = "lrp_rules"
#: Each block's input tokens and its attention values passed through the attention's
#: output projection (Beyond Intuition's token-wise approximation).
VALUE_PROJECTION = "value_projection"
#: AttnLRP's rules for every module of the model (:mod:`captum_vit.vit.lrp_sites`):
#: normalisations, activations, linear layers, gated products and attention.
ATTNLRP_RULES = "attnlrp_rules"


class MissingCapability(TypeError):
    """A method or metric needs a capability (:data:`CAPABILITIES`) the model lacks:
    "<method> needs <capability>, which <family> <reason>". Jobs that run several
    methods skip the method with this reason; a direct call raises it."""


#: What each capability is called in error messages.
CAPABILITIES: Dict[str, str] = {
    TOKENS: "a flat token sequence",
    TOKEN_DROP: "token dropping",
    ATTENTION_MASK: "attention masking of patch tokens",
    RECORDED_ATTENTION: "recorded attention maps",
    PREFIX_TOKENS: "a prefix token (CLS, distillation or register)",
    CLASS_HEAD: "a classifier head",
    LRP_RULES: "LRP rules for its blocks",
    VALUE_PROJECTION: "projected attention values",
    ATTNLRP_RULES: "AttnLRP rules for every module",
}

#: Reasons used when a family does not give its own (see ``missing_reasons``).
_DEFAULT_REASONS: Dict[str, str] = {
    LRP_RULES: (
        "does not have: captum-vit's LRP rules cover timm VisionTransformer blocks "
        "only (linear qkv, LayerNorm, GELU MLP)"
    ),
    VALUE_PROJECTION: (
        "does not offer: captum-vit reads the values of timm Attention modules "
        "(one linear qkv, a linear proj, no scale norm) only"
    ),
}

#: ``(mean, std)`` per channel of a model's input normalisation.
Normalization = Tuple[Tuple[float, ...], Tuple[float, ...]]

#: Head pooling kinds: what the head reads from the final tokens.
#: ``token``: prefix rows; ``avg``/``max``/``avgmax``: patch tokens;
#: ``token+avg``: the CLS row and the patch mean (DINOv2); ``map``: attention pooling.
POOLS = ("token", "avg", "max", "avgmax", "token+avg", "map")

_KEY_MASK_NEG = float("-inf")


def logits_of(output: Any) -> Tensor:
    """The logits tensor of a model output (a tensor, or an object with ``.logits``
    such as Hugging Face's ``ImageClassifierOutput``; the ``image_embeds`` or
    ``pooler_output`` of a headless Hugging Face image tower)."""
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    for name in ("image_embeds", "pooler_output"):  # headless HF image towers
        pooled = getattr(output, name, None)
        if isinstance(pooled, Tensor):
            return pooled
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise TypeError(
        "model output: expected a tensor or an object with a .logits tensor, got "
        f"{type(output).__name__}"
    )


class _Removable:
    """A handle whose ``remove()`` runs a callback once (like a hook handle)."""

    def __init__(self, fn: Callable[[], None]) -> None:
        self._fn: Optional[Callable[[], None]] = fn

    def remove(self) -> None:
        if self._fn is not None:
            fn, self._fn = self._fn, None
            fn()


def set_attribute(obj: Any, name: str, value: Any) -> _Removable:
    """Set ``obj.<name>`` in its instance ``__dict__`` and return a handle restoring
    the previous state (the previous instance value, or no instance value)."""
    missing = object()
    old = obj.__dict__.get(name, missing)
    obj.__dict__[name] = value

    def restore() -> None:
        if old is missing:
            obj.__dict__.pop(name, None)
        else:
            obj.__dict__[name] = old

    return _Removable(restore)


@contextmanager
def installed(install: Callable[[List[Any]], Any]) -> Iterator[None]:
    """Run ``install(handles)``, which installs hooks and appends their handles to
    the list, and remove every handle on exit (in reverse order), also when the body
    raises or the installation fails half-way."""
    done: List[Any] = []
    try:
        install(done)
        yield
    finally:
        for h in reversed(done):
            h.remove()


class MaskState:
    """Per-forward state of one masking context (shared by its hooks).

    Attributes:
        valid: (B, T') bool, True for tokens that take part in attention (prefix
            tokens, kept patches, no padding); None when every token does.
        index: (B, K) kept patch indices in drop mode (None in attention mode).
        cache: Per-forward scratch space of the family hooks (re-indexed rotary or
            relative position embeddings).
    """

    def __init__(
        self, valid: Optional[Tensor] = None, index: Optional[Tensor] = None
    ) -> None:
        self.valid = valid
        self.index = index
        self.cache: Dict[Any, Any] = {}

    def additive(self, dtype: torch.dtype) -> Optional[Tensor]:
        """(B, 1, 1, T') additive key mask: 0 for valid keys, -inf for the others."""
        if self.valid is None:
            return None
        mask = torch.zeros(self.valid.shape, dtype=dtype, device=self.valid.device)
        mask = mask.masked_fill(~self.valid, _KEY_MASK_NEG)
        return mask[:, None, None, :]


def drop_index(keep: Tensor) -> Tuple[Tensor, Tensor]:
    """Indices of kept patches per sample, in patch order, padded to the largest count.

    Args:
        keep: (B, N) boolean keep mask.

    Returns:
        ``(index, valid)``: (B, K) long indices into the N patches (padding points at a
        held-out patch and must be masked) and the (B, K) boolean validity mask, with
        K the largest number of kept patches in the batch, at least 1: a batch that
        keeps no patch at all still carries one masked slot, so pooled heads see an
        empty (zero) pool as in attention mode instead of a mean over nothing.
    """
    counts = keep.sum(dim=1)
    k = max(int(counts.max()), 1) if keep.numel() else 0
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :k]
    valid = torch.arange(k, device=keep.device)[None, :] < counts[:, None]
    return order, valid


# ------------------------------------------------------------------ the protocol
class ViTAdapter:
    """Uniform view of a Vision Transformer, for every method and metric.

    ``ViTAdapter(model)`` returns the adapter of the model's family (a subclass); see
    :data:`SUPPORTED_FAMILIES`. The adapter holds no state besides the model: it can be
    created freely, and it never modifies the model (hooks and flags it needs are set
    for one call and restored, also when the call raises).

    Args:
        model: A supported model (or a ``ViTAdapter``, whose model is used); a model
            wrapped by ``torch.compile`` is unwrapped to the original module (before
            its family is looked up).

    Raises:
        TypeError: if ``model`` is not one of the supported families, or uses a layout
            the adapter cannot serve honestly.

    Examples::

        >>> adapter = ViTAdapter(model)
        >>> tokens = adapter.embed(images)            # (B, P + N, D)
        >>> logits = adapter.head(adapter.run_blocks(tokens))
        >>> torch.allclose(logits, adapter.logits(images), atol=1e-5)
        True
        >>> adapter.has(TOKEN_DROP), adapter.family_name
        (True, 'timm VisionTransformer')
    """

    #: Short family key (e.g. ``"timm_vit"``).
    family: str = ""
    #: Human-readable family name used in error messages.
    family_name: str = ""
    #: Why a capability is missing, per capability (completes "..., which <reason>").
    missing_reasons: Dict[str, str] = {}

    def __new__(cls, model: Any = None, *args: Any, **kwargs: Any) -> "ViTAdapter":
        if cls is ViTAdapter:
            target = model.model if isinstance(model, ViTAdapter) else model
            target = unwrap_compiled(target)  # torch.compile(model) -> model
            cls = family_of(target)
        return super().__new__(cls)

    def __init__(self, model: nn.Module) -> None:
        if isinstance(model, ViTAdapter):
            model = model.model
        self.model = unwrap_compiled(model)  # torch.compile(model) -> model
        self._validate()

    @classmethod
    def matches(cls, model: Any) -> bool:
        """Whether ``model`` belongs to this family (checked by type only)."""
        return False

    @classmethod
    def of(cls, model: Union[nn.Module, "ViTAdapter"]) -> "ViTAdapter":
        """Return ``model`` if it is an adapter already, else ``ViTAdapter(model)``."""
        return model if isinstance(model, ViTAdapter) else ViTAdapter(model)

    def _validate(self) -> None:
        """Raise a ``TypeError`` for layouts of the family that are not served."""

    def _unsupported(self, what: str) -> TypeError:
        return TypeError(
            f"model: {what} is not supported; supported: {SUPPORTED_FAMILIES}"
        )

    # -------------------------------------------------------------- capabilities
    @property
    def capabilities(self) -> FrozenSet[str]:
        """The capabilities of this model (see :data:`CAPABILITIES`)."""
        caps = self._basic_capabilities()
        caps.update(c for c, check in self._walked_capabilities().items() if check())
        return frozenset(caps)

    def _basic_capabilities(self) -> Set[str]:
        caps = set(self._family_capabilities())
        if self.num_classes > 0:
            caps.add(CLASS_HEAD)
        if TOKENS in caps and self.num_prefix_tokens > 0:
            caps.add(PREFIX_TOKENS)
        return caps

    def _walked_capabilities(self) -> Dict[str, Callable[[], bool]]:
        """The capabilities whose check walks the blocks, each with its check: run
        only when that capability is asked for, so the frequent ``has``/``require``
        calls of the forward paths stay cheap."""
        return {
            LRP_RULES: self._has_lrp_rules,
            ATTNLRP_RULES: lambda: self._lrp_sites()[1] is None,
        }

    def _family_capabilities(self) -> Sequence[str]:
        return (TOKENS, TOKEN_DROP, ATTENTION_MASK, RECORDED_ATTENTION)

    def _has_lrp_rules(self) -> bool:
        """Whether :mod:`captum_vit.vit.lrp`'s rules serve this model (one of
        :meth:`_walked_capabilities`)."""
        return False

    def lrp_sites(self, method: str = "AttnLRP") -> LRPSites:
        """Where AttnLRP's rules act in this model (:class:`LRPSites`): its norms,
        activations, linear layers, gated products and the attention hooks.

        Args:
            method: The method named in the error.

        Raises:
            TypeError: the capability error when a module has no rule.
        """
        self.require(ATTNLRP_RULES, method)
        sites, _ = self._lrp_sites()
        assert sites is not None
        return sites

    def _lrp_sites(self) -> Tuple[Optional[LRPSites], Optional[str]]:
        """``(sites, None)``, or ``(None, what is missing)``; see
        :meth:`lrp_sites`. Walks the model: called only when asked."""
        return None, (
            "AttnLRP rules for its blocks (captum-vit has them for timm ViT, Eva "
            "and BEiT, torchvision ViT and Hugging Face ViT/DeiT/DINOv2)"
        )

    def has(self, capability: str) -> bool:
        """Whether the model has ``capability``."""
        check = self._walked_capabilities().get(capability)
        if check is not None:
            return check()
        return capability in self._basic_capabilities()

    @property
    def has_head(self) -> bool:
        """Whether the model ends in a classifier head (class logits)."""
        return self.num_classes > 0

    def require(self, capability: str, method: str) -> None:
        """Raise a ``TypeError`` unless the model has ``capability``.

        Args:
            capability: One of :data:`CAPABILITIES`.
            method: The name of the method or metric that needs it.

        Raises:
            MissingCapability: "<method> needs <capability>, which <family>
                <reason>" (a ``TypeError``).
        """
        if self.has(capability):
            return
        what = CAPABILITIES[capability]
        if capability == CLASS_HEAD:
            raise MissingCapability(
                f"{method} needs {what}, which this {self.family_name} does not have: "
                f"the model has no classifier head ({self._headless_reason()}), so "
                "there is no class to explain or score. Use a model with a "
                "classifier head."
            )
        subject = self.family_name
        if capability == PREFIX_TOKENS and TOKENS in self.capabilities:
            subject = f"this {self.family_name}"
            reason = "does not have: it has no CLS, distillation or register token"
        else:
            reason = self.missing_reason(capability)
        raise MissingCapability(f"{method} needs {what}, which {subject} {reason}")

    def missing_reason(self, capability: str) -> str:
        """Why this model lacks ``capability``: completes "<method> needs <what>,
        which <family> ..." (the family's ``missing_reasons``, else a default)."""
        if capability == ATTNLRP_RULES and capability not in self.missing_reasons:
            problem = self._lrp_sites()[1]
            if problem is not None:
                return f"does not have for this model: it needs {problem}"
        return self.missing_reasons.get(
            capability, _DEFAULT_REASONS.get(capability, "does not offer")
        )

    def _headless_reason(self) -> str:
        return "num_classes=0"

    def without_head(self) -> nn.Module:
        """A deep copy of the model with its classifier removed (headless), e.g. as
        the backbone of a ViT Shapley explainer; the model itself is not touched.

        Returns:
            The copy; its adapter reports ``num_classes == 0``.
        """
        import copy

        model = copy.deepcopy(self.model)
        self._remove_head(model)
        return model

    def _remove_head(self, model: nn.Module) -> None:
        model.reset_classifier(0)

    # ------------------------------------------------------------------ geometry
    @property
    def num_prefix_tokens(self) -> int:
        """CLS + distillation + register tokens (0 for CLS-free pooled models)."""
        raise NotImplementedError

    @property
    def patch_size(self) -> Tuple[int, int]:
        """Patch size (ph, pw) in pixels of the patch embedding."""
        raise NotImplementedError

    @property
    def image_size(self) -> Tuple[int, int]:
        """The (H, W) input size the model was built for (its default size)."""
        raise NotImplementedError

    @property
    def grid_size(self) -> Tuple[int, int]:
        """Patch grid (gh, gw) of the model's default input size."""
        (h, w), (ph, pw) = self.image_size, self.patch_size
        return (h // ph, w // pw)

    @property
    def num_patches(self) -> int:
        """Number of patch tokens N at the model's default input size."""
        gh, gw = self.grid_size
        return gh * gw

    @property
    def num_layers(self) -> int:
        """Number of transformer blocks L."""
        return len(self.blocks)

    @property
    def embed_dim(self) -> int:
        """Hidden width D."""
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        """Number of output classes (0 for a headless model)."""
        raise NotImplementedError

    @property
    def in_chans(self) -> Optional[int]:
        """Input channels the model expects (None if unknown)."""
        return None

    @property
    def casts_inputs(self) -> bool:
        """Whether the model converts its inputs to its own dtype (then
        :meth:`check_images` accepts images of any floating-point dtype)."""
        return False

    @property
    def pool(self) -> str:
        """What the head reads, one of :data:`POOLS`."""
        return "token"

    @property
    def pool_include_prefix(self) -> bool:
        """Whether a pooled head also averages the prefix tokens."""
        return False

    @property
    def readout_prefix_weights(self) -> Tuple[float, ...]:
        """Weights of the prefix rows a ``token`` head reads (default: the CLS row)."""
        return (1.0,)

    @property
    def blocks(self) -> List[nn.Module]:
        """The transformer blocks, in order."""
        raise NotImplementedError

    def attention_modules(self) -> List[nn.Module]:
        """The attention module of every block, in layer order."""
        raise NotImplementedError

    @property
    def dynamic_img_size(self) -> bool:
        """Whether the model accepts other image sizes than its default."""
        return False

    def _dynamic_grid(self, hw: Tuple[int, int]) -> Tuple[int, int]:
        ph, pw = self.patch_size
        return (hw[0] // ph, hw[1] // pw)

    def check_images(self, images: Tensor, name: str = "inputs") -> Tuple[int, int]:
        """Validate an image batch for this model and return its patch grid.

        Args:
            images: A (B, C, H, W) tensor.
            name: Argument name used in error messages.

        Returns:
            The patch grid (gh, gw) the model will use for these images.

        Raises:
            TypeError: not a tensor, or floating-point images of another dtype than
                the model's (unless it casts its inputs itself or autocast is on).
            ValueError: wrong rank, channel count (a channels-last batch is named
                with the ``permute`` that fixes it), or a size the model rejects.
        """
        if not isinstance(images, Tensor):
            raise TypeError(
                f"{name}: expected a (B, C, H, W) tensor, got {type(images)}"
            )
        check_layout(images, self.in_chans, name)  # with channels-last hints
        if not self.casts_inputs:
            check_dtype(images, self._input_module(), name)
        hw = (int(images.shape[-2]), int(images.shape[-1]))
        if self.dynamic_img_size:
            ph, pw = self.patch_size
            if self._needs_patch_multiple() and (hw[0] % ph or hw[1] % pw):
                raise ValueError(
                    f"{name}: image size {hw} is not a multiple of the patch size "
                    f"{self.patch_size}"
                )
            return tuple(int(g) for g in self._dynamic_grid(hw))
        expected = tuple(self.image_size)
        if hw != expected and not self._strict_size():
            return tuple(int(g) for g in self._dynamic_grid(hw))
        if hw != expected:
            raise ValueError(
                f"{name}: this model was built for {expected[0]}x{expected[1]} images "
                f"(without dynamic_img_size); got {hw[0]}x{hw[1]}. Resize the images "
                "or create the model for that size."
            )
        return self.grid_size

    def _input_module(self) -> nn.Module:
        """The module the images enter first, whose parameters' dtype
        :meth:`check_images` asks of them: the whole model here; the families name
        their patch embedding, so the check reads a few parameters, not all."""
        return self.model

    def _needs_patch_multiple(self) -> bool:
        return True

    def _strict_size(self) -> bool:
        """Whether a model that is not dynamic rejects other input sizes."""
        return True

    def grid_for(self, images: Tensor) -> Tuple[int, int]:
        """Patch grid (gh, gw) for an image batch (validated)."""
        return self.check_images(images)

    # ----------------------------------------------------------------- outputs
    def logits(self, images: Tensor, *args: Any) -> Tensor:
        """The model's output on ``images`` as a logits tensor (``.logits`` of
        Hugging Face outputs); the model's own forward runs, hooks included."""
        return logits_of(self.model(images, *args))

    # -------------------------------------------------------------- token masks
    def check_keep(self, keep: Tensor, batch: int, num_patches: int) -> Tensor:
        """Validate a keep mask over patch tokens.

        Args:
            keep: (B, N) boolean tensor, True where a patch token is kept.
            batch: Expected batch size B.
            num_patches: Expected number of patch tokens N.

        Returns:
            ``keep`` itself.

        Raises:
            TypeError: if ``keep`` is not a boolean tensor.
            ValueError: if its shape is not (B, N), or a sample keeps no token at all
                on a model without prefix tokens (nothing to attend to).
        """
        if not isinstance(keep, Tensor) or keep.dtype != torch.bool:
            raise TypeError(
                "keep: expected a boolean tensor of shape (batch, num_patches), got "
                + (
                    f"dtype {keep.dtype}"
                    if isinstance(keep, Tensor)
                    else str(type(keep))
                )
            )
        if tuple(keep.shape) != (batch, num_patches):
            raise ValueError(
                "keep: expected shape (batch, num_patches) = "
                f"({batch}, {num_patches}), "
                f"got {tuple(keep.shape)}"
            )
        if self.num_prefix_tokens == 0 and not bool(keep.any(dim=1).all()):
            raise ValueError(
                "keep: every sample must keep at least one patch token on a model "
                "without prefix tokens"
            )
        if self.pool == "map" and self.pool_offset > 0 and not bool(keep.any(1).all()):
            raise ValueError(
                "keep: every sample must keep at least one patch token on a model "
                "whose attention pool reads patch tokens only"
            )
        return keep

    def key_mask(self, keep: Tensor) -> Tensor:
        """Boolean attention mask (B, 1, 1, P + N) from a patch keep mask.

        Prefix tokens are always attended to; held-out patch tokens are masked as keys
        in every query row (SDPA convention: True = take part in attention).
        """
        return self._valid(keep)[:, None, None, :]

    def _valid(self, keep: Tensor) -> Tensor:
        """(B, P + N) validity of every token from a (B, N) patch keep mask."""
        prefix = keep.new_ones(keep.shape[0], self.num_prefix_tokens)
        return torch.cat([prefix, keep], dim=1)

    def fill_held_out(self, tokens: Tensor, valid: Tensor) -> Tensor:
        """Make the head's pooling see only the valid tokens.

        For heads that average patch tokens (``avg``, ``max``, ``avgmax``,
        ``token+avg``) every invalid token is replaced by the mean of the valid tokens
        the pooling includes; the mean is then exactly the mean over valid tokens and
        the maximum is unchanged (a mean never exceeds the maximum). If a sample has no
        valid pooled token, its pooled features are zero. ``token`` heads read prefix
        tokens only and attention pooling (``map``) masks held-out keys itself, so
        their tokens are returned unchanged.

        Args:
            tokens: (B, T) + feature dims: final hidden states (after the final norm).
            valid: (B, T) boolean, True for tokens that exist.

        Returns:
            A tensor like ``tokens``.
        """
        if self.pool in ("token", "map"):
            return tokens
        pooled = valid.clone()
        if not self.pool_include_prefix:
            pooled[:, : self.num_prefix_tokens] = False
        w = pooled.to(tokens.dtype).unsqueeze(-1)
        fill = (tokens * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1.0)
        return torch.where(valid.unsqueeze(-1), tokens, fill)

    def readout_rows(self) -> Tensor:
        """Weights over token rows that the head reads, for relevance maps (default
        grid); see :meth:`readout_weights`."""
        return self.readout_weights(self.num_patches)

    def readout_weights(self, num_patches: int) -> Tensor:
        """Weights over the token rows that the head reads, for relevance maps.

        ``token`` heads read their prefix rows (the CLS row; the mean of the CLS and
        distillation rows when the output is the mean of two heads); pooled heads read
        the mean of all patch rows (the prefix rows too if the pooling includes them);
        ``token+avg`` (DINOv2: a linear head on the CLS token concatenated with the
        patch mean) gives the CLS row and the patch mean equal weight. Attention
        pooling (``map``) reads through the pool's own attention, which depends on the
        image: rollout and GenAtt take it from the recorded pool attention
        (:attr:`AttentionRecorder.pool_attention`), and this raises ``TypeError``.

        Args:
            num_patches: Number of patch tokens N of the sequence.

        Returns:
            A 1-D tensor of length ``P + N`` whose entries sum to 1.
        """
        p = self.num_prefix_tokens
        w = torch.zeros(p + num_patches)
        if self.pool == "map":
            raise TypeError(
                "readout_weights: an attention-pooled head reads through its own "
                "attention map; use the recorded pool attention"
            )
        if self.pool == "token":
            pre = self.readout_prefix_weights
            w[: len(pre)] = torch.tensor(pre)
        elif self.pool == "token+avg":
            w[0] = 0.5
            w[p:] = 0.5 / max(num_patches, 1)
        else:
            lo = 0 if self.pool_include_prefix else p
            w[lo:] = 1.0 / (p + num_patches - lo)
        return w

    # ------------------------------------------------------------ forward parts
    def embed(self, images: Tensor) -> Tensor:
        """Tokens entering block 0: patch embeddings, prefix tokens and positions.

        Args:
            images: (B, C, H, W) input batch.

        Returns:
            (B, P + N, D) hidden states (what the first block receives).
        """
        self.require(TOKENS, "embed")
        self.check_images(images)
        return self._embed(images)

    def _embed(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def _grid_for_tokens(
        self, tokens: Tensor, grid: Optional[Sequence[int]]
    ) -> Optional[Tuple[int, int]]:
        if grid is not None:
            return (int(grid[0]), int(grid[1]))
        n = tokens.shape[1] - self.num_prefix_tokens
        if n == self.num_patches:
            return self.grid_size
        return None

    def run_blocks(
        self,
        tokens: Tensor,
        start: int = 0,
        stop: Optional[int] = None,
        keep: Optional[Tensor] = None,
        grid: Optional[Sequence[int]] = None,
    ) -> Tensor:
        """Run blocks ``start .. stop - 1`` on a full token sequence.

        Args:
            tokens: (B, P + N, D) hidden states entering block ``start``.
            start: First block index (0 <= start <= L).
            stop: One past the last block (default L).
            keep: Optional (B, N) boolean patch keep mask; held-out patch tokens are
                masked as attention keys in every block (prefix tokens always kept).
            grid: Patch grid of the sequence; needed only by families with
                grid-dependent position terms (Eva's rotary embeddings) at a size
                other than the default.

        Returns:
            (B, P + N, D) hidden states after block ``stop - 1``.
        """
        self.require(TOKENS, "run_blocks")
        stop = self.num_layers if stop is None else stop
        if not 0 <= start <= stop <= self.num_layers:
            raise ValueError(
                f"start/stop: expected 0 <= start <= stop <= {self.num_layers}, got "
                f"start={start}, stop={stop}"
            )
        state = MaskState()
        if keep is not None:
            self.require(ATTENTION_MASK, "run_blocks(keep=...)")
            n = tokens.shape[1] - self.num_prefix_tokens
            self.check_keep(keep, tokens.shape[0], n)
            state.valid = self._valid(keep.to(tokens.device))
        grid_t = self._grid_for_tokens(tokens, grid)
        blocks = self.blocks[start:stop]
        with installed(lambda out: keep is not None and self._block_hooks(state, out)):
            x = tokens
            for i, blk in enumerate(blocks, start):
                x = self._run_block(i, blk, x, grid_t)
        return x

    def _run_block(
        self, index: int, block: nn.Module, x: Tensor, grid: Optional[Tuple[int, int]]
    ) -> Tensor:
        return block(x)

    def trunk_state_names(self, stop: int) -> List[str]:
        """``state_dict`` names of everything that computes block ``stop``'s input.

        That is the patch embedding, prefix tokens, position embedding and
        ``blocks[:stop]`` (persistent buffers included); the final norms and heads are
        never part of it. Empty for ``stop == 0``.

        Args:
            stop: Number of leading blocks (0 <= stop <= L).

        Returns:
            The names, in ``state_dict`` order.
        """
        if not 0 <= stop <= self.num_layers:
            raise ValueError(
                f"stop: expected 0 <= stop <= {self.num_layers}, got {stop}"
            )
        if stop == 0:
            return []
        blocks = self.blocks
        later = {
            id(p)
            for blk in blocks[stop:]
            for p in blk.state_dict(keep_vars=True).values()
        }
        after = {
            id(p)
            for m in self._after_blocks()
            for p in m.state_dict(keep_vars=True).values()
        }
        names = []
        for name, value in self.model.state_dict(keep_vars=True).items():
            if id(value) in later or id(value) in after:
                continue
            names.append(name)
        return names

    def _after_blocks(self) -> List[nn.Module]:
        """Modules that only run after the last block (final norm, pooling, head)."""
        raise NotImplementedError

    def _block_group(self, index: int) -> List[nn.Module]:
        """Modules whose parameters belong to block ``index`` in
        :meth:`parameter_groups` (the block itself; Swin adds the patch merging that
        runs right before a stage's first block)."""
        return [self.blocks[index]]

    def parameter_groups(self) -> List[Tuple[str, List[Tuple[str, nn.Parameter]]]]:
        """The model's parameters grouped from the output down.

        Order: ``"head"`` (what runs after the last block: final norm, pooling,
        classifier heads), then ``"blocks.{L-1}"`` down to ``"blocks.0"`` (block
        indices as in :attr:`blocks`), then ``"embedding"`` (everything before the
        blocks: patch embedding, prefix tokens, position embeddings or biases shared
        by all blocks). This is the order of the cascading randomisation of Adebayo
        et al. (2018). Groups without parameters are left out; every parameter is in
        exactly one group.

        Returns:
            ``[(group name, [(parameter name, parameter), ...]), ...]``, parameters in
            ``named_parameters`` order within a group.

        Examples::

            >>> [name for name, _ in ViTAdapter(model).parameter_groups()]
            ['head', 'blocks.1', 'blocks.0', 'embedding']
        """
        owner: Dict[int, str] = {}
        for m in self._after_blocks():
            for p in m.parameters():
                owner.setdefault(id(p), "head")
        for i in range(self.num_layers):
            for m in self._block_group(i):
                for p in m.parameters():
                    owner.setdefault(id(p), f"blocks.{i}")
        order = ["head"] + [f"blocks.{i}" for i in reversed(range(self.num_layers))]
        groups: Dict[str, List[Tuple[str, nn.Parameter]]] = {
            g: [] for g in order + ["embedding"]
        }
        for name, p in self.model.named_parameters():
            groups[owner.get(id(p), "embedding")].append((name, p))
        return [(g, params) for g, params in groups.items() if params]

    def final_norm(self, tokens: Tensor) -> Tensor:
        """The norm after the last block."""
        return self._final_norm_module()(tokens)

    def _final_norm_module(self) -> nn.Module:
        raise NotImplementedError

    def head(self, tokens: Tensor, keep: Optional[Tensor] = None) -> Tensor:
        """Final norm, pooling and classifier: hidden states after the last block to
        logits.

        Args:
            tokens: (B, P + N, D) output of the last block.
            keep: Optional (B, N) patch keep mask; pooled heads then pool over kept
                patch tokens only (attention pooling masks held-out keys).

        Returns:
            (B, num_classes) logits (pooled features for a headless model), as the
            model's own forward.
        """
        self.require(TOKENS, "head")
        x = self.final_norm(tokens)
        state = MaskState()
        if keep is not None:
            n = tokens.shape[1] - self.num_prefix_tokens
            self.check_keep(keep, tokens.shape[0], n)
            state.valid = self._valid(keep.to(tokens.device))
            x = self.fill_held_out(x, state.valid)
        with installed(lambda out: keep is not None and self._pool_hooks(state, out)):
            return self._head_from_normed(x)

    def _head_from_normed(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, images: Tensor, keep: Optional[Tensor] = None) -> Tensor:
        """``head(run_blocks(embed(images), keep=keep), keep=keep)``."""
        grid = self.check_images(images)
        tokens = self.embed(images)
        return self.head(self.run_blocks(tokens, keep=keep, grid=grid), keep=keep)

    # ------------------------------------------------------- masking machinery
    @contextmanager
    def masking(self, keep: Tensor, mode: str) -> Iterator[None]:
        """Hooks that make every forward of the model inside see only kept patches.

        The backbone of :class:`~captum_vit.vit.TokenMask`: ``"attention"`` masks
        held-out patch tokens as keys in every block (and in an attention pool);
        ``"drop"`` removes them after the position embedding, re-indexing
        position-dependent terms (rotary embeddings, relative position bias), and
        key-masks padding when samples keep different numbers of patches. Pooled heads
        pool over kept patches only. All hooks are removed on exit.

        Args:
            keep: (B, N) boolean keep mask for the batch that will be passed.
            mode: ``"attention"`` or ``"drop"``.
        """
        cap = TOKEN_DROP if mode == "drop" else ATTENTION_MASK
        self.require(cap, "TokenMask" if mode == "attention" else "TokenMask(drop)")
        state = MaskState()

        def install(out: List[Any]) -> None:
            out.append(
                self._tokens_module().register_forward_hook(
                    lambda m, a, x: self._on_tokens(x, keep, mode, state)
                )
            )
            self._block_hooks(state, out)
            out.append(
                self._final_norm_module().register_forward_hook(
                    lambda m, a, x: self._on_final_norm(x, state)
                )
            )
            self._pool_hooks(state, out)

        with installed(install):
            yield

    def _tokens_module(self) -> nn.Module:
        """The module whose output is the (B, P + N, D) sequence entering block 0."""
        raise NotImplementedError

    def _on_tokens(self, x: Tensor, keep: Tensor, mode: str, state: MaskState):
        p = self.num_prefix_tokens
        keep = self.check_keep(keep.to(x.device), x.shape[0], x.shape[1] - p)
        state.cache.clear()
        if mode == "attention":
            state.valid, state.index = self._valid(keep), None
            return None
        index, valid_patch = drop_index(keep)
        patches = x[:, p:].gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        state.index = index
        state.valid = None if bool(valid_patch.all()) else self._valid(valid_patch)
        return torch.cat([x[:, :p], patches], dim=1)

    def _on_final_norm(self, out: Tensor, state: MaskState) -> Optional[Tensor]:
        if state.valid is None:
            return None
        return self.fill_held_out(out, state.valid)

    def _block_hooks(self, state: MaskState, out: List[Any]) -> None:
        """Install hooks passing ``state``'s key mask (and re-indexed position terms
        in drop mode) to every block; append their handles to ``out``."""
        raise NotImplementedError

    def _pool_hooks(self, state: MaskState, out: List[Any]) -> None:
        """Install hooks masking held-out keys in an attention pool (if any)."""

    def full_token_index(self, state: MaskState) -> Optional[Tensor]:
        """(B, P + K) indices into the full sequence of the tokens kept in drop mode."""
        if state.index is None:
            return None
        p = self.num_prefix_tokens
        prefix = torch.arange(p, device=state.index.device).expand(
            state.index.shape[0], p
        )
        return torch.cat([prefix, state.index + p], dim=1)

    # ------------------------------------------------------------- attention
    @contextmanager
    def attention_probes(
        self,
        layers: Sequence[int],
        on_block: Callable[[int, Tensor], None],
        on_pool: Optional[Callable[[Tensor], None]] = None,
    ) -> Iterator[None]:
        """Report the post-softmax attention of the chosen blocks during forwards.

        The attention modules are switched to an explicit path (no fused kernel) for
        the duration; ``on_block(layer, probs)`` receives block ``layer``'s
        (B, heads, T, T) probabilities as used by the forward pass (so gradients can
        be taken with respect to them). ``on_pool(probs)`` receives an attention
        pool's (B, heads, Q, T) probabilities over the tokens it pools.

        Args:
            layers: Block indices.
            on_block: Callback for block attention.
            on_pool: Callback for the attention pool (attention-pooled heads only).
        """
        self.require(RECORDED_ATTENTION, "record_attention")
        with installed(
            lambda out: self._attention_hooks(list(layers), on_block, on_pool, out)
        ):
            yield

    def _attention_hooks(
        self,
        layers: List[int],
        on_block: Callable[[int, Tensor], None],
        on_pool: Optional[Callable[[Tensor], None]],
        out: List[Any],
    ) -> None:
        raise NotImplementedError

    @contextmanager
    def value_probes(
        self,
        layers: Sequence[int],
        on_block: Callable[[int, Tensor, Tensor], None],
    ) -> Iterator[None]:
        """Report each chosen block's input and projected attention values.

        ``on_block(layer, inputs, values)`` receives block ``layer``'s (B, T, D)
        input tokens (the residual stream before the block's first norm) and the
        (B, T, D) values ``W_O v_j`` of every token j: the per-head value vectors,
        concatenated over the heads and multiplied by the output projection's
        weight, without its bias (what the attention would output for token j if
        it attended only to itself). Needs :data:`VALUE_PROJECTION`.

        Args:
            layers: Block indices.
            on_block: Callback, called once per chosen block and forward pass.

        Raises:
            TypeError: the family does not offer projected values.
        """
        self.require(VALUE_PROJECTION, "value_probes")
        with installed(lambda out: self._value_hooks(list(layers), on_block, out)):
            yield

    def _value_hooks(
        self,
        layers: List[int],
        on_block: Callable[[int, Tensor, Tensor], None],
        out: List[Any],
    ) -> None:
        raise NotImplementedError

    @property
    def pool_offset(self) -> int:
        """Index of the first token an attention pool attends to (P when the pool
        skips the prefix tokens, else 0)."""
        return 0

    # ----------------------------------------------------------- feature maps
    @property
    def feature_distance_threshold(self) -> float:
        """ViT-CX's default clustering cut for this family (0.1; 0.05 for Swin)."""
        return 0.1

    def feature_module(self) -> nn.Module:
        """Default module whose output gives ViT-CX's feature maps: the normalised
        attention input of the last block (:meth:`attention_input`) for token
        families."""
        return self.attention_input(-1)

    def attention_input(self, block: int) -> nn.Module:
        """The module whose output is block ``block``'s normalised attention input.

        Its output is what the block's attention sees: (B, P + N, D) tokens on token
        families (timm ``norm1``, torchvision ``ln_1``, Hugging Face
        ``layernorm_before``), an NHWC map on Swin; :meth:`feature_maps` turns it
        into (B, D, h, w) maps. ViT-CX's feature layer (the last block's) and the
        "GradCAM (LN)" layer of the ViT Shapley paper's baselines.

        Args:
            block: Block index (negative counts from the end).

        Returns:
            The module.

        Raises:
            ValueError: ``block`` out of range.
            TypeError: the block has no pre-attention norm.
        """
        n = self.num_layers
        blk = self.blocks[check_int("block", block, -n, n - 1)]
        norm = self._attention_input_of(blk)
        if not isinstance(norm, nn.Module):
            raise TypeError(
                f"block: {type(blk).__name__} has no pre-attention norm; pass the "
                "module whose output should be used explicitly"
            )
        return norm

    def _attention_input_of(self, block: nn.Module) -> Optional[nn.Module]:
        """The pre-attention norm of one block (None if it has none)."""
        return getattr(block, "norm1", None)

    @property
    def input_normalization(self) -> Optional[Normalization]:
        """The ``(mean, std)`` per channel with which the model's inputs are
        normalised, where the model records it (timm's ``pretrained_cfg``, which
        ``timm.create_model`` attaches to every model it builds); None otherwise
        (torchvision and Hugging Face keep it in their transforms / image
        processors, not in the model)."""
        return None

    def feature_maps(self, output: Any, images: Tensor) -> Tensor:
        """(B, D, gh, gw) feature maps from ``feature_module``-like token output.

        Args:
            output: The output of the feature module, (B, P + N, D) tokens.
            images: The images of the forward pass.

        Returns:
            (B, D, gh, gw) maps (prefix tokens removed).

        Raises:
            ValueError: if ``output`` is not token-shaped for these images.
        """
        gh, gw = self.check_images(images)
        b, t = images.shape[0], self.num_prefix_tokens + gh * gw
        if (
            not isinstance(output, Tensor)
            or output.dim() != 3
            or tuple(output.shape[:2]) != (b, t)
        ):
            shape = (
                tuple(output.shape)
                if isinstance(output, Tensor)
                else type(output).__name__
            )
            raise ValueError(
                "layer: expected a token-shaped output (B, P + N, D) = "
                f"({b}, {t}, D), got {shape}; pick a module inside the blocks such as "
                "the last block's first norm"
            )
        p = self.num_prefix_tokens
        return output[:, p:].reshape(b, gh, gw, -1).permute(0, 3, 1, 2)


def resolve_layer_indices(
    adapter: ViTAdapter, layers: Optional[Sequence[int]], name: str = "layers"
) -> List[int]:
    """Normalise block indices (negative allowed) and validate them."""
    n = adapter.num_layers
    if layers is None:
        return list(range(n))
    out = []
    for i in layers:
        i = check_int(name, i)  # integer-like (NumPy, 0-d tensors) or an error
        j = i + n if i < 0 else i
        if not 0 <= j < n:
            raise ValueError(f"{name}: block index {i} out of range for {n} blocks")
        out.append(j)
    if not out:
        raise ValueError(f"{name}: expected at least one block index")
    return out


def is_supported_vit(model: Any) -> bool:
    """Whether ``ViTAdapter(model)`` would succeed.

    Args:
        model: Any object, typically an ``nn.Module``.

    Returns:
        True if some family adapter serves ``model``.
    """
    try:
        ViTAdapter(model)
    except TypeError:
        return False
    return True


# ------------------------------------------------------------------ families
SUPPORTED_FAMILIES = (
    "timm VisionTransformer (CLS, register tokens, avg/max pooling, attention "
    "pooling global_pool='map'), VisionTransformerDistilled (DeiT distilled), Eva "
    "(EVA-02), Beit and SwinTransformer; torchvision VisionTransformer (vit_b_16, "
    "...); Hugging Face ViTForImageClassification, DeiTForImageClassification"
    "(WithTeacher), Dinov2ForImageClassification and "
    "Dinov2WithRegistersForImageClassification"
    "; the image towers of image-text models: Hugging Face CLIPVisionModel"
    "(WithProjection), SiglipVisionModel and SiglipForImageClassification, OpenCLIP "
    "VisionTransformer, and captum_vit.ZeroShotClassifier around them"
)

_A = TypeVar("_A", bound=ViTAdapter)

#: ``(priority, adapter class)`` of every registered family (see
#: :func:`register_family`), filled as :mod:`captum_vit.vit.families` is imported.
_REGISTRY: List[Tuple[int, Type[ViTAdapter]]] = []


def register_family(priority: int) -> Callable[[Type[_A]], Type[_A]]:
    """Class decorator: make ``ViTAdapter(model)`` try this family adapter.

    Families are tried in increasing ``priority`` (more specific model classes
    first: Eva and BEiT before the generic timm ``VisionTransformer``). A class
    registered again (a reloaded module) replaces its earlier entry.

    Args:
        priority: Matching order of the family; ties keep registration order.

    Returns:
        The decorator, which returns the class unchanged.

    Examples::

        >>> @register_family(priority=70)
        ... class MyAdapter(ViTAdapter):
        ...     @classmethod
        ...     def matches(cls, model):
        ...         return isinstance(model, MyViT)
    """

    def register(cls: Type[_A]) -> Type[_A]:
        key = (cls.__module__, cls.__qualname__)
        _REGISTRY[:] = [
            (p, c) for p, c in _REGISTRY if (c.__module__, c.__qualname__) != key
        ]
        _REGISTRY.append((int(priority), cls))
        _REGISTRY.sort(key=lambda entry: entry[0])  # stable: ties keep their order
        return cls

    return register


def registered_families() -> List[Type[ViTAdapter]]:
    """The registered family adapters, in matching order."""
    return [cls for _, cls in _REGISTRY]


def family_of(model: Any) -> Type[ViTAdapter]:
    """The adapter class serving ``model``.

    Args:
        model: The (unwrapped) model.

    Returns:
        The first registered family adapter whose ``matches(model)`` holds.

    Raises:
        TypeError: naming the supported families when none matches.
    """
    for fam in registered_families():
        if fam.matches(model):
            return fam
    raise TypeError(
        f"model: expected a supported Vision Transformer ({SUPPORTED_FAMILIES}); "
        f"got {type(model).__name__}"
    )
