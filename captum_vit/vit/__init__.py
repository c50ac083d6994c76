"""What a ViT is, for every method: the only code that knows model internals.

``ViTAdapter(model)`` picks the adapter of the model's family
(:mod:`captum_vit.vit.families`); methods ask it for geometry, forward parts, masking
and attention, and check its capabilities. The family adapters register themselves
(:func:`~captum_vit.vit.adapter.register_family`) when this package imports
:mod:`~captum_vit.vit.families`; :mod:`~captum_vit.vit.adapter` never imports them.
"""

from .adapter import (
    ATTENTION_MASK,
    CAPABILITIES,
    CLASS_HEAD,
    LRP_RULES,
    PREFIX_TOKENS,
    RECORDED_ATTENTION,
    TOKEN_DROP,
    TOKENS,
    VALUE_PROJECTION,
    MissingCapability,
    ViTAdapter,
    is_supported_vit,
    logits_of,
)
from .attention import AttentionRecorder, record_attention
from .families import FAMILIES, SUPPORTED_FAMILIES  # registers the family adapters
from .masking import TokenMask
from .patches import patch_scores, tokens_to_pixels
from .zero_shot import ZeroShotClassifier

__all__ = [
    "ATTENTION_MASK",
    "CAPABILITIES",
    "CLASS_HEAD",
    "FAMILIES",
    "LRP_RULES",
    "PREFIX_TOKENS",
    "RECORDED_ATTENTION",
    "SUPPORTED_FAMILIES",
    "TOKENS",
    "TOKEN_DROP",
    "VALUE_PROJECTION",
    "AttentionRecorder",
    "MissingCapability",
    "TokenMask",
    "ViTAdapter",
    "is_supported_vit",
    "logits_of",
    "patch_scores",
    "record_attention",
    "tokens_to_pixels",
    "ZeroShotClassifier",
]
