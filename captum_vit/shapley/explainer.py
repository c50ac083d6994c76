"""The ViT Shapley explainer: a ViT predicting Shapley values for every patch and class.

Architecture (Covert et al., ICLR 2023, appendix C): a timm ViT backbone (by default a
copy of the surrogate, whose classifier head is removed), all of its tokens after the
final norm, one extra transformer block whose first norm is the identity, a LayerNorm,
an MLP ``D → 4D → 4D → C`` with GELU, the prefix-token outputs dropped, ``tanh``, and
finally the *additive efficient normalisation*

    ``φ ← φ + (v(1) − v(0) − Σ_i φ_i) / N``    (per image and class)

which makes ``Σ_i φ_i = v(1) − v(0)`` exact, with ``v`` the surrogate's probabilities.

Optionally (``shared_blocks=k``, not in the paper) the embedding and the first ``k``
blocks of the backbone stay frozen copies of the surrogate's. They are then not
trained, and :class:`~captum_vit.attr.ViTShapley` runs them once per image for both the
surrogate's ``v(1)`` and the explainer, which lowers the inference cost from about
``2 + 2.7/L`` classifier forwards to ``2 + (2.7 − k)/L``.
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn
from torch import Tensor

from .._utils import check_int, check_number
from ..vit import PREFIX_TOKENS, TOKENS, ViTAdapter

__all__ = [
    "ShapleyExplainer",
    "classifier_digest",
    "shared_state_names",
    "efficient_normalization",
    "load_explainer",
    "load_surrogate",
    "save_explainer",
    "save_surrogate",
]

_EXPLAINER_FORMAT = "captum_vit.shapley.explainer"
_SURROGATE_FORMAT = "captum_vit.shapley.surrogate"
PathLike = Union[str, Path]


def classifier_digest(model: nn.Module) -> str:
    """Short SHA-256 of a model's weights (names and float32 values, any device or
    dtype): ties a surrogate to the classifier it was fine-tuned from, and an
    explainer to its surrogate.

    Args:
        model: Any module.

    Returns:
        16 hex digits.

    Examples::

        >>> classifier_digest(model) == classifier_digest(copy.deepcopy(model))
        True
    """
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().float().numpy().tobytes())
    return h.hexdigest()[:16]


def efficient_normalization(phi: Tensor, v1: Tensor, v0: Tensor) -> Tensor:
    """Additive efficient normalisation: shift every patch by the same amount so that
    ``phi.sum(1) == v1 − v0`` for every image and class.

    The correction is computed in float64 and cast back, so efficiency holds to float32
    rounding of the result.

    Args:
        phi: (B, N, C) unnormalised values.
        v1: (B, C) values of the full coalition.
        v0: (C,) or (B, C) values of the empty coalition.

    Returns:
        (B, N, C) normalised values.

    Examples::

        >>> phi = efficient_normalization(torch.zeros(1, 4, 2), torch.ones(1, 2),
        ...                               torch.zeros(2))
        >>> phi.sum(1)
        tensor([[1., 1.]])
    """
    n = phi.shape[1]
    gap = (v1.double() - v0.double()) - phi.double().sum(dim=1)
    return (phi.double() + gap.unsqueeze(1) / n).to(phi.dtype)


class _SharedRef:
    """Holds an object that ``copy.deepcopy`` must not duplicate (the surrogate)."""

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __deepcopy__(self, memo: Dict) -> "_SharedRef":
        return self


def shared_state_names(model: nn.Module, shared_blocks: int) -> List[str]:
    """Parameter and buffer names of a ViT's trunk up to block ``shared_blocks − 1``
    (see :meth:`captum_vit.vit.ViTAdapter.trunk_state_names`); empty for 0.

    Args:
        model: A supported timm ViT.
        shared_blocks: Number of leading blocks in the trunk.

    Returns:
        The names, as in ``model.state_dict()``.
    """
    return ViTAdapter.of(model).trunk_state_names(shared_blocks)


def _default_heads(embed_dim: int) -> int:
    for h in (embed_dim // 64, 4, 2, 1):
        if h >= 1 and embed_dim % h == 0:
            return h
    return 1


class ShapleyExplainer(nn.Module):
    """Predicts Shapley values ``φ(x) ∈ R^{N×C}`` of every patch for every class.

    :meth:`forward` returns the *unnormalised* ``tanh`` outputs; the efficient
    normalisation needs the surrogate's ``v(1)`` and ``v(0)`` and is applied by
    :meth:`shapley_values`, :func:`~captum_vit.shapley.train_explainer` and
    :class:`~captum_vit.attr.ViTShapley`.

    Args:
        backbone: A supported timm ViT (see :class:`~captum_vit.vit.ViTAdapter`) with
            at least one prefix token; it becomes a submodule and is trained. Its
            classifier head is not used (:meth:`from_surrogate` removes it). The
            explainer's other parts are created with the backbone's dtype and device.
        num_classes: Number of classes C (the surrogate's).
        num_heads: Heads of the extra attention block (default ``D // 64``, or a
            divisor of D for small widths).
        mlp_ratio: Hidden width of the output MLP and of the extra block's MLP, as a
            multiple of D (paper: 4).
        shared_blocks: Keep the backbone's embedding and first ``shared_blocks``
            blocks frozen (0 = train everything, the paper's setting). With a backbone
            copied from the surrogate (:meth:`from_surrogate`), that trunk is shared
            with the surrogate at inference (see :class:`~captum_vit.attr.ViTShapley`).

    Examples::

        >>> explainer = ShapleyExplainer.from_surrogate(surrogate)
        >>> raw = explainer(images)                       # (B, N, C)
        >>> phi = explainer.shapley_values(images)        # efficient, (B, N, C)
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        num_heads: Optional[int] = None,
        mlp_ratio: float = 4.0,
        shared_blocks: int = 0,
    ) -> None:
        super().__init__()
        from timm.models.vision_transformer import Block

        adapter = ViTAdapter(backbone)
        adapter.require(TOKENS, "ShapleyExplainer")
        adapter.require(PREFIX_TOKENS, "ShapleyExplainer")
        num_classes = check_int("num_classes", num_classes, 1)
        dim = adapter.embed_dim
        heads = _default_heads(dim) if num_heads is None else None
        if heads is None:
            heads = check_int("num_heads", num_heads, 1, dim)
            if dim % heads:
                raise ValueError(
                    f"num_heads: must divide the embedding width {dim}, got {heads}"
                )
        mlp_ratio = check_number("mlp_ratio", mlp_ratio, 0.0, low_open=True)
        shared_blocks = check_int("shared_blocks", shared_blocks, 0, adapter.num_layers)
        hidden = max(1, int(round(mlp_ratio * dim)))
        self.backbone = backbone
        self.attn_block = Block(dim, heads, mlp_ratio=float(mlp_ratio), qkv_bias=True)
        self.attn_block.norm1 = nn.Identity()
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, num_classes),
        )
        self.config: Dict[str, Any] = {
            "num_classes": int(num_classes),
            "num_patches": adapter.num_patches,
            "grid_size": list(adapter.grid_size),
            "num_prefix_tokens": adapter.num_prefix_tokens,
            "embed_dim": dim,
            "num_layers": adapter.num_layers,
            "num_heads": heads,
            "mlp_ratio": float(mlp_ratio),
            "shared_blocks": int(shared_blocks),
        }
        self._surrogate = _SharedRef(None)
        # the new parts follow the backbone's dtype and device (e.g. a float64 or GPU
        # surrogate), so the explainer never mixes parameter types
        ref = next((p for p in backbone.parameters() if p.is_floating_point()), None)
        if ref is not None:
            for part in (self.attn_block, self.norm, self.mlp):
                part.to(device=ref.device, dtype=ref.dtype)
        frozen = set(shared_state_names(backbone, shared_blocks))
        for name, p in backbone.named_parameters():
            if name in frozen:
                p.requires_grad_(False)

    def __setattr__(self, name: str, value: Any) -> None:
        # ``surrogate`` is a property backed by a non-module reference: bypass
        # nn.Module's registration of module-valued attributes as submodules.
        if name == "surrogate":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    # ----------------------------------------------------------------- building
    @classmethod
    def from_surrogate(
        cls,
        surrogate: nn.Module,
        num_heads: Optional[int] = None,
        mlp_ratio: float = 4.0,
        shared_blocks: int = 0,
    ) -> "ShapleyExplainer":
        """An explainer whose backbone is a copy of ``surrogate`` (paper default).

        The surrogate itself is not modified; it is remembered (not as a submodule, so
        it is neither saved nor trained) as the explainer's default :attr:`surrogate`.
        The explainer has the surrogate's dtype and device (e.g.
        ``from_surrogate(model.double())`` gives a float64 explainer).

        Args:
            surrogate: The fine-tuned surrogate (or the classifier).
            num_heads: See :class:`ShapleyExplainer`.
            mlp_ratio: See :class:`ShapleyExplainer`.
            shared_blocks: See :class:`ShapleyExplainer`.

        Returns:
            A new explainer in train mode; every parameter outside the shared trunk
            is trainable.
        """
        adapter = ViTAdapter(surrogate)
        backbone = adapter.without_head()
        for p in backbone.parameters():
            p.requires_grad_(True)
        explainer = cls(
            backbone, adapter.num_classes, num_heads, mlp_ratio, shared_blocks
        )
        explainer.surrogate = surrogate
        return explainer.train()

    @property
    def surrogate(self) -> Optional[nn.Module]:
        """The surrogate this explainer was built for (not a submodule), or None."""
        return self._surrogate.obj

    @surrogate.setter
    def surrogate(self, model: Optional[nn.Module]) -> None:
        if model is not None:
            self.check_surrogate(model)
        self._surrogate = _SharedRef(model)

    @property
    def num_patches(self) -> int:
        """Number of patches N the explainer was built for."""
        return int(self.config["num_patches"])

    @property
    def shared_blocks(self) -> int:
        """Number of leading backbone blocks kept frozen (shareable with the
        surrogate)."""
        return int(self.config.get("shared_blocks", 0))

    @property
    def num_classes(self) -> int:
        """Number of classes C."""
        return int(self.config["num_classes"])

    def check_surrogate(self, surrogate: nn.Module, name: str = "surrogate") -> None:
        """Raise a ``ValueError`` unless patch grid and class count match ``surrogate``.

        Args:
            surrogate: A timm ViT.
            name: Argument name for the message.
        """
        try:
            adapter = ViTAdapter.of(surrogate)
        except TypeError as err:
            raise TypeError(f"{name}: {err}") from None
        if tuple(adapter.grid_size) != tuple(self.config["grid_size"]):
            raise ValueError(
                f"{name}: the explainer was built for {self.num_patches} patches "
                f"(grid {tuple(self.config['grid_size'])}) but the surrogate has "
                f"{adapter.num_patches} (grid {adapter.grid_size})"
            )
        if adapter.num_classes != self.num_classes:
            raise ValueError(
                f"{name}: the explainer predicts {self.num_classes} classes but the "
                f"surrogate has {adapter.num_classes}"
            )

    # ------------------------------------------------------------------ forward
    def forward(self, images: Tensor) -> Tensor:
        """Unnormalised values ``tanh(MLP(LN(Block(tokens))))`` for the patch tokens.

        Args:
            images: (B, C, H, W) model inputs.

        Returns:
            (B, N, num_classes) values in (−1, 1), before efficient normalisation.
        """
        adapter = ViTAdapter(self.backbone)
        grid = adapter.check_images(images)
        trunk = adapter.run_blocks(
            adapter.embed(images), 0, self.shared_blocks, grid=grid
        )
        return self.forward_from_trunk(trunk, grid)

    def forward_from_trunk(
        self, hidden: Tensor, grid: Optional[Sequence[int]] = None
    ) -> Tensor:
        """:meth:`forward` from the hidden states entering block ``shared_blocks``.

        Args:
            hidden: (B, P + N, D) hidden states after the shared trunk (the
                backbone's, or the surrogate's when the two trunks are equal).
            grid: Patch grid (needed only for Eva models at a non-default size).

        Returns:
            (B, N, num_classes) values in (−1, 1), before efficient normalisation.
        """
        adapter = ViTAdapter(self.backbone)
        x = adapter.run_blocks(hidden, self.shared_blocks, grid=grid)
        tokens = adapter.final_norm(x)  # (B, P + N, D): all tokens
        h = self.norm(self.attn_block(tokens))
        out = self.mlp(h[:, adapter.num_prefix_tokens :])
        return torch.tanh(out)

    def shapley_values(
        self,
        images: Tensor,
        v1: Optional[Tensor] = None,
        v0: Optional[Tensor] = None,
    ) -> Tensor:
        """Efficient Shapley values (B, N, C): :meth:`forward` + normalisation.

        Args:
            images: (B, C, H, W) model inputs.
            v1: (B, C) full-coalition probabilities; computed with :attr:`surrogate`
                when omitted.
            v0: (C,) empty-coalition probabilities; likewise.

        Returns:
            (B, N, C) values with ``Σ_i φ_i = v1 − v0``.
        """
        if v1 is None or v0 is None:
            from .games import SurrogateGame

            if self.surrogate is None:
                raise ValueError(
                    "surrogate: this explainer has no surrogate attached; pass v1 and "
                    "v0 or set explainer.surrogate"
                )
            game = SurrogateGame(self.surrogate)
            v1 = game.full_value(images) if v1 is None else v1
            v0 = game.empty_value(images) if v0 is None else v0
        return efficient_normalization(self(images), v1.to(images.device), v0)


