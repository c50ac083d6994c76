"""Benchmark tables: every method scored by every metric, on any model and images.

:func:`run_evaluation` explains a data source's images with each method (the target
class: the label or the prediction; on the embedded scenes also the distractor's
class), scores the maps with :mod:`captum_vit.metrics`, and writes

- ``records.jsonl`` (and ``records.rank{R}.jsonl`` per extra process): one line per
  (method, chunk of images) with per-image values, so an interrupted run resumes from
  what it already wrote, also with another number of processes;
- ``results.csv`` and ``results.md``: mean and 95% confidence interval (Student t) per
  method and metric; ``results.md`` defines every column and says what a resumed run
  reused;
- ``curves.png`` and ``curves.npz``: the average insertion and deletion curves (and
  the non-target and ROAD curves in the ``.npz``);
- ``sensitivity_n.png`` and ``sensitivity_n.npz``: sensitivity-n over the sweep of n;
- ``report.html``: all of the above in one self-contained page (sortable table, paired
  differences, curves, and the gallery of ``gallery/``, the maps of a seeded sample of
  ``EvalConfig.gallery`` images); :func:`rebuild_report` writes it again from the
  records;
- ``randomization.npz`` (with ``randomization`` > 0): the randomisation check's
  Spearman and SSIM per randomised parameter group.

With ``grid_pointing`` = n (``--grid-pointing``) every image is also explained in an
n x n grid of images of distinct classes (:class:`captum_vit.data.GridDataset`)
for the grid pointing column.

The protocol options of :class:`EvalConfig` (which model scores the perturbed
images, the pointing rule, the sensitivity-n sweep, the non-target class, ROAD, the
randomisation subset) reproduce the papers' settings; ``results.md`` lists them
next to the papers'.

The data source is the embedded Fashion-MNIST scenes by default, or any
:class:`captum_vit.data.ImageDataset`; the model is the embedded default or any
:class:`captum_vit.models.LoadedModel`. Under ``torchrun`` the chunks are split over
the processes (:mod:`captum_vit.distributed`) and rank 0 writes the tables; every
random choice is seeded per image, so the tables equal a one-process run's.

The package has three parts: :mod:`._config` (the settings, the metric catalogue and
the protocol presets), :mod:`._job` (the resumable job) and :mod:`._report` (the
tables and plots). Every public name is imported from here.
"""

from ._config import (
    COLUMN_DEFINITIONS,
    EVALUATORS,
    INFIDELITY,
    METRICS,
    NON_TARGETS,
    POINTING_RULES,
    PROTOCOLS,
    ROAD_FRACTIONS,
    ROAD_UNITS,
    EvalConfig,
    check_protocol,
    cost_line,
    forward_passes,
    gallery_positions,
    protocol_of,
    protocol_settings,
    randomization_positions,
)
from ._job import non_target_classes, run_evaluation, writable_dir
from ._page import PAGE, rebuild as rebuild_report
from ._report import (
    CURVES,
    format_mean_ci,
    format_seconds,
    mean_ci,
    write_tables,
)

# private helpers that the command line, benchmarks/paper_claims.py and the tests use
from ._config import _patches  # noqa: F401
from ._job import _removal  # noqa: F401
from ._report import _dedupe  # noqa: F401

__all__ = [
    "COLUMN_DEFINITIONS",
    "CURVES",
    "EVALUATORS",
    "INFIDELITY",
    "METRICS",
    "NON_TARGETS",
    "POINTING_RULES",
    "PROTOCOLS",
    "ROAD_FRACTIONS",
    "ROAD_UNITS",
    "EvalConfig",
    "PAGE",
    "check_protocol",
    "cost_line",
    "format_mean_ci",
    "format_seconds",
    "forward_passes",
    "gallery_positions",
    "mean_ci",
    "non_target_classes",
    "protocol_of",
    "protocol_settings",
    "randomization_positions",
    "rebuild_report",
    "run_evaluation",
    "writable_dir",
    "write_tables",
]
