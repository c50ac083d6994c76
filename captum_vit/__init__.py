"""captum-vit: Vision Transformer explanations and metrics for Captum and timm."""

from .attr import (
    AttentionRollout,
    GenAtt,
    PLUSWrapper,
    SkipPLUSWrapper,
    TransformerAttribution,
    TransformerInputSampling,
    ViTCX,
    ViTShapley,
)
from . import metrics
from .vit import TokenMask, ViTAdapter, patch_scores

__version__ = "0.1.0"

__all__ = [
    "AttentionRollout",
    "GenAtt",
    "PLUSWrapper",
    "SkipPLUSWrapper",
    "TokenMask",
    "TransformerAttribution",
    "TransformerInputSampling",
    "ViTAdapter",
    "ViTCX",
    "ViTShapley",
    "metrics",
    "patch_scores",
]
