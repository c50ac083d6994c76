"""ViT Shapley (Covert, Kim, Lee & Lee, ICLR 2023): amortised Shapley values."""

from __future__ import annotations

from typing import List, Optional, Tuple, Union

import torch
import torch.nn as nn
from captum.attr import Attribution
from captum.log import log_usage
from torch import Tensor

from ..shapley._utils import eval_mode
from ..shapley.explainer import (
    ShapleyExplainer,
    efficient_normalization,
    shared_state_names,
)
from ..shapley.games import SurrogateGame
from ..vit import tokens_to_pixels
from ._utils import (
    TargetType,
    evaluates_model,
    format_target,
    pack_output,
    unpack_inputs,
)


class ViTShapley(Attribution):
    r"""Shapley values of image patches from a trained ViT Shapley explainer.

    A :class:`~captum_vit.shapley.ShapleyExplainer` trained with
    :func:`~captum_vit.shapley.train_explainer` predicts, in one forward pass, the
    Shapley values of the game ``v(s) = softmax(g(x_s))`` where ``g`` is the surrogate
    (the classifier fine-tuned to accept held-out patches, attention masking). The
    values are in **probability** units and efficient:
    ``Σ_i φ_i(x, y) = v_y(1) − v_y(0)`` for every class, where ``v(1)`` is the
    surrogate's probability on the full image (computed here, one forward) and
    ``v(0)`` its probability with every patch held out (image-independent, cached).

    Both models run in eval mode for the call (their modes are restored afterwards).

    Cost per batch: one explainer forward and one surrogate forward. An explainer
    built with ``shared_blocks=k`` whose frozen trunk equals the surrogate's (checked,
    and re-checked whenever either model's weights change) runs the embedding and the
    first ``k`` blocks once for both; otherwise each model runs its own.

    Args:
        explainer: A trained :class:`~captum_vit.shapley.ShapleyExplainer`.
        surrogate: The surrogate it was trained with; defaults to
            ``explainer.surrogate`` (attached by ``from_surrogate``, ``train_explainer``
            and ``load_explainer``).

    Raises:
        TypeError: ``explainer`` is not a ``ShapleyExplainer``.
        ValueError: no surrogate, or its patch grid / class count differs from the
            explainer's.

    Examples::

        >>> from captum_vit.zoo import load_default_explainer
        >>> explainer, surrogate = load_default_explainer()
        >>> vs = ViTShapley(explainer, surrogate)
        >>> attr = vs.attribute(images, target=labels)     # (B, 3, H, W)
        >>> grid = captum_vit.patch_scores(attr, surrogate)  # (B, gh, gw)
        >>> maps = vs.attribute_all_classes(images)          # (B, C, gh, gw)
    """

    def __init__(
        self, explainer: ShapleyExplainer, surrogate: Optional[nn.Module] = None
    ) -> None:
        if not isinstance(explainer, ShapleyExplainer):
            raise TypeError(
                f"explainer: expected a captum_vit.shapley.ShapleyExplainer, got "
                f"{type(explainer).__name__}"
            )
        surrogate = explainer.surrogate if surrogate is None else surrogate
        if surrogate is None:
            raise ValueError(
                "surrogate: required (the explainer has no surrogate attached); pass "
                "the surrogate the explainer was trained with"
            )
        explainer.check_surrogate(surrogate)
        self.explainer = explainer
        self.game = SurrogateGame(surrogate)
        self.surrogate = self.game.model
        self._trunk_pairs = self._find_trunk_pairs()
        self._trunk_key: Optional[tuple] = None
        self._trunk_equal = False
        super().__init__(self.surrogate)

    def _find_trunk_pairs(self) -> List[Tuple[Tensor, Tensor]]:
        """(explainer tensor, surrogate tensor) of every trunk weight; [] if none."""
        k = self.explainer.shared_blocks
        if k == 0:
            return []
        mine = self.explainer.backbone.state_dict(keep_vars=True)
        theirs = self.surrogate.state_dict(keep_vars=True)
        names = shared_state_names(self.explainer.backbone, k)
        if any(n not in theirs for n in names):
            return []
        return [(mine[n], theirs[n]) for n in names]

    def shares_trunk(self) -> bool:
        """Whether the explainer's frozen trunk equals the surrogate's, so that one
        pass through it serves both (see :class:`ShapleyExplainer`'s
        ``shared_blocks``).

        The weights are compared on first use and again whenever one of them is
        modified in place or moved (tensor version and storage are tracked, so
        ``load_state_dict``, optimiser steps and ``.to()`` are noticed). Modules
        swapped for new ones after this attributor was built are not tracked: build a
        new ``ViTShapley`` then.
        """
        pairs = self._trunk_pairs
        if not pairs:
            return False
        key = tuple(
            (t.data_ptr(), t._version, t.device, t.dtype)
            for pair in pairs
            for t in pair
        )
        if key != self._trunk_key:
            self._trunk_equal = all(
                a.device == b.device
                and a.dtype == b.dtype
                and a.shape == b.shape
                and bool(torch.equal(a.detach(), b.detach()))
                for a, b in pairs
            )
            self._trunk_key = key
        return self._trunk_equal

    @evaluates_model
    def shapley_values(self, inputs: Union[Tensor, Tuple[Tensor]]) -> Tensor:
        """Efficient Shapley values of every patch for every class.

        Args:
            inputs: (B, C, H, W) images (or a 1-tuple), preprocessed for the
                surrogate.

        Returns:
            (B, N, num_classes) values (probability units), with
            ``values.sum(1) == v(1) − v(0)``.
        """
        images, _ = unpack_inputs(inputs)
        return self._values(images)[0]

    def _values(self, images: Tensor) -> Tuple[Tensor, Tensor]:
        """(phi (B, N, C), v1 (B, C)) with one surrogate and one explainer forward."""
        grid = self.game.adapter.check_images(images)
        if tuple(grid) != tuple(self.explainer.config["grid_size"]):
            raise ValueError(
                f"inputs: give a {tuple(self.explainer.config['grid_size'])} patch "
                f"grid, as the explainer was trained for; got {tuple(grid)}"
            )
        v0 = self.game.empty_value(images)
        if self.shares_trunk():
            k, adapter = self.explainer.shared_blocks, self.game.adapter
            with torch.no_grad(), eval_mode(self.surrogate), eval_mode(self.explainer):
                trunk = adapter.run_blocks(adapter.embed(images), 0, k, grid=grid)
                logits = adapter.head(adapter.run_blocks(trunk, k, grid=grid))
                v1 = logits.float().softmax(dim=-1)
                raw = self.explainer.forward_from_trunk(trunk, grid)
        else:
            v1 = self.game.full_value(images)
            with torch.no_grad(), eval_mode(self.explainer):
                raw = self.explainer(images)
        v1 = v1.to(raw.device)
        return efficient_normalization(raw, v1, v0.to(raw.device)), v1

    @log_usage()
    @evaluates_model
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor]],
        target: TargetType = None,
        interpolate_mode: str = "nearest",
    ) -> Union[Tensor, Tuple[Tensor]]:
        r"""Shapley value of every patch for the target class, spread over its pixels.

        Args:
            inputs: (B, C, H, W) images (or a 1-tuple of them).
            target: Class index (int), per-sample list or 1-D tensor; None uses the
                surrogate's predicted class on the full image.
            interpolate_mode: ``"nearest"`` (patch-constant, exact for
                :func:`captum_vit.patch_scores`) or ``"bilinear"`` for display.

        Returns:
            Attributions of the inputs' shape (and tuple-ness), in probability units;
            per image the patch values sum to ``v_y(1) − v_y(0)``.

        Raises:
            ValueError: target out of range, bad image size.
        """
        images, was_tuple = unpack_inputs(inputs)
        phi, v1 = self._values(images)  # (B, N, C), (B, C)
        b, n, c = phi.shape
        if target is None:
            t = v1.argmax(dim=-1).cpu()
        else:
            t = format_target(target, b, c)
        scores = phi.gather(2, t.to(phi.device).view(b, 1, 1).expand(b, n, 1))[..., 0]
        grid = tuple(self.explainer.config["grid_size"])
        return pack_output(
            tokens_to_pixels(scores, grid, images, interpolate_mode), was_tuple
        )

    @evaluates_model
    def attribute_all_classes(self, inputs: Union[Tensor, Tuple[Tensor]]) -> Tensor:
        """Shapley values of every patch for every class as (B, C, gh, gw) maps.

        Args:
            inputs: (B, C, H, W) images (or a 1-tuple of them).

        Returns:
            (B, num_classes, gh, gw) values in probability units.
        """
        phi = self.shapley_values(inputs)
        gh, gw = self.explainer.config["grid_size"]
        b, _, c = phi.shape
        return phi.transpose(1, 2).reshape(b, c, int(gh), int(gw))
