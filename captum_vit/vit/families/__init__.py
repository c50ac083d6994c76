"""One adapter per model family, chosen by the model's type.

Each module defines one :class:`~captum_vit.vit.adapter.ViTAdapter` subclass with a
``matches(model)`` class method and its capabilities. :func:`family_of` tries them in
the order of :data:`FAMILIES` (more specific classes first: Eva, BEiT and the distilled
DeiT before the generic timm ``VisionTransformer``). Optional libraries (torchvision,
transformers) are only imported when a model comes from them.
"""

from __future__ import annotations

from typing import Any, List, Type

from ..adapter import ViTAdapter
from .hf import HFViTAdapter
from .timm_beit import BeitAdapter
from .timm_eva import EvaAdapter
from .timm_swin import SwinAdapter
from .timm_vit import TimmViTAdapter
from .torchvision_vit import TorchvisionViTAdapter

#: Family adapters, in matching order.
FAMILIES: List[Type[ViTAdapter]] = [
    EvaAdapter,
    BeitAdapter,
    TimmViTAdapter,
    SwinAdapter,
    TorchvisionViTAdapter,
    HFViTAdapter,
]

SUPPORTED_FAMILIES = (
    "timm VisionTransformer (CLS, register tokens, avg/max pooling, attention "
    "pooling global_pool='map'), VisionTransformerDistilled (DeiT distilled), Eva "
    "(EVA-02), Beit and SwinTransformer; torchvision VisionTransformer (vit_b_16, "
    "...); Hugging Face ViTForImageClassification, DeiTForImageClassification"
    "(WithTeacher), Dinov2ForImageClassification and "
    "Dinov2WithRegistersForImageClassification"
)


def family_of(model: Any) -> Type[ViTAdapter]:
    """The adapter class serving ``model``.

    Raises:
        TypeError: naming the supported families when none matches.
    """
    for fam in FAMILIES:
        if fam.matches(model):
            return fam
    raise TypeError(
        f"model: expected a supported Vision Transformer ({SUPPORTED_FAMILIES}); "
        f"got {type(model).__name__}"
    )


__all__ = ["FAMILIES", "SUPPORTED_FAMILIES", "family_of"]