# ---------------------------------------------------------------- checkpoints
def _state(module: nn.Module, half: bool) -> Dict[str, Tensor]:
    sd = {}
    for k, v in module.state_dict().items():
        v = v.detach().cpu()
        sd[k] = v.half() if half and v.is_floating_point() else v.clone()
    return sd


def _load_state(module: nn.Module, state: Dict[str, Tensor], path: PathLike) -> None:
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or wrong:
        raise ValueError(
            f"checkpoint: {path} does not fit this architecture (missing "
            f"{missing[:4]}, unexpected {unexpected[:4]}, shape mismatches {wrong[:4]})"
        )
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def _read(path: PathLike, fmt: str) -> Dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: no file at {path}")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise ValueError(
            f"checkpoint: {path} is not a {fmt} checkpoint (format "
            f"{payload.get('format') if isinstance(payload, dict) else type(payload)})"
        )
    return payload


def save_explainer(
    explainer: ShapleyExplainer,
    path: PathLike,
    half: bool = False,
    metadata: Optional[Dict[str, Any]] = None,
    surrogate: Optional[nn.Module] = None,
) -> Path:
    """Save an explainer's weights and configuration (loadable with
    ``weights_only=True``).

    Args:
        explainer: The explainer.
        path: Output file (parent folders are created).
        half: Store floating-point weights as float16 (half the size; loading casts
            back to the module's dtype).
        metadata: Extra JSON-like information (training record, figures).
        surrogate: The surrogate it was trained on, exactly as it will be loaded:
            its :func:`classifier_digest` is stored as
            ``metadata["surrogate_digest"]`` so that :func:`load_explainer` refuses
            other surrogates.

    Returns:
        The path written.

    Examples::

        >>> save_explainer(explainer, "explainer.pt")
        >>> explainer2 = load_explainer("explainer.pt", surrogate)
    """
    if not isinstance(explainer, ShapleyExplainer):
        raise TypeError(
            f"explainer: expected a ShapleyExplainer, got {type(explainer)}"
        )
    metadata = dict(metadata or {})
    if surrogate is not None:
        metadata["surrogate_digest"] = classifier_digest(surrogate)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "format": _EXPLAINER_FORMAT,
            "version": 1,
            "config": dict(explainer.config),
            "state_dict": _state(explainer, half),
            "metadata": metadata,
        },
        path,
    )
    return path


