"""The shipped ViT Shapley surrogate and explainer of the embedded default model."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Tuple, Union

import torch
import torch.nn as nn

from .explainer import ShapleyExplainer, load_explainer, load_surrogate

__all__ = [
    "DEFAULT_EXPLAINER",
    "DEFAULT_SURROGATE",
    "SHAPLEY_WEIGHTS",
    "load_default_explainer",
]

#: Folder of the shipped weights (see ``captum_vit/zoo/SHAPLEY_CARD.md``).
SHAPLEY_WEIGHTS = Path(__file__).resolve().parents[1] / "zoo" / "shapley_weights"
#: Shipped surrogate weights (float16) for the default model.
DEFAULT_SURROGATE = SHAPLEY_WEIGHTS / "surrogate.pt"
#: Shipped explainer weights (float16) for the default surrogate.
DEFAULT_EXPLAINER = SHAPLEY_WEIGHTS / "explainer.pt"


def load_default_explainer(
    device: Union[str, torch.device] = "cpu",
) -> Tuple[ShapleyExplainer, nn.Module]:
    """The trained ViT Shapley explainer and surrogate of the embedded default model.

    The surrogate is the default classifier (``captum_vit.zoo.load_default_model``)
    fine-tuned with attention masking; the explainer was trained on its game. See
    ``captum_vit/zoo/SHAPLEY_CARD.md`` for training and accuracy figures.

    Args:
        device: Where to put both models.

    Returns:
        ``(explainer, surrogate)``, both in eval mode; the surrogate is attached to
        the explainer, so ``ViTShapley(explainer)`` works directly.

    Raises:
        FileNotFoundError: the shipped weights (or the default classifier) are missing.

    Warns:
        UserWarning: the default classifier's weights differ from the ones the
            surrogate was fine-tuned from (the explanations then describe the older
            classifier's surrogate).

    Examples::

        >>> from captum_vit.attr import ViTShapley
        >>> from captum_vit.zoo import load_default_scenes
        >>> explainer, surrogate = load_default_explainer()
        >>> inputs, scenes = load_default_scenes(n=4)
        >>> maps = ViTShapley(explainer).attribute_all_classes(inputs)
        >>> maps.shape
        torch.Size([4, 10, 8, 8])
    """
    from ..zoo import load_default_model
    from .train import classifier_digest

    for path in (DEFAULT_SURROGATE, DEFAULT_EXPLAINER):
        if not path.is_file():
            raise FileNotFoundError(f"no shipped ViT Shapley weights at {path}")
    default = load_default_model()
    surrogate = load_surrogate(DEFAULT_SURROGATE, default.model, device=device)
    meta = torch.load(DEFAULT_SURROGATE, map_location="cpu", weights_only=True).get(
        "metadata", {}
    )
    expected = meta.get("classifier_digest")
    if expected is not None and expected != classifier_digest(default.model):
        warnings.warn(
            "the shipped ViT Shapley surrogate was fine-tuned from other default-model "
            "weights than the ones installed; retrain it with "
            "`python -m captum_vit.shapley.train --ship`",
            UserWarning,
            stacklevel=2,
        )
    explainer = load_explainer(DEFAULT_EXPLAINER, surrogate, device=device)
    return explainer, surrogate
