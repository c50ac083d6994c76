"""Argument descriptions shared by the metric docstrings (filled in at import)."""

from typing import Callable, TypeVar

_F = TypeVar("_F", bound=Callable)

COMMON = {
    "forward_func": """forward_func: The model (or any callable) mapping a batch
            of inputs to (B, num_classes) outputs (logits). For token removal it
            must be the timm ViT module itself. A module (also one wrapped by
            ``torch.compile``) runs in eval mode and eagerly for the call, and its
            modes are restored afterwards; a plain function is called as it is.""",
    "inputs": """inputs: (B, ...) floating-point input batch with B >= 1 (an empty
            batch is an error), (B, C, H, W) images for ViTs, or a 1-tuple of
            it.""",
    "attributions": """attributions: Pixel-shaped attributions (the inputs' shape, or
            broadcastable to it such as (B, 1, H, W)), reduced to one score per
            feature by ``attribution_reduction``; or already feature-shaped,
            (B, F), or (B, gh, gw) on a ViT's patch grid.""",
    "target": """target: Class whose score is read: an int, a per-sample list
            or a 1-D tensor (Captum style). Default: the class the model predicts
            on the unperturbed inputs.""",
    "additional_forward_args": """additional_forward_args: Extra positional
            arguments for ``forward_func`` (a value or a tuple); tensors whose
            first dimension is the batch size are indexed along with the inputs.""",
    "feature_mask": """feature_mask: Captum-style integer feature ids ``0 .. F-1``,
            broadcastable to the inputs (every id must occur in every example).
            Default: the patch grid for timm ViTs (row-major patch order), every
            input element its own feature otherwise.""",
    "removal": """removal: How removed features are hidden: ``"tokens"`` (true removal
            of patch tokens with :class:`captum_vit.vit.TokenMask` in ``"drop"``
            mode; default for ViTs without a ``feature_mask``), or a pixel baseline
            replacing the features' elements: ``"black"`` (zeros; default for other
            models), ``"mean"`` (per-example, per-channel mean), ``"blur"``
            (Gaussian, kernel 11, sigma 5, as in RISE/TIS), ``"uniform"`` (seeded
            noise in each example's [min, max] range), a number, a tensor
            broadcastable to the inputs, or a callable ``f(inputs) -> tensor``;
            or an imputation from the kept pixels: ``"noisy_linear"`` /
            :class:`captum_vit.metrics.NoisyLinearImputation` (ROAD, Rong et al.
            2022; removes whole pixels, (B, C, H, W) inputs).
            An empty patch set follows TokenMask's convention (prefix tokens only;
            zero pooled features on average-pooled models); ViTs without any prefix
            token cannot evaluate it and raise.""",
    "score": """score: ``"probability"`` (softmax of the outputs, default, as the
            papers) or ``"logit"`` (the raw output of ``forward_func``; also the
            choice for a model that already outputs probabilities).""",
    "attribution_reduction": """attribution_reduction: ``"sum"`` (default) or ``"mean"``
            of a pixel-shaped attribution over each feature's elements. Equal-size
            features (patches) rank identically either way; ``"mean"`` equals
            :func:`captum_vit.patch_scores` on the patch grid.""",
    "tie_break": """tie_break: Order of features with equal attribution: ``"random"``
            (default; a permutation drawn from ``seed``, the same for every example)
            or ``"index"`` (feature order).""",
    "max_examples_per_batch": """max_examples_per_batch: Perturbed inputs per forward
            pass (default 64).""",
    "seed": """seed: Seed for every random choice (ties, subsets, noise). The same seed
            gives the same result; every example uses the same random stream, so a
            sample's score does not depend on the rest of the batch.""",
    "show_progress": """show_progress: Show a tqdm progress bar over forward passes.""",
}


def fill_doc(func: _F) -> _F:
    """Replace ``{name}`` placeholders in ``func.__doc__`` by :data:`COMMON`."""
    if func.__doc__:
        doc = func.__doc__
        for key, text in COMMON.items():
            doc = doc.replace("{" + key + "}", text)
        func.__doc__ = doc
    return func
