"""Benchmark tables: every method scored by every metric (``captum-vit evaluate``).

See :func:`run_evaluation`.
"""

from ._job import (  # noqa: F401
    COLUMN_DEFINITIONS,
    CURVES,
    EVALUATORS,
    METRICS,
    NON_TARGETS,
    POINTING_RULES,
    PROTOCOLS,
    ROAD_FRACTIONS,
    ROAD_UNITS,
    EvalConfig,
    _dedupe,
    _patches,
    _removal,
    check_protocol,
    cost_line,
    format_mean_ci,
    format_seconds,
    forward_passes,
    mean_ci,
    non_target_classes,
    protocol_of,
    protocol_settings,
    randomization_positions,
    run_evaluation,
    writable_dir,
    write_tables,
)
