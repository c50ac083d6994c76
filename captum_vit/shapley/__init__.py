"""ViT Shapley (Covert, Kim, Lee & Lee, ICLR 2023): training and ground truth.

- :mod:`~captum_vit.shapley.sampling`: coalition samplers (uniform size, Shapley
  kernel, paired);
- :mod:`~captum_vit.shapley.games`: ``v(s)`` = the surrogate's probabilities on kept
  patches;
- :func:`train_surrogate`, :class:`ShapleyExplainer`, :func:`train_explainer`;
- ground truth: :func:`exact_shapley` (enumeration, d <= 16) and :func:`kernel_shap`
  (paired sampling, convergence detection);
- the trained explainer and surrogate of the embedded default model:
  :func:`captum_vit.zoo.load_default_explainer`; training at scale (any model, a
  folder of images, ``torchrun``): ``captum-vit train-shapley``
  (:mod:`captum_vit.train_shapley`).

Use :class:`captum_vit.attr.ViTShapley` to explain images with a trained explainer.
"""

from .exact import all_coalitions, exact_shapley
from .explainer import (
    ShapleyExplainer,
    classifier_digest,
    efficient_normalization,
    load_explainer,
    load_surrogate,
    save_explainer,
    save_surrogate,
    shared_state_names,
)
from .games import Game, SurrogateGame, masked_chunks, masked_logits
from .kernel_shap import KernelShapResult, kernel_shap, solve_constrained
from .sampling import (
    ShapleySampler,
    UniformSizeSampler,
    shapley_kernel_size_probs,
    subsets_of_sizes,
)
from .training import (
    TrainingResult,
    explainer_loss,
    surrogate_loss,
    train_explainer,
    train_surrogate,
)

__all__ = [
    "Game",
    "KernelShapResult",
    "ShapleyExplainer",
    "ShapleySampler",
    "SurrogateGame",
    "TrainingResult",
    "UniformSizeSampler",
    "all_coalitions",
    "classifier_digest",
    "efficient_normalization",
    "exact_shapley",
    "explainer_loss",
    "kernel_shap",
    "load_explainer",
    "load_surrogate",
    "masked_chunks",
    "masked_logits",
    "save_explainer",
    "save_surrogate",
    "shapley_kernel_size_probs",
    "shared_state_names",
    "solve_constrained",
    "subsets_of_sizes",
    "surrogate_loss",
    "train_explainer",
    "train_surrogate",
]
