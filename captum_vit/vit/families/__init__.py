"""One adapter per model family, chosen by the model's type.

Each module defines one :class:`~captum_vit.vit.adapter.ViTAdapter` subclass with a
``matches(model)`` class method and its capabilities, and registers it with
:func:`~captum_vit.vit.adapter.register_family`. Importing this package imports every
family module, which fills the registry; :func:`family_of` tries them in the order of
:data:`FAMILIES` (more specific classes first: Eva, BEiT and the distilled DeiT before
the generic timm ``VisionTransformer``). Optional libraries (torchvision,
transformers) are only imported when a model comes from them.
"""

from __future__ import annotations

from typing import List, Type

from ..adapter import SUPPORTED_FAMILIES, ViTAdapter, family_of, registered_families

# Importing the family modules registers them (the names stay importable from here).
from .hf import HFViTAdapter  # noqa: F401
from .hf_clip import HFCLIPVisionAdapter  # noqa: F401
from .open_clip import OpenCLIPVisionAdapter  # noqa: F401
from .timm_beit import BeitAdapter  # noqa: F401
from .timm_eva import EvaAdapter  # noqa: F401
from .timm_swin import SwinAdapter  # noqa: F401
from .timm_vit import TimmViTAdapter  # noqa: F401
from .torchvision_vit import TorchvisionViTAdapter  # noqa: F401
from .zero_shot import ZeroShotAdapter  # noqa: F401

#: Family adapters, in matching order.
FAMILIES: List[Type[ViTAdapter]] = registered_families()

__all__ = ["FAMILIES", "SUPPORTED_FAMILIES", "family_of"]
