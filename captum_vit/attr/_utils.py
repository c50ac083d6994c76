"""Helpers shared by the attribution methods (defined in ``captum_vit._utils``)."""

from .._utils import (  # noqa: F401
    TargetType,
    check_choice,
    format_target,
    pack_output,
    unpack_inputs,
)
