"""Helpers shared by the attribution methods (defined in ``captum_vit._utils`` and
``captum_vit._guard``)."""

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
