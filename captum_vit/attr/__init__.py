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
from ._attention_flow import AttentionFlow
from ._gradsam import GradSAM
from ._partial_lrp import PartialLRP
from ._tam import TransitionAttentionMaps
from ._beyond_intuition import BeyondIntuition
from ._attnlrp import AttnLRP
from ._reciprocam import ViTReciproCAM
from ._legrad import LeGrad

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
    "AttentionFlow",
    "GradSAM",
    "PartialLRP",
    "TransitionAttentionMaps",
    "BeyondIntuition",
    "AttnLRP",
    "ViTReciproCAM",
    "LeGrad",
    "TextRelevance",
    "TextRelevanceOutput",
]