def load_explainer(
    path: PathLike,
    surrogate: nn.Module,
    device: Union[str, torch.device] = "cpu",
    check_surrogate: bool = True,
) -> ShapleyExplainer:
    """Load an explainer saved by :func:`save_explainer` for ``surrogate``.

    The backbone's structure is taken from ``surrogate`` (the explainer is rebuilt
    with :meth:`ShapleyExplainer.from_surrogate`), then every weight is loaded.

    Args:
        path: Checkpoint file.
        surrogate: The surrogate the explainer was trained with (same architecture);
            attached as the explainer's default surrogate.
        device: Where to put the explainer.
        check_surrogate: Refuse a file whose metadata names another surrogate
            (``surrogate_digest``, see :func:`classifier_digest`).

    Returns:
        The explainer, in eval mode (its ``metadata`` attribute holds the file's).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an explainer checkpoint, one trained on another surrogate,
            or one for another architecture (patch grid, classes, width, depth or
            head shape); one line.
    """
    payload = _read(path, _EXPLAINER_FORMAT)
    cfg = payload["config"]
    adapter = ViTAdapter.of(surrogate)
    grid = tuple(cfg.get("grid_size", ()))
    if grid and grid != tuple(adapter.grid_size):
        raise ValueError(
            f"explainer: {path} was trained for a {grid[0]}x{grid[1]} patch grid, "
            f"the surrogate's is {adapter.grid_size[0]}x{adapter.grid_size[1]}"
        )
    expected = payload.get("metadata", {}).get("surrogate_digest")
    if check_surrogate and expected is not None:
        found = classifier_digest(adapter.model)
        if expected != found:
            raise ValueError(
                f"explainer: {path} was trained on another surrogate (weights digest "
                f"{expected}; this surrogate's is {found})"
            )
    mine = {
        "num_patches": adapter.num_patches,
        "num_classes": adapter.num_classes,
        "embed_dim": adapter.embed_dim,
        "num_layers": adapter.num_layers,
    }
    bad = {k: (cfg.get(k), v) for k, v in mine.items() if cfg.get(k) != v}
    if bad:
        raise ValueError(
            f"checkpoint: {path} was saved for another architecture "
            f"(checkpoint vs surrogate: {bad})"
        )
    explainer = ShapleyExplainer.from_surrogate(
        adapter.model,
        num_heads=int(cfg["num_heads"]),
        mlp_ratio=cfg["mlp_ratio"],
        shared_blocks=int(cfg.get("shared_blocks", 0)),
    )
    _load_state(explainer, payload["state_dict"], path)
    explainer.metadata = dict(payload.get("metadata", {}))
    return explainer.to(device).eval()


