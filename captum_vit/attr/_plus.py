"""PLUS and SkipPLUS (Mehri et al., CVPR-W 2024): layer-aggregated token attribution.

For a model with blocks ``0 .. L-1``, let ``f_l`` be the network from block ``l`` to the
output (blocks ``l .. L-1``, the final norm and the head) and ``x_l`` the hidden states
entering block ``l`` for the input ``x_0``. For an input-attribution method ``A``::

    PLUS(f, A)(x_0)     = sum_{l = 0}^{L-1} A(f_l)(x_l)
    SkipPLUS(f, A)(x_0) = sum_{l = ceil(L/2)}^{L-1} A(f_l)(x_l)

Each ``A(f_l)(x_l)`` is a (B, T, D) attribution of the hidden states; it is reduced over
the hidden dimension D (a sum, as in the paper), the prefix tokens (CLS, distillation,
registers) are dropped and the per-patch scores are summed over the chosen layers,
without any per-layer normalisation.

Special cases (paper, Sec. 3.4): ``InputXGradient`` with PLUS is CAT
(``sum_l sum_d h_l * dy/dh_l``); ``GenAtt`` with PLUS is close to GradSAM.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from captum.attr import (
    Attribution,
    GradientAttribution,
    InputXGradient,
    LayerAttribution,
    NeuronAttribution,
    NoiseTunnel,
    Saliency,
)
from captum.log import log_usage
from torch import Tensor

from ..vit import CLASS_HEAD, TOKENS, ViTAdapter, record_attention, tokens_to_pixels
from ..vit.adapter import SUPPORTED_FAMILIES, resolve_layer_indices
from ._genatt import GenAtt
from ._rollout import AttentionRollout, discard_lowest, fuse_heads
from ._utils import (
    TargetType,
    check_choice,
    check_image_batch,
    check_number,
    evaluates_model,
    format_target,
    head_readout,
    pack_output,
    require_autograd,
    unpack_inputs,
)

TOKEN_REDUCTIONS = ["sum", "mean", "abs_sum", "l2"]
_INTERPOLATE_MODES = ["nearest", "bilinear", "bicubic"]

#: A token reduction: a name from :data:`TOKEN_REDUCTIONS` or a function mapping a
#: (B, T, D) attribution of the hidden states to (B, T) token scores.
TokenReduction = Union[str, Callable[[Tensor], Tensor]]
#: A per-layer baseline: ``fn(layer, hidden)`` with ``hidden`` the (B, T, D) states
#: entering ``layer``; returns what the wrapped method accepts as ``baselines``.
LayerBaseline = Callable[[int, Tensor], Union[Tensor, int, float]]
AttributorLike = Union[Attribution, type]


def skipplus_layers(num_layers: int) -> List[int]:
    """The blocks SkipPLUS sums over: ``ceil(L/2) .. L-1``.

    ``m = ceil(L/2) = (L + 1) // 2`` blocks are skipped, so 12 blocks give 6..11 (six
    layers) and 7 blocks give 4..6 (three layers): for an odd depth the skipped part is
    the larger one, as in the paper (``m = ceil(L/2)``, sum from ``l = m``).

    Args:
        num_layers: Number of transformer blocks L (at least 2).

    Returns:
        The block indices, ascending.

    Raises:
        ValueError: if ``num_layers < 2`` (nothing would be left to sum).

    Examples::

        >>> skipplus_layers(12)
        [6, 7, 8, 9, 10, 11]
        >>> skipplus_layers(7)
        [4, 5, 6]
    """
    if int(num_layers) < 2:
        raise ValueError(
            f"num_layers: SkipPLUS needs at least 2 blocks, got {num_layers}"
        )
    m = (int(num_layers) + 1) // 2
    return list(range(m, int(num_layers)))


class ViTSubNetwork(nn.Module):
    r"""``f_l``: blocks ``start .. L-1`` of a ViT, its final norm and its head.

    ``forward(hidden)`` takes the (B, P + N, D) hidden states entering block ``start``
    and returns the model's (B, num_classes) logits, computed by the adapter
    (``adapter.head(adapter.run_blocks(hidden, start))``), so that
    ``ViTSubNetwork(model, 0)(adapter.embed(x))`` equals ``model(x)``. The blocks it
    runs are registered as submodules (shared with the model, never copied); the final
    norm and the head are reached through the adapter and are not registered.

    Args:
        model: A supported timm ViT or its :class:`~captum_vit.vit.ViTAdapter`.
        start: First block ``l`` (0 <= start < L; negative counts from the end).
        grid: Patch grid (gh, gw) of the hidden states; needed by Eva (rotary
            embeddings) when the images are not of the model's default size.

    Examples::

        >>> f_6 = ViTSubNetwork(model, 6)
        >>> logits = f_6(hidden_states_entering_block_6)
    """

    def __init__(
        self,
        model: Union[nn.Module, ViTAdapter],
        start: int,
        grid: Optional[Sequence[int]] = None,
    ) -> None:
        super().__init__()
        adapter = ViTAdapter.of(model)
        (start,) = resolve_layer_indices(adapter, [start], "start")
        self.adapter = adapter  # a plain attribute: the model is not registered
        self.start = start
        self.grid = None if grid is None else tuple(int(g) for g in grid)
        self.blocks = nn.ModuleList(adapter.blocks[start:])

    def forward(self, hidden: Tensor) -> Tensor:
        """(B, P + N, D) hidden states entering block ``start`` -> (B, C) logits."""
        tokens = self.adapter.run_blocks(hidden, start=self.start, grid=self.grid)
        return self.adapter.head(tokens)


# ----------------------------------------------------------------------- helpers
def _walk(attributor: Attribution) -> List[Attribution]:
    """The attributor and every attribution nested in its attributes (NoiseTunnel,
    GuidedGradCam, ...)."""
    out, todo, seen = [], [attributor], set()
    while todo:
        a = todo.pop()
        if id(a) in seen:
            continue
        seen.add(id(a))
        out.append(a)
        todo.extend(v for v in vars(a).values() if isinstance(v, Attribution))
    return out


def _model_of(attributor: Attribution) -> nn.Module:
    """The ViT an attributor is built on (its forward function)."""
    ff = getattr(attributor, "forward_func", None)
    net = ff
    if inspect.ismethod(ff) and ff.__name__ == "forward":
        net = ff.__self__
    if not isinstance(net, nn.Module):
        raise TypeError(
            "attributor: its forward function must be a supported timm Vision "
            f"Transformer ({SUPPORTED_FAMILIES}) or its .forward, so that PLUS can "
            f"split it into blocks; got {type(ff).__name__}. Build the attributor on "
            "the model itself, e.g. IntegratedGradients(model)."
        )
    try:
        ViTAdapter(net)
    except TypeError as err:
        raise TypeError(
            f"attributor: {type(attributor).__name__} is built on "
            f"{type(net).__name__}, which PLUS cannot split into blocks: {err}"
        ) from None
    return net


def _module_name(model: nn.Module, module: Any) -> str:
    for name, mod in model.named_modules():
        if mod is module:
            return name or "<the model itself>"
    return f"<a {type(module).__name__} outside the model>"


def _check_input_method(
    attributor: Attribution, model: nn.Module, adapter: ViTAdapter, layers: List[int]
) -> None:
    """Reject layer/neuron methods: they do not attribute the input x_l of f_l."""
    for a in _walk(attributor):
        if not isinstance(a, (LayerAttribution, NeuronAttribution)):
            continue
        bound = getattr(a, "layer", None)
        mods = bound if isinstance(bound, (list, tuple)) else [bound]
        where = []
        for mod in mods:
            name = _module_name(model, mod)
            block = next(
                (
                    i
                    for i, blk in enumerate(adapter.blocks)
                    if any(m is mod for m in blk.modules())
                ),
                None,
            )
            if block is None or block < min(layers):
                where.append(
                    f"'{name}' lies outside blocks "
                    f"{min(layers)}..{adapter.num_layers - 1}"
                    " run by the sub-networks f_l (it is not part of f_l)"
                )
            else:
                where.append(
                    f"'{name}' lies in block {block}: its activation is the same in "
                    f"every f_l with l <= {block}, so summing over l would repeat one "
                    "attribution of that module instead of attributing each x_l"
                )
        raise TypeError(
            f"attributor: {type(a).__name__} is a layer/neuron method; PLUS needs an "
            "input-attribution method applied to the input x_l of each sub-network "
            f"f_l, and the module it is bound to {'; '.join(where)}. Wrap the input "
            "method instead (e.g. IntegratedGradients rather than "
            "LayerIntegratedGradients)."
        )


def _rebind(attributor: Attribution, model: nn.Module, sub: nn.Module) -> Attribution:
    """A shallow copy of ``attributor`` whose every reference to ``model`` (its
    ``forward_func``, a ``model`` attribute, ``model.forward``) points at ``sub``;
    nested attributions (NoiseTunnel's wrapped method) are rebound recursively. The
    original attributor is not modified."""
    new = copy.copy(attributor)
    for name, value in vars(attributor).items():
        if value is model:
            setattr(new, name, sub)
        elif inspect.ismethod(value) and value.__self__ is model:
            if value.__name__ != "forward":
                raise TypeError(
                    f"attributor: {type(attributor).__name__}.{name} is the model's "
                    f"{value.__name__} method, which has no sub-network counterpart"
                )
            setattr(new, name, sub)
        elif isinstance(value, Attribution):
            setattr(new, name, _rebind(value, model, sub))
    return new


def _innermost(attributor: Attribution) -> Attribution:
    while isinstance(attributor, NoiseTunnel):
        attributor = attributor.attribution_method
    return attributor


def _accepts(attributor: Attribution, keyword: str) -> bool:
    """Whether the (innermost) method's ``attribute`` names ``keyword``."""
    fn = type(_innermost(attributor)).attribute
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return False
    return keyword in params


def token_feature_mask(
    num_prefix: int,
    hidden_dim: int,
    patch_groups: Optional[Tensor] = None,
    num_patches: Optional[int] = None,
) -> Tensor:
    """A contiguous token-level feature mask over hidden states (B | 1, T, D).

    Every token is one feature: its D hidden features share one id. By default the id
    is the token's position (prefix tokens first). With ``patch_groups``, each prefix
    token keeps an id of its own and patch tokens with equal group ids share one; ids
    are relabelled to ``0 .. K-1`` in order (Captum's ``ShapleyValueSampling`` counts
    features as ``max id + 1``). The mask is materialised
    (not ``expand``-ed): ``ShapleyValueSampling`` fails on expanded masks.

    Args:
        num_prefix: Number of prefix tokens P.
        hidden_dim: Hidden width D.
        patch_groups: Optional (b, N) integer group ids of the patch tokens (b = 1 or
            the batch size); tokens with the same id are perturbed together.
        num_patches: N, required when ``patch_groups`` is None.

    Returns:
        A (b, P + N, D) long tensor.

    Examples::

        >>> token_feature_mask(1, 4, num_patches=2)[0, :, 0]
        tensor([0, 1, 2])
        >>> token_feature_mask(1, 4, patch_groups=torch.tensor([[7, 3, 7]]))[0, :, 0]
        tensor([0, 2, 1, 2])
    """
    if patch_groups is None:
        if num_patches is None:
            raise ValueError("num_patches: required when patch_groups is None")
        patch_groups = torch.arange(num_patches).unsqueeze(0)
    groups = patch_groups.long()
    b = groups.shape[0]
    groups = groups - groups.min() if groups.numel() else groups
    prefix = torch.arange(num_prefix, device=groups.device)
    # prefix tokens come first in the sequence, each a feature of its own
    ids = torch.cat([prefix.unsqueeze(0).expand(b, num_prefix), groups + num_prefix], 1)
    _, ids = torch.unique(ids, return_inverse=True)
    return ids.unsqueeze(-1).expand(b, ids.shape[1], hidden_dim).contiguous()


# ----------------------------------------------------------------------- wrappers
class PLUSWrapper(Attribution):
    r"""PLUS: the sum over blocks of an attribution method applied at every block.

    ``PLUS(f, A)(x_0) = sum_l A(f_l)(x_l)`` (Mehri et al., CVPR-W 2024), where ``f_l``
    runs blocks ``l .. L-1``, the final norm and the head (a :class:`ViTSubNetwork`) and
    ``x_l`` are the hidden states entering block ``l``, all taken from one no-grad
    forward pass of the images. The wrapped method's class is applied to each ``f_l``
    (a shallow copy of the attributor whose forward function is ``f_l``, so constructor
    options such as ``multiply_by_inputs`` are kept), its (B, T, D) result is reduced
    over D by ``token_reduction``, prefix tokens are dropped and the patch scores are
    summed over ``layers`` without normalisation. The result is spread over each
    patch's pixels (:func:`captum_vit.patch_scores` recovers the (B, gh, gw) grid
    exactly).

    What can be wrapped:

    - Captum input-attribution methods built on the ViT, tested against per-layer
      Captum calls: ``Saliency``, ``InputXGradient`` (PLUS = CAT),
      ``IntegratedGradients``, ``GradientShap``, ``NoiseTunnel(...)`` of these (noise
      is added to the hidden states, so ``stdevs`` is in hidden-state units),
      ``FeatureAblation``, ``ShapleyValueSampling`` and ``ShapleyValues`` (with
      token-level feature masks, below). Any other Captum method that takes a forward
      function is applied the same way (``Occlusion`` with ``sliding_window_shapes``
      in hidden-state coordinates, e.g. ``(1, D)`` for one token;
      ``FeaturePermutation``; ``DeepLift``; ``Lime``/``KernelShap``, which need
      scikit-learn). Gradient methods differentiate the target **logit**;
      perturbation methods score whatever the model outputs (logits for timm models).
    - :class:`~captum_vit.GenAtt`: ``GenAtt(f_l)`` is Chefer's relevance
      ``prod_{k=l}^{L-1} (I + Ā_k)`` over the attention of the sub-network's blocks
      only, read out as GenAtt does (target **logit**); the sum over ``l`` is a
      GradSAM-like composition (its first-order part ``sum_l Ā_l`` is GradSAM's sum of
      gradient-weighted attention). All ``f_l`` share one forward/backward pass from
      ``x_{min(layers)}``: the attention of block ``k >= l`` and its gradient are the
      same in ``f_l`` as in any longer sub-network, so this equals running GenAtt on
      every ``f_l`` separately.
    - :class:`~captum_vit.AttentionRollout` (``start_layer`` must be 0: PLUS varies it):
      ``sum_l`` of the rollout of blocks ``l .. L-1``, from one no-grad pass.

    Layer and neuron methods (``LayerIntegratedGradients``, ``LayerGradCam``, ...) and
    other captum-vit methods raise a ``TypeError``: they do not attribute ``x_l``.

    ``NoiseTunnel(PLUSWrapper(...))`` works: the wrapper is a Captum ``Attribution``
    whose ``attribute`` is decorated with ``log_usage`` (NoiseTunnel calls
    ``attribute.__wrapped__``) and which accepts the noisy, sample-expanded image batch;
    ``target`` and image-space ``baselines``/``feature_mask`` are expanded by
    NoiseTunnel as usual. Per-layer ``baselines`` callables cannot be expanded by
    NoiseTunnel; pass ``target`` explicitly, as ``None`` would explain each noisy
    sample's own predicted class.

    The model runs in eval mode for the call (its modes are restored afterwards).
    Gradient methods (and GenAtt) need autograd and cannot run inside
    ``torch.inference_mode()``; ``torch.no_grad()`` around the call is fine.

    Cost: sum over chosen ``l`` of ``L - l`` blocks per evaluation of the wrapped
    method (PLUS on 12 blocks: 78 block passes, SkipPLUS: 21, the plain method: 12),
    plus one no-grad forward for the hidden states. Plain ``Saliency`` and
    ``InputXGradient`` (exact classes) and GenAtt/rollout need one pass only: the
    gradient of ``f_l`` at ``x_l`` is the full pass's gradient at block ``l``'s input,
    so all layers come from one forward/backward (same numbers as per-layer calls).

    Args:
        attributor: A Captum attribution instance whose forward function is a
            supported timm ViT (or its ``forward``), e.g.
            ``IntegratedGradients(model)``;
            or an attribution class, with ``model`` (and ``init_kwargs``).
        layers: Block indices to sum over (negative allowed, no duplicates); default
            all blocks (PLUS).
        token_reduction: How a token's D hidden attributions become one score:
            ``"sum"`` (default, the paper's), ``"mean"``, ``"abs_sum"``, ``"l2"``
            (norm),
            or a function (B, T, D) -> (B, T). With token-level feature masks a
            perturbation method gives every hidden feature of a token the token's value,
            so ``"sum"`` is D times that value (same ranking, same factor at every
            layer) and ``"mean"`` is exactly the token's value (e.g. its Shapley value).
        model: The ViT, only when ``attributor`` is a class.
        init_kwargs: Constructor keywords for an attributor class.

    Raises:
        TypeError: not an attribution (instance or class), not built on a supported
            ViT, a layer/neuron method, an unsupported captum-vit method.
        ValueError: a block index out of range or repeated, an unknown
            ``token_reduction``.

    Examples::

        >>> from captum.attr import IntegratedGradients
        >>> plus = PLUSWrapper(IntegratedGradients(model))
        >>> attr = plus.attribute(images, target=labels, n_steps=20)
        >>> grid = captum_vit.patch_scores(attr, model)        # (B, gh, gw)
        >>> cat = PLUSWrapper(InputXGradient(model)).attribute(images, target=labels)
    """

    def __init__(
        self,
        attributor: AttributorLike,
        layers: Optional[Sequence[int]] = None,
        token_reduction: TokenReduction = "sum",
        *,
        model: Optional[nn.Module] = None,
        init_kwargs: Optional[Dict[str, Any]] = None,
    ) -> None:
        if inspect.isclass(attributor):
            if not issubclass(attributor, Attribution):
                raise TypeError(
                    "attributor: expected a Captum Attribution instance or class, got "
                    f"class {attributor.__name__}"
                )
            if model is None:
                raise TypeError(
                    "model: required when attributor is a class "
                    f"({attributor.__name__})"
                )
            attributor = attributor(model, **(init_kwargs or {}))
        elif model is not None or init_kwargs:
            raise TypeError(
                "model/init_kwargs: only used when attributor is a class; an "
                "attributor instance already holds its model"
            )
        if not isinstance(attributor, Attribution):
            raise TypeError(
                "attributor: expected a Captum Attribution built on a ViT, e.g. "
                f"IntegratedGradients(model), got {type(attributor).__name__}"
            )
        self._kind = self._kind_of(attributor)
        net = _model_of(attributor)
        super().__init__(net)
        self.adapter = ViTAdapter(net)
        self.adapter.require(TOKENS, type(self).__name__)
        self.adapter.require(CLASS_HEAD, type(self).__name__)
        self.attributor = attributor
        self.layers = self._resolve_layers(layers)
        if callable(token_reduction):
            self.token_reduction: TokenReduction = token_reduction
        else:
            self.token_reduction = check_choice(
                "token_reduction", token_reduction, TOKEN_REDUCTIONS
            )
        _check_input_method(attributor, net, self.adapter, self.layers)

    # ------------------------------------------------------------ construction
    @staticmethod
    def _kind_of(attributor: Attribution) -> str:
        if isinstance(attributor, GenAtt):
            return "genatt"
        if isinstance(attributor, AttentionRollout):
            if attributor.start_layer != 0:
                raise ValueError(
                    "attributor: AttentionRollout(start_layer="
                    f"{attributor.start_layer}) conflicts with PLUS, which varies the "
                    "start layer itself; use start_layer=0 and choose `layers`"
                )
            return "rollout"
        for a in _walk(attributor):
            if isinstance(a, PLUSWrapper) or type(a).__module__.startswith(
                "captum_vit."
            ):
                raise TypeError(
                    f"attributor: {type(a).__name__} cannot be applied to a "
                    "sub-network of hidden states; PLUS wraps Captum input-attribution "
                    "methods, GenAtt and AttentionRollout"
                )
        return "captum"

    def _default_layers(self) -> List[int]:
        return list(range(self.adapter.num_layers))

    def _resolve_layers(self, layers: Optional[Sequence[int]]) -> List[int]:
        if layers is None:
            return self._default_layers()
        if isinstance(layers, int) or not isinstance(layers, (Sequence, range)):
            raise TypeError(
                f"layers: expected a sequence of block indices, got {layers!r}"
            )
        out = resolve_layer_indices(self.adapter, list(layers), "layers")
        if len(set(out)) != len(out):
            raise ValueError(f"layers: repeated block index in {list(layers)}")
        return sorted(out)

    @property
    def _needs_grad(self) -> bool:
        """Whether the wrapped method differentiates the model (GenAtt, Captum
        gradient methods)."""
        return self._kind == "genatt" or (
            self._kind == "captum"
            and isinstance(_innermost(self.attributor), GradientAttribution)
        )

    @property
    def multiplies_by_inputs(self) -> bool:
        """Whether the wrapped method multiplies by (hidden-state) inputs."""
        return bool(getattr(self.attributor, "multiplies_by_inputs", False))

    # ---------------------------------------------------------------- forward
    def _hidden_states(
        self, images: Tensor, grid: Tuple[int, int], stop: int
    ) -> List[Tensor]:
        """``[x_0, .., x_stop]`` from one no-grad pass (``x_L`` = last block output)."""
        with torch.no_grad():
            h = self.adapter.embed(images)
            states = [h]
            for layer in range(stop):
                h = self.adapter.run_blocks(h, start=layer, stop=layer + 1, grid=grid)
                states.append(h)
        return states

    def _reduce(self, attr: Tensor) -> Tensor:
        red = self.token_reduction
        if red == "sum":
            return attr.sum(dim=-1)
        if red == "mean":
            return attr.mean(dim=-1)
        if red == "abs_sum":
            return attr.abs().sum(dim=-1)
        if red == "l2":
            return attr.norm(dim=-1)
        out = red(attr)  # type: ignore[operator]
        if not isinstance(out, Tensor) or tuple(out.shape) != tuple(attr.shape[:2]):
            raise ValueError(
                "token_reduction: the function must map (B, T, D) attributions to "
                f"(B, T) = {tuple(attr.shape[:2])} scores, got "
                + (str(tuple(out.shape)) if isinstance(out, Tensor) else str(type(out)))
            )
        return out

    def _layer_baselines(
        self, baselines: Any, images: Tensor, grid: Tuple[int, int]
    ) -> Callable[[int, Tensor], Any]:
        """Turn the user's ``baselines`` into a function of (layer, hidden)."""
        if isinstance(baselines, tuple):
            if len(baselines) != 1:
                raise ValueError(
                    "baselines: ViT methods take one image tensor, so expected a "
                    f"1-tuple, got {len(baselines)} items"
                )
            baselines = baselines[0]
        if isinstance(baselines, bool):
            raise TypeError("baselines: expected a number, images or a callable")
        if isinstance(baselines, (int, float)) or (
            isinstance(baselines, Tensor) and baselines.dim() == 0
        ):
            value = check_number("baselines", baselines)
            return lambda layer, hidden: value
        if isinstance(baselines, Tensor):
            if baselines.dim() != 4:
                raise ValueError(
                    "baselines: expected a number, (n, C, H, W) baseline images "
                    "(mapped to each layer's hidden states) or a callable "
                    f"(layer, hidden) -> baseline; got shape {tuple(baselines.shape)}"
                )
            check_image_batch("baselines", baselines)
            base_grid = self.adapter.check_images(baselines, name="baselines")
            if base_grid != tuple(grid):
                raise ValueError(
                    f"baselines: images give a {base_grid} patch grid, the inputs "
                    f"{tuple(grid)}"
                )
            states = self._hidden_states(
                baselines.to(images.device, images.dtype), grid, max(self.layers)
            )
            return lambda layer, hidden: states[layer]
        if callable(baselines):
            return baselines
        raise TypeError(
            "baselines: expected a number, (n, C, H, W) images or a callable "
            f"(layer, hidden) -> baseline, got {type(baselines).__name__}"
        )

    def _feature_mask(
        self, feature_mask: Optional[Tensor], batch: int, grid: Tuple[int, int]
    ) -> Tensor:
        """Token-level (b, T, D) feature mask from None or patch-level group ids."""
        n = grid[0] * grid[1]
        p, d = self.adapter.num_prefix_tokens, self.adapter.embed_dim
        if feature_mask is None:
            return token_feature_mask(p, d, num_patches=n)
        if isinstance(feature_mask, tuple) and len(feature_mask) == 1:
            feature_mask = feature_mask[0]
        if not isinstance(feature_mask, Tensor) or feature_mask.is_floating_point():
            raise TypeError(
                "feature_mask: expected an integer tensor of patch group ids, shape "
                "(b, N) or (b, gh, gw) with b = 1 or the batch size"
            )
        fm = feature_mask
        if fm.dim() == 3 and tuple(fm.shape[1:]) == tuple(grid):
            fm = fm.reshape(fm.shape[0], n)
        if fm.dim() != 2 or fm.shape[1] != n or fm.shape[0] not in (1, batch):
            raise ValueError(
                "feature_mask: expected patch group ids of shape (b, N) = "
                f"(b, {n}) or (b, gh, gw) = (b, {grid[0]}, {grid[1]}) with b = 1 or "
                f"{batch}; got {tuple(feature_mask.shape)} (prefix tokens get ids of "
                "their own)"
            )
        return token_feature_mask(p, d, patch_groups=fm)

    # --------------------------------------------------------------- attribute
    @log_usage()
    @evaluates_model
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor]],
        target: TargetType = None,
        interpolate_mode: str = "nearest",
        **kwargs: Any,
    ) -> Union[Tensor, Tuple[Tensor]]:
        r"""Sum over the chosen blocks of the wrapped method at each block's input.

        Args:
            inputs: (B, C, H, W) images (or a 1-tuple of them).
            target: Class index: an int, a per-sample list or 1-D tensor; None
                explains each sample's predicted class (from the same forward pass).
            interpolate_mode: ``"nearest"`` keeps maps patch-constant (exact for
                :func:`captum_vit.patch_scores`); ``"bilinear"``/``"bicubic"`` for
                display.
            **kwargs: Passed to the wrapped method's ``attribute`` at every layer
                (``n_steps``, ``method``, ``internal_batch_size``, ``stdevs``,
                ``nt_samples``, ``n_samples``, ``perturbations_per_eval``,
                ``show_progress``, ...), with two translated:

                - ``baselines``: a number is a constant hidden state (Captum's scalar
                  meaning); ``(n, C, H, W)`` images (n = 1, B, or any n for
                  GradientShap's distribution) are replaced at layer l by *their*
                  hidden states entering block l, so ``torch.zeros_like(images)`` means
                  "the black image as seen by f_l"; a callable ``fn(layer, hidden)``
                  returns the baseline for that layer's (B, T, D) hidden states.
                  Omitted or None: the method's own default in hidden space (zero
                  hidden states for IG, zero replacement for ablation).
                - ``feature_mask`` (methods that take one): patch group ids (b, N) or
                  (b, gh, gw); each prefix token is a feature of its own. Omitted: one
                  feature per token (its D hidden features together), built contiguous.

                ``additional_forward_args`` and ``return_convergence_delta=True`` are
                rejected (no meaning for the sub-networks). GenAtt and
                AttentionRollout take no extra keywords.

        Returns:
            Attributions of the inputs' shape (and tuple-ness), patch-constant with the
            default ``interpolate_mode``.

        Examples::

            >>> plus = SkipPLUSWrapper(IntegratedGradients(model))
            >>> attr = plus.attribute(images, target=labels, n_steps=20,
            ...                       baselines=torch.zeros_like(images))
        """
        images, was_tuple = unpack_inputs(inputs)
        grid = self.adapter.check_images(images)
        check_choice("interpolate_mode", interpolate_mode, _INTERPOLATE_MODES)
        if self._needs_grad:
            inner = type(self.attributor).__name__
            require_autograd(f"{type(self).__name__}({inner})")
        t = None
        if target is not None:
            t = format_target(target, images.shape[0], self.adapter.num_classes)
            t = t.to(images.device)
        if self._kind == "captum" and self._one_pass_gradient(kwargs):
            scores = self._gradient_scores(images, grid, t, kwargs)
        elif self._kind == "captum":
            scores = self._captum_scores(images, grid, t, kwargs)
        else:
            if kwargs:
                raise ValueError(
                    f"{', '.join(sorted(kwargs))}: not accepted when wrapping "
                    f"{type(self.attributor).__name__} (no extra keywords)"
                )
            scores = self._attention_scores(images, grid, t)
        return pack_output(
            tokens_to_pixels(scores, grid, images, interpolate_mode), was_tuple
        )

    def _captum_scores(
        self,
        images: Tensor,
        grid: Tuple[int, int],
        t: Optional[Tensor],
        kwargs: Dict[str, Any],
    ) -> Tensor:
        kwargs = dict(kwargs)
        if kwargs.get("additional_forward_args") is not None:
            raise ValueError(
                "additional_forward_args: not supported; the sub-networks f_l take the "
                "hidden states only"
            )
        kwargs.pop("additional_forward_args", None)
        if kwargs.get("return_convergence_delta"):
            raise ValueError(
                "return_convergence_delta: not supported by PLUS (one delta per layer "
                "would not describe the summed map); call the wrapped method on a "
                "ViTSubNetwork to inspect a single layer"
            )
        kwargs.pop("return_convergence_delta", None)
        base_fn = None
        if kwargs.get("baselines") is not None:
            base_fn = self._layer_baselines(kwargs["baselines"], images, grid)
        kwargs.pop("baselines", None)
        mask = None
        if "feature_mask" in kwargs or _accepts(self.attributor, "feature_mask"):
            mask = self._feature_mask(
                kwargs.pop("feature_mask", None), images.shape[0], grid
            ).to(images.device)

        stop = self.adapter.num_layers if t is None else max(self.layers)
        states = self._hidden_states(images, grid, stop)
        if t is None:
            with torch.no_grad():
                t = self.adapter.head(states[-1]).argmax(dim=1)
        p = self.adapter.num_prefix_tokens
        scores = images.new_zeros(images.shape[0], grid[0] * grid[1])
        needs_grad = isinstance(_innermost(self.attributor), GradientAttribution)
        for layer in self.layers:
            hidden = states[layer]
            if needs_grad:  # our own detached tensor; spares Captum's warning
                hidden = hidden.detach().requires_grad_(True)
            sub = ViTSubNetwork(self.adapter, layer, grid)
            method = _rebind(self.attributor, self.forward_func, sub)
            kw = dict(kwargs)
            if base_fn is not None:
                kw["baselines"] = base_fn(layer, hidden)
            if mask is not None:
                kw["feature_mask"] = mask
            attr = method.attribute(hidden, target=t, **kw)
            if isinstance(attr, tuple):
                attr = attr[0]
            scores = scores + self._reduce(attr.detach())[:, p:].to(scores.dtype)
        return scores

    def _one_pass_gradient(self, kwargs: Dict[str, Any]) -> bool:
        """Plain Saliency / InputXGradient: every f_l's gradient at x_l is the
        gradient of the full forward pass at block l's input, so one backward serves
        all layers (exactly what the per-layer Captum calls compute)."""
        kind = type(self.attributor)
        if kind is Saliency:
            return set(kwargs) <= {"abs", "additional_forward_args"}
        return kind is InputXGradient and set(kwargs) <= {"additional_forward_args"}

    def _gradient_scores(
        self,
        images: Tensor,
        grid: Tuple[int, int],
        t: Optional[Tensor],
        kwargs: Dict[str, Any],
    ) -> Tensor:
        if kwargs.get("additional_forward_args") is not None:
            raise ValueError(
                "additional_forward_args: not supported; the sub-networks f_l take the "
                "hidden states only"
            )
        first, n_layers = self.layers[0], self.adapter.num_layers
        hidden = self._hidden_states(images, grid, first)[first]
        with torch.enable_grad():
            h = hidden.detach().requires_grad_(True)
            block_inputs = {first: h}
            for k in range(first, n_layers):
                h = self.adapter.run_blocks(h, start=k, stop=k + 1, grid=grid)
                block_inputs[k + 1] = h
            logits = self.adapter.head(h)
            if t is None:
                t = logits.argmax(dim=1)
            objective = logits.gather(1, t[:, None]).sum()
            wanted = [block_inputs[k] for k in self.layers]
            grads = torch.autograd.grad(objective, wanted)
        p = self.adapter.num_prefix_tokens
        scores = images.new_zeros(images.shape[0], grid[0] * grid[1])
        for x_l, g in zip(wanted, grads):
            if type(self.attributor) is InputXGradient:
                attr = x_l.detach() * g
            else:
                attr = g.abs() if kwargs.get("abs", True) else g
            scores = scores + self._reduce(attr)[:, p:].to(scores.dtype)
        return scores

    def _attention_scores(
        self, images: Tensor, grid: Tuple[int, int], t: Optional[Tensor]
    ) -> Tensor:
        """GenAtt / rollout of every f_l from one pass of ``f_{min(layers)}``."""
        first, n_layers = self.layers[0], self.adapter.num_layers
        hidden = self._hidden_states(images, grid, first)[first]
        sub = ViTSubNetwork(self.adapter, first, grid)
        blocks = list(range(first, n_layers))
        p = self.adapter.num_prefix_tokens
        if self._kind == "genatt":
            h = hidden.detach().requires_grad_(True)
            with torch.enable_grad(), record_attention(
                self.adapter, layers=blocks
            ) as rec:
                logits = sub(h)
                if t is None:
                    t = logits.argmax(dim=1)
                objective = logits.gather(1, t[:, None]).sum()
                atts = [rec.attentions[k] for k in blocks]
                pool = rec.pool_attention
                grads = list(
                    torch.autograd.grad(
                        objective, atts + ([pool] if pool is not None else [])
                    )
                )
            pool_grad = grads.pop() if pool is not None else None

            def pool_rows(pool: Tensor) -> Tensor:
                return (pool_grad * pool.detach()).clamp(min=0).mean(dim=1)

            # Ā_k = mean_heads(clamp(∇A ⊙ A, min=0)); GenAtt step R <- R + Ā R
            mats = [
                (g * a.detach()).clamp(min=0).mean(dim=1) for a, g in zip(atts, grads)
            ]
            plus_identity = True
        else:
            rollout: AttentionRollout = self.attributor  # type: ignore[assignment]
            with torch.no_grad(), record_attention(self.adapter, layers=blocks) as rec:
                sub(hidden)
                mats = []
                for k in blocks:
                    a = fuse_heads(rec.attentions[k], rollout.head_fusion)
                    a = discard_lowest(a, rollout.discard_ratio, p)
                    a = a + torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
                    mats.append(a / a.sum(dim=-1, keepdim=True))
            pool_rows = rollout.pool_rows
            plus_identity = False
        # u_l = w^T M_{L-1} ... M_l for every l, accumulated from the last block down;
        # w reads through the attention pool (SigLIP) per sample where there is one.
        u = head_readout(self.adapter, rec, hidden, pool_rows).to(hidden)
        scores = hidden.new_zeros(hidden.shape[0], grid[0] * grid[1])
        chosen = set(self.layers)
        for k in reversed(blocks):
            step = torch.einsum("bs,bst->bt", u, mats[k - first])
            u = u + step if plus_identity else step
            if k in chosen:
                scores = scores + u[:, p:]
        return scores.detach().to(images.dtype)


