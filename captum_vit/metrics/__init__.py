"""Captum-style metrics for ViT (and any) explanations.

Every model-based metric follows Captum's ``captum.metrics`` convention,
``metric(forward_func, inputs, attributions, target=None,
additional_forward_args=None, **knobs) -> (B,) tensor``, runs under
``torch.no_grad()``, batches its forward passes (``max_examples_per_batch``) and is
reproducible with ``seed``. A model passed as ``forward_func`` (or as the ``model`` or
``explainer`` of :func:`max_sensitivity` and :func:`model_parameter_randomization`)
runs in eval mode (and eagerly, if compiled) for the call, its modes restored
afterwards; an empty batch, NaN and out-of-range arguments are errors naming the
argument. Feature units are the patch
grid of a timm ViT (removed by true token removal by default) or a Captum-style
``feature_mask`` with a pixel baseline for any model. Localisation and complexity
metrics need no model.

Faithfulness (perturbation):
    :func:`insertion`, :func:`deletion`, :func:`insertion_deletion_curves`,
    :func:`insertion_minus_deletion`, :func:`area_under_curve`, :func:`aopc`,
    :func:`perturbation_accuracy`, :func:`faithfulness_correlation`,
    :func:`sensitivity_n`, :func:`sensitivity_n_sweep`, :func:`road`,
    :func:`road_curves` (ROAD, with :class:`NoisyLinearImputation`).
Localisation:
    :func:`pointing_game`, :func:`segmentation_ap`, :func:`mean_iou`,
    :func:`pixel_accuracy`, :func:`box_iou`, :func:`energy_pointing_game`,
    :func:`segmentation_f1` (mF1), :func:`grid_pointing_game` (its grids are
    tiled by the helpers ``make_grid`` and ``grid_cell_masks``, importable from
    here but not metrics, so not in ``__all__``).
Complexity:
    :func:`sparseness`, :func:`effective_complexity`.
Robustness:
    :func:`max_sensitivity` (Captum's ``sensitivity_max`` with the TIS settings).
Infidelity:
    :func:`infidelity` (Captum's ``infidelity`` with patch-level square removal or
    Gaussian noise, Yeh et al. 2019).
Sanity:
    :func:`model_parameter_randomization` (Adebayo et al. 2018), with :func:`ssim`.
"""

from ._complexity import effective_complexity, sparseness
from ._correlation import (
    SensitivityNCurve,
    faithfulness_correlation,
    sensitivity_n,
    sensitivity_n_sweep,
)
from ._imputation import NoisyLinearImputation
from ._localisation import (
    box_iou,
    mean_iou,
    pixel_accuracy,
    pointing_game,
    segmentation_ap,
)
from ._perturbation import (
    PerturbationCurves,
    aopc,
    area_under_curve,
    deletion,
    insertion,
    insertion_deletion_curves,
    insertion_minus_deletion,
    perturbation_accuracy,
)
from ._randomization import RandomizationResult, model_parameter_randomization, ssim
from ._road import RoadCurves, road, road_curves
from ._robustness import max_sensitivity
from ._infidelity import infidelity
from ._grid import grid_cell_masks, grid_pointing_game, make_grid  # noqa: F401
from ._localisation import energy_pointing_game, segmentation_f1

__all__ = [
    "NoisyLinearImputation",
    "PerturbationCurves",
    "RandomizationResult",
    "RoadCurves",
    "SensitivityNCurve",
    "aopc",
    "area_under_curve",
    "box_iou",
    "deletion",
    "effective_complexity",
    "faithfulness_correlation",
    "insertion",
    "insertion_deletion_curves",
    "insertion_minus_deletion",
    "max_sensitivity",
    "mean_iou",
    "model_parameter_randomization",
    "perturbation_accuracy",
    "pixel_accuracy",
    "pointing_game",
    "road",
    "road_curves",
    "segmentation_ap",
    "sensitivity_n",
    "sensitivity_n_sweep",
    "sparseness",
    "ssim",
    "infidelity",
    "grid_pointing_game",
    "energy_pointing_game",
    "segmentation_f1",
]