def save_surrogate(
    surrogate: nn.Module,
    path: PathLike,
    half: bool = False,
    metadata: Optional[Dict[str, Any]] = None,
    classifier: Optional[nn.Module] = None,
) -> Path:
    """Save a surrogate's weights (loadable with ``weights_only=True``).

    Args:
        surrogate: The fine-tuned surrogate (a supported ViT).
        path: Output file.
        half: Store floating-point weights as float16.
        metadata: Extra JSON-like information (e.g. the classifier's config).
        classifier: The classifier it was fine-tuned from: its
            :func:`classifier_digest` is stored as ``metadata["classifier_digest"]``
            so that :func:`load_surrogate` refuses other classifiers.

    Returns:
        The path written.

    Examples::

        >>> save_surrogate(surrogate, "surrogate.pt", classifier=model)
        >>> surrogate = load_surrogate("surrogate.pt", model)
    """
    adapter = ViTAdapter(surrogate)
    metadata = dict(metadata or {})
    if classifier is not None:
        metadata["classifier_digest"] = classifier_digest(classifier)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "format": _SURROGATE_FORMAT,
            "version": 1,
            "config": {
                "num_patches": adapter.num_patches,
                "num_classes": adapter.num_classes,
                "embed_dim": adapter.embed_dim,
                "num_layers": adapter.num_layers,
            },
            "state_dict": _state(adapter.model, half),
            "metadata": metadata,
        },
        path,
    )
    return path


