"""Attribution methods, each a ``captum.attr.Attribution`` subclass."""

from ._genatt import GenAtt
from ._gradcam import ViTGradCAM
from ._plus import PLUSWrapper, SkipPLUSWrapper
from ._raw_attention import RawAttention
from ._rise import RISE
from ._rollout import AttentionRollout
from ._text_relevance import TextRelevance, TextRelevanceOutput
from ._tis import TransformerInputSampling
from ._transformer_attribution import TransformerAttribution
from ._vit_shapley import ViTShapley
from ._vitcx import ViTCX

__all__ = [
    "AttentionRollout",
    "GenAtt",
    "PLUSWrapper",
    "RISE",
    "RawAttention",
    "SkipPLUSWrapper",
    "TransformerAttribution",
    "TransformerInputSampling",
    "ViTCX",
    "ViTGradCAM",
    "ViTShapley",
    "TextRelevance",
    "TextRelevanceOutput",
]
