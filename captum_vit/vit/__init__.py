"""What a ViT is, for every method: the only code that knows timm internals."""

from .adapter import SUPPORTED_FAMILIES, ViTAdapter, is_supported_vit
from .attention import AttentionRecorder, record_attention
from .masking import TokenMask
from .patches import patch_scores, tokens_to_pixels

__all__ = [
    "SUPPORTED_FAMILIES",
    "AttentionRecorder",
    "TokenMask",
    "ViTAdapter",
    "is_supported_vit",
    "patch_scores",
    "record_attention",
    "tokens_to_pixels",
]