def load_surrogate(
    path: PathLike,
    classifier: nn.Module,
    device: Union[str, torch.device] = "cpu",
    check_classifier: bool = True,
) -> nn.Module:
    """Load a surrogate saved by :func:`save_surrogate` into a copy of ``classifier``.

    Args:
        path: Checkpoint file.
        classifier: The classifier the surrogate was fine-tuned from (or a model of
            the same architecture with ``check_classifier=False``); it is copied,
            never modified.
        device: Where to put the surrogate.
        check_classifier: Refuse a file whose metadata names another classifier
            (``classifier_digest``, see :func:`classifier_digest`): its game would
            describe that classifier, not this one.

    Returns:
        The surrogate, in eval mode (its ``metadata`` attribute holds the file's).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a surrogate checkpoint, one made for another classifier, or
            one for another architecture; one line.

    Examples::

        >>> surrogate = load_surrogate("run/surrogate.pt", model)
    """
    payload = _read(path, _SURROGATE_FORMAT)
    adapter = ViTAdapter(classifier)
    metadata = dict(payload.get("metadata", {}))
    expected = metadata.get("classifier_digest")
    if check_classifier and expected is not None:
        found = classifier_digest(adapter.model)
        if expected != found:
            raise ValueError(
                f"surrogate: {path} was fine-tuned from another classifier (weights "
                f"digest {expected}; this classifier's is {found})"
            )
    model = copy.deepcopy(adapter.model)
    _load_state(model, payload["state_dict"], path)
    model.metadata = metadata
    return model.to(device).eval()
