"""Helpers shared by the attribution methods (most defined in ``captum_vit._utils``
and ``captum_vit._guard``)."""

from typing import Callable

from torch import Tensor

from .._guard import evaluates_model, model_call, require_autograd  # noqa: F401
from .._utils import (  # noqa: F401
    TargetType,
    as_target,
    check_choice,
    check_image_batch,
    check_int,
    check_number,
    check_seed,
    format_target,
    pack_output,
    unpack_inputs,
)
from ..vit import AttentionRecorder, ViTAdapter


def head_readout(
    adapter: ViTAdapter,
    rec: AttentionRecorder,
    tokens: Tensor,
    pool_rows: Callable[[Tensor], Tensor],
) -> Tensor:
    """The weights (B, T) with which the head reads the T token rows of a relevance
    matrix, for the B samples of ``tokens`` (any (B, T, ...) tensor).

    Attention-pooled heads read through the pool's recorded attention:
    ``pool_rows`` maps its (B, heads, Q, T') probabilities to (B, Q, T') rows by the
    method's own rule, and :meth:`AttentionRecorder.pool_readout` averages the
    queries. Every other head reads the same rows for every sample,
    :meth:`ViTAdapter.readout_weights`.
    """
    b, t = tokens.shape[0], tokens.shape[1]
    if rec.pool_attention is not None:
        return rec.pool_readout(pool_rows(rec.pool_attention), t)
    return adapter.readout_weights(t - adapter.num_prefix_tokens).expand(b, -1)
