"""Attribution methods, each a ``captum.attr.Attribution`` subclass."""

from ._genatt import GenAtt
from ._rollout import AttentionRollout

__all__ = ["AttentionRollout", "GenAtt"]
