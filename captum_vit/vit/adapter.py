"""The one place that knows how a timm Vision Transformer is built.

Every method in captum-vit asks a :class:`ViTAdapter` for the patch grid, the prefix
tokens, the blocks and the head, so that adding a model family means changing this
module (and its tests) only.

Supported families (timm >= 1.0):

- ``timm.models.vision_transformer.VisionTransformer`` with a CLS token, register tokens
  and/or CLS-free average/max pooling (``global_pool`` in ``token``, ``avg``, ``max``,
  ``avgmax``), static or ``dynamic_img_size`` inputs;
- ``timm.models.deit.VisionTransformerDistilled`` (CLS + distillation token);
- ``timm.models.eva.Eva`` (EVA-02 style, rotary position embeddings).

Attention pooling (``global_pool="map"``), Swin, BEiT and other families raise a
``TypeError`` naming the supported families.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch import Tensor

from .._guard import unwrap_compiled
from .._utils import check_int

SUPPORTED_FAMILIES = (
    "timm VisionTransformer (CLS, register tokens, avg/max pooling), "
    "VisionTransformerDistilled (DeiT distilled) and Eva (EVA-02)"
)
_POOLS = ("token", "avg", "max", "avgmax")
#: Top-level submodules that come after the blocks (final norms and heads).
_AFTER_BLOCKS = ("norm", "fc_norm", "head", "head_dist", "head_drop", "attn_pool")


def _family(model: nn.Module) -> Optional[str]:
    try:
        from timm.models.eva import Eva
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:  # pragma: no cover - timm is a hard dependency
        return None
    if isinstance(model, Eva):
        return "eva"
    if isinstance(model, VisionTransformer):
        return "vit"
    return None


def is_supported_vit(model: Any) -> bool:
    """Whether ``model`` is a timm ViT that :class:`ViTAdapter` can serve.

    Args:
        model: Any object, typically an ``nn.Module``.

    Returns:
        True if ``ViTAdapter(model)`` would succeed.
    """
    try:
        ViTAdapter(model)
    except TypeError:
        return False
    return True


class ViTAdapter:
    """Uniform view of a timm Vision Transformer.

    The adapter holds no state besides the model: it can be created freely, and it never
    modifies the model.

    Args:
        model: A timm ``VisionTransformer``, ``VisionTransformerDistilled`` or ``Eva``
            (or a ``ViTAdapter``, returned as is by :meth:`of`); a model wrapped by
            ``torch.compile`` is unwrapped to the original module.

    Raises:
        TypeError: if ``model`` is not one of the supported families, or uses attention
            pooling or a block layout the adapter cannot serve honestly.

    Examples::

        >>> adapter = ViTAdapter(model)
        >>> tokens = adapter.embed(images)            # (B, P + N, D)
        >>> logits = adapter.head(adapter.run_blocks(tokens))
        >>> torch.allclose(logits, model(images), atol=1e-5)
        True
    """

    def __init__(self, model: nn.Module) -> None:
        if isinstance(model, ViTAdapter):
            model = model.model
        model = unwrap_compiled(model)  # torch.compile(model) -> model
        family = _family(model)
        if family is None:
            raise TypeError(
                f"model: expected a supported timm Vision Transformer "
                f"({SUPPORTED_FAMILIES}); got {type(model).__name__}"
            )
        if getattr(model, "attn_pool", None) is not None:
            raise TypeError(
                "model: attention pooling (global_pool='map') is not supported; "
                f"supported: {SUPPORTED_FAMILIES}"
            )
        if model.global_pool not in _POOLS:
            raise TypeError(
                f"model: global_pool={model.global_pool!r} is not supported (expected "
                f"one of {_POOLS}, i.e. a classifier head); supported: "
                f"{SUPPORTED_FAMILIES}"
            )
        if family == "eva" and getattr(model, "rope_mixed", False):
            raise TypeError(
                "model: Eva with depth-dependent ('mixed') rotary embeddings is not "
                f"supported; supported: {SUPPORTED_FAMILIES}"
            )
        for i, blk in enumerate(model.blocks):
            attn = getattr(blk, "attn", None)
            if attn is None or not hasattr(attn, "attn_drop"):
                raise TypeError(
                    f"model: block {i} ({type(blk).__name__}) has no standard "
                    f"attention module; supported: {SUPPORTED_FAMILIES}"
                )
        self.model = model
        self.family = family

    @classmethod
    def of(cls, model: Union[nn.Module, "ViTAdapter"]) -> "ViTAdapter":
        """Return ``model`` if it is an adapter already, else ``ViTAdapter(model)``."""
        return model if isinstance(model, ViTAdapter) else cls(model)

    # ------------------------------------------------------------------ geometry
    @property
    def num_prefix_tokens(self) -> int:
        """CLS + distillation + register tokens (0 for CLS-free pooled models)."""
        return int(self.model.num_prefix_tokens)

    @property
    def patch_size(self) -> Tuple[int, int]:
        """Patch size (ph, pw) in pixels."""
        return tuple(int(p) for p in self.model.patch_embed.patch_size)

    @property
    def grid_size(self) -> Tuple[int, int]:
        """Patch grid (gh, gw) of the model's default input size."""
        return tuple(int(g) for g in self.model.patch_embed.grid_size)

    @property
    def num_patches(self) -> int:
        """Number of patch tokens N at the model's default input size."""
        gh, gw = self.grid_size
        return gh * gw

    @property
    def num_layers(self) -> int:
        """Number of transformer blocks L."""
        return len(self.model.blocks)

    @property
    def embed_dim(self) -> int:
        """Hidden width D."""
        return int(self.model.embed_dim)

    @property
    def num_classes(self) -> int:
        """Number of output classes."""
        return int(self.model.num_classes)

    @property
    def pool(self) -> str:
        """The head's pooling: ``token``, ``avg``, ``max`` or ``avgmax``."""
        return str(self.model.global_pool)

    @property
    def blocks(self) -> List[nn.Module]:
        """The transformer blocks, in order."""
        return list(self.model.blocks)

    def attention_modules(self) -> List[nn.Module]:
        """The attention module of every block, in layer order."""
        return [blk.attn for blk in self.model.blocks]

    @property
    def dynamic_img_size(self) -> bool:
        """Whether the model accepts other image sizes than its default."""
        return bool(getattr(self.model, "dynamic_img_size", False))

    @property
    def image_size(self) -> Tuple[int, int]:
        """The (H, W) input size the model was built for (its default size)."""
        return tuple(int(s) for s in self.model.patch_embed.img_size)

    def check_images(self, images: Tensor, name: str = "inputs") -> Tuple[int, int]:
        """Validate an image batch for this model and return its patch grid.

        Args:
            images: A (B, C, H, W) tensor.
            name: Argument name used in error messages.

        Returns:
            The patch grid (gh, gw) the model will use for these images.

        Raises:
            ValueError: wrong rank, channel count, or a size the model rejects.
        """
        if not isinstance(images, Tensor):
            raise TypeError(
                f"{name}: expected a (B, C, H, W) tensor, got {type(images)}"
            )
        if images.dim() != 4:
            raise ValueError(
                f"{name}: expected a (B, C, H, W) image batch, got shape "
                f"{tuple(images.shape)}"
            )
        pe = self.model.patch_embed
        in_chans = pe.proj.in_channels if hasattr(pe, "proj") else images.shape[1]
        if images.shape[1] != in_chans:
            raise ValueError(
                f"{name}: the model expects {in_chans} channels, got {images.shape[1]}"
            )
        hw = (int(images.shape[-2]), int(images.shape[-1]))
        if self.dynamic_img_size:
            ph, pw = self.patch_size
            if not getattr(pe, "dynamic_img_pad", False) and (hw[0] % ph or hw[1] % pw):
                raise ValueError(
                    f"{name}: image size {hw} is not a multiple of the patch size "
                    f"{self.patch_size}"
                )
            return tuple(int(g) for g in pe.dynamic_feat_size(hw))
        expected = self.image_size
        if hw != expected and getattr(pe, "strict_img_size", True):
            raise ValueError(
                f"{name}: this model was built for {expected[0]}x{expected[1]} images "
                f"(without dynamic_img_size); got {hw[0]}x{hw[1]}. Resize the images "
                "or create the model with dynamic_img_size=True."
            )
        return self.grid_size

    def grid_for(self, images: Tensor) -> Tuple[int, int]:
        """Patch grid (gh, gw) for an image batch (validated)."""
        return self.check_images(images)

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
        return keep

    def key_mask(self, keep: Tensor) -> Tensor:
        """Boolean attention mask (B, 1, 1, P + N) from a patch keep mask.

        Prefix tokens are always attended to; held-out patch tokens are masked as keys
        in every query row (timm/SDPA convention: True = take part in attention).
        """
        prefix = keep.new_ones(keep.shape[0], self.num_prefix_tokens)
        return torch.cat([prefix, keep], dim=1)[:, None, None, :]

    def fill_held_out(self, tokens: Tensor, valid: Tensor) -> Tensor:
        """Make the head's pooling see only the valid tokens.

        For pooled heads (avg, max, avgmax) every invalid token is replaced by the mean
        of the valid tokens the pooling includes; the mean is then exactly the mean over
        valid tokens and the maximum is unchanged (a mean never exceeds the maximum).
        If a sample has no valid pooled token, its pooled features are zero. CLS/token
        pooling reads prefix tokens only and is returned unchanged.

        Args:
            tokens: (B, T, D) final hidden states (after the model's final norm).
            valid: (B, T) boolean, True for tokens that exist.

        Returns:
            A tensor like ``tokens``.
        """
        if self.pool == "token":
            return tokens
        include_prefix = bool(getattr(self.model, "pool_include_prefix", False))
        pooled = valid.clone()
        if not include_prefix:
            pooled[:, : self.num_prefix_tokens] = False
        w = pooled.to(tokens.dtype).unsqueeze(-1)
        fill = (tokens * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1.0)
        return torch.where(valid.unsqueeze(-1), tokens, fill)

    def block_kwargs(
        self,
        attn_mask: Optional[Tensor] = None,
        rope: Optional[Tensor] = None,
    ) -> Dict[str, Tensor]:
        """Keyword arguments every block of this family takes."""
        kwargs: Dict[str, Tensor] = {}
        if attn_mask is not None:
            kwargs["attn_mask"] = attn_mask
        if self.family == "eva" and rope is not None:
            kwargs["rope"] = rope
        return kwargs

    def rope(self, grid: Tuple[int, int]) -> Optional[Tensor]:
        """Rotary embedding (N, dim) for a patch grid (Eva), else None."""
        if self.family != "eva" or self.model.rope is None:
            return None
        rope = self.model.rope
        if tuple(grid) == self.grid_size and hasattr(rope, "feat_shape"):
            return rope.get_embed()
        return rope.get_embed(shape=list(grid))

    def gather_rope(self, rope: Optional[Tensor], index: Tensor) -> Optional[Tensor]:
        """Rotary embedding of kept patches: (N, dim) -> (B, 1, K, dim)."""
        if rope is None:
            return None
        return rope[index].unsqueeze(1)

    # ------------------------------------------------------------ forward parts
    def embed(self, images: Tensor) -> Tensor:
        """Tokens entering block 0: patch embeddings, prefix tokens and positions.

        Args:
            images: (B, C, H, W) input batch.

        Returns:
            (B, P + N, D) hidden states (what ``model.blocks[0]`` receives).
        """
        self.check_images(images)
        m = self.model
        x = m.patch_embed(images)
        if self.family == "eva":
            x, _ = m._pos_embed(x)
        else:
            x = m._pos_embed(x)
            x = m.patch_drop(x)
        return m.norm_pre(x)

    def _grid_for_tokens(self, tokens: Tensor, grid: Optional[Sequence[int]]):
        if grid is not None:
            return tuple(int(g) for g in grid)
        n = tokens.shape[1] - self.num_prefix_tokens
        if n == self.num_patches:
            return self.grid_size
        if self.family == "eva":
            raise ValueError(
                "grid: this Eva model needs the patch grid for a sequence of "
                f"{n} patch tokens (pass grid=(gh, gw))"
            )
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
            grid: Patch grid of the sequence; needed only for Eva models at a size
                other than the default.

        Returns:
            (B, P + N, D) hidden states after block ``stop - 1``.
        """
        stop = self.num_layers if stop is None else stop
        if not 0 <= start <= stop <= self.num_layers:
            raise ValueError(
                f"start/stop: expected 0 <= start <= stop <= {self.num_layers}, got "
                f"start={start}, stop={stop}"
            )
        attn_mask = None
        if keep is not None:
            n = tokens.shape[1] - self.num_prefix_tokens
            self.check_keep(keep, tokens.shape[0], n)
            attn_mask = self.key_mask(keep)
        rope = None
        if self.family == "eva":
            rope = self.rope(self._grid_for_tokens(tokens, grid))
        kwargs = self.block_kwargs(attn_mask, rope)
        x = tokens
        for blk in self.model.blocks[start:stop]:
            x = blk(x, **kwargs)
        return x

    def trunk_state_names(self, stop: int) -> List[str]:
        """``state_dict`` names of everything that computes block ``stop``'s input.

        That is the patch embedding, prefix tokens, position embedding, ``norm_pre``
        and ``blocks[:stop]`` (persistent buffers included); the final norms and
        heads are never part of it. Empty for ``stop == 0``.

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
        names = []
        for name in self.model.state_dict():
            parts = name.split(".")
            if parts[0] in _AFTER_BLOCKS:
                continue
            if parts[0] == "blocks" and int(parts[1]) >= stop:
                continue
            names.append(name)
        return names

    def final_norm(self, tokens: Tensor) -> Tensor:
        """The norm after the last block (``forward_features``' last step)."""
        return self.model.norm(tokens)

    def head(self, tokens: Tensor, keep: Optional[Tensor] = None) -> Tensor:
        """Final norm, pooling and classifier: hidden states after the last block to
        logits.

        Args:
            tokens: (B, P + N, D) output of the last block.
            keep: Optional (B, N) patch keep mask; pooled heads then pool over kept
                patch tokens only.

        Returns:
            (B, num_classes) logits, as ``model.forward_head``.
        """
        x = self.final_norm(tokens)
        if keep is not None:
            n = tokens.shape[1] - self.num_prefix_tokens
            self.check_keep(keep, tokens.shape[0], n)
            x = self.fill_held_out(x, self.key_mask(keep)[:, 0, 0])
        return self.model.forward_head(x)

    def forward(self, images: Tensor, keep: Optional[Tensor] = None) -> Tensor:
        """``head(run_blocks(embed(images), keep=keep), keep=keep)``."""
        grid = self.check_images(images)
        tokens = self.embed(images)
        return self.head(self.run_blocks(tokens, keep=keep, grid=grid), keep=keep)

    def readout_rows(self) -> Tensor:
        """Weights over token rows that the head reads, for relevance maps.

        CLS-pooled models read row 0; distilled DeiT reads the CLS and distillation rows
        (their mean, as the eval-mode output is the mean of both heads); pooled models
        read the mean of all patch rows (the prefix rows too if the pooling includes
        them).

        Returns:
            A 1-D tensor of length ``P + N`` (default grid) whose entries sum to 1; use
            :meth:`readout_weights` for another grid.
        """
        return self.readout_weights(self.num_patches)

    def readout_weights(self, num_patches: int) -> Tensor:
        """:meth:`readout_rows` for a sequence with ``num_patches`` patch tokens."""
        p = self.num_prefix_tokens
        w = torch.zeros(p + num_patches)
        if self.pool == "token":
            is_distilled = getattr(self.model, "dist_token", None) is not None
            if is_distilled:
                w[:2] = 0.5
            else:
                w[0] = 1.0
        else:
            lo = 0 if getattr(self.model, "pool_include_prefix", False) else p
            w[lo:] = 1.0 / (p + num_patches - lo)
        return w


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
