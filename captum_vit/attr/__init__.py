"""Attribution methods, each a ``captum.attr.Attribution`` subclass."""

from ._genatt import GenAtt
from ._plus import PLUSWrapper, SkipPLUSWrapper
from ._rollout import AttentionRollout
from ._tis import TransformerInputSampling
from ._vit_shapley import ViTShapley
from ._vitcx import ViTCX

__all__ = [
    "AttentionRollout",
    "GenAtt",
    "PLUSWrapper",
    "SkipPLUSWrapper",
    "TransformerInputSampling",
    "ViTCX",
    "ViTShapley",
]
