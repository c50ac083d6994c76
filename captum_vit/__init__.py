"""captum-vit: Vision Transformer explanations and metrics for Captum and timm."""

from .attr import (
    AttentionRollout,
    GenAtt,
    PLUSWrapper,
    RISE,
    RawAttention,
    SkipPLUSWrapper,
    TextRelevance,
    TransformerAttribution,
    TransformerInputSampling,
    ViTCX,
    ViTGradCAM,
    ViTShapley,
    AttentionFlow,
    GradSAM,
    PartialLRP,
    TransitionAttentionMaps,
    BeyondIntuition,
    AttnLRP,
    ViTReciproCAM,
    LeGrad,
)
from . import metrics
from .vit import TokenMask, ViTAdapter, patch_scores
from .vit import ZeroShotClassifier

__version__ = "0.1.0"

__all__ = [
    "AttentionRollout",
    "GenAtt",
    "PLUSWrapper",
    "RISE",
    "RawAttention",
    "SkipPLUSWrapper",
    "TokenMask",
    "TransformerAttribution",
    "TransformerInputSampling",
    "ViTAdapter",
    "ViTCX",
    "ViTGradCAM",
    "ViTShapley",
    "metrics",
    "patch_scores",
    "AttentionFlow",
    "GradSAM",
    "PartialLRP",
    "TransitionAttentionMaps",
    "BeyondIntuition",
    "AttnLRP",
    "ViTReciproCAM",
    "LeGrad",
    "ZeroShotClassifier",
    "TextRelevance",
]