class SkipPLUSWrapper(PLUSWrapper):
    r"""SkipPLUS: :class:`PLUSWrapper` over the second half of the blocks.

    Sums the wrapped method over blocks ``ceil(L/2) .. L-1`` (:func:`skipplus_layers`):
    12 blocks give 6..11, 7 blocks give 4..6. Everything else (supported methods,
    keywords, ``baselines``/``feature_mask`` meaning, ``NoiseTunnel`` around it) is as
    in :class:`PLUSWrapper`.

    Args:
        attributor: A Captum attribution instance built on a supported ViT, or a class
            with ``model``.
        token_reduction: See :class:`PLUSWrapper` (default ``"sum"``).
        model: The ViT, only when ``attributor`` is a class.
        init_kwargs: Constructor keywords for an attributor class.

    Examples::

        >>> from captum.attr import IntegratedGradients
        >>> skip = SkipPLUSWrapper(IntegratedGradients(model))
        >>> attr = skip.attribute(images, target=labels, n_steps=20)
        >>> skip.layers                     # ViT-B: [6, 7, 8, 9, 10, 11]
    """

    def __init__(
        self,
        attributor: AttributorLike,
        token_reduction: TokenReduction = "sum",
        *,
        model: Optional[nn.Module] = None,
        init_kwargs: Optional[Dict[str, Any]] = None,
    ) -> None:
        super().__init__(
            attributor,
            layers=None,
            token_reduction=token_reduction,
            model=model,
            init_kwargs=init_kwargs,
        )

    def _default_layers(self) -> List[int]:
        return skipplus_layers(self.adapter.num_layers)
