"""Attribution methods, each a ``captum.attr.Attribution`` subclass."""

from ._genatt import GenAtt
from ._plus import PLUSWrapper, SkipPLUSWrapper
from ._rollout import AttentionRollout
from ._transformer_attribution import TransformerAttribution
from ._tis import TransformerInputSampling
from ._vit_shapley import ViTShapley
from ._vitcx import ViTCX

__all__ = [
    "AttentionRollout",
    "GenAtt",
    "PLUSWrapper",
    "SkipPLUSWrapper",
    "TransformerAttribution",
    "TransformerInputSampling",
    "ViTCX",
    "ViTShapley",
]
