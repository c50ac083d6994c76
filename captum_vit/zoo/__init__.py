"""Embedded default data and model: Fashion-MNIST scenes and a small trained timm ViT.

The zoo gives every tutorial, test and benchmark the same ready-made setting without
downloads: :func:`make_scenes` draws reproducible scenes with ground-truth boxes and
masks, and :func:`load_default_model` returns a stock
``timm.models.vision_transformer.VisionTransformer`` trained on them (see
``MODEL_CARD.md`` next to this file); :func:`load_default_explainer` returns the
ViT Shapley explainer and surrogate trained for it (``SHAPLEY_CARD.md``).

Examples::

    >>> from captum_vit.zoo import load_default_model, load_default_scenes
    >>> model = load_default_model()
    >>> inputs, scenes = load_default_scenes(n=4)
    >>> logits = model(inputs)
    >>> logits.shape
    torch.Size([4, 10])

The model's extras live next to it: :data:`CLASS_NAMES` (the class name of each
output), :func:`preprocess` (images in [0, 1] to model inputs) and
:func:`load_default_config` (the architecture and training record stored with the
weights).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
import torch

from .scenes import (
    CLASS_NAMES,
    DATA_ENV,
    SAMPLE_PATH,
    SCENES_VERSION,
    TEST_PATH,
    TRAIN_SAMPLE_PATH,
    Scenes,
    data_source,
    generate_scenes,
    load_fashion_mnist,
    make_scenes,
)

__all__ = [
    "CLASS_NAMES",
    "DATA_ENV",
    "DEFAULT_EXPLAINER",
    "DEFAULT_SURROGATE",
    "DEFAULT_WEIGHTS",
    "MEAN",
    "SAMPLE_PATH",
    "SCENES_VERSION",
    "SHAPLEY_WEIGHTS",
    "STD",
    "Scenes",
    "TEST_PATH",
    "TRAIN_SAMPLE_PATH",
    "build_model",
    "data_source",
    "generate_scenes",
    "load_default_config",
    "load_default_explainer",
    "load_default_model",
    "load_default_scenes",
    "load_fashion_mnist",
    "make_scenes",
    "preprocess",
]

#: Path of the shipped weights of the default model.
DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "default_vit.pt"
#: Folder of the shipped ViT Shapley weights of the default model (see
#: ``SHAPLEY_CARD.md``).
SHAPLEY_WEIGHTS = Path(__file__).resolve().parent / "shapley_weights"
#: Shipped surrogate weights (float16) for the default model.
DEFAULT_SURROGATE = SHAPLEY_WEIGHTS / "surrogate.pt"
#: Shipped explainer weights (float16) for the default surrogate.
DEFAULT_EXPLAINER = SHAPLEY_WEIGHTS / "explainer.pt"

#: Per-channel input normalisation of the default model: ``(x - MEAN) / STD``.
MEAN: Tuple[float, float, float] = (0.5, 0.5, 0.5)
STD: Tuple[float, float, float] = (0.5, 0.5, 0.5)

_ARCH_KEYS = (
    "image_size",
    "patch_size",
    "embed_dim",
    "depth",
    "num_heads",
    "mlp_ratio",
    "num_classes",
)


def preprocess(images: Union[torch.Tensor, np.ndarray]) -> torch.Tensor:
    """Normalise images in [0, 1] for the default model (mean = std = 0.5).

    Args:
        images: (B, 3, H, W) or (3, H, W) float images with values in [0, 1], as a
            tensor or numpy array (e.g. ``Scenes.images``).

    Returns:
        A float32 tensor of the same shape, ``(images - 0.5) / 0.5``, in [-1, 1].

    Raises:
        ValueError: ``images`` does not have 3 channels in dimension -3.

    Examples::

        >>> x = preprocess(torch.full((1, 3, 64, 64), 0.5))
        >>> float(x.abs().max())
        0.0
    """
    x = torch.as_tensor(images)
    if x.dim() not in (3, 4) or x.shape[-3] != 3:
        raise ValueError(
            f"images must be (B, 3, H, W) or (3, H, W) in [0, 1], got {tuple(x.shape)}"
        )
    x = x.to(torch.float32)
    mean = torch.tensor(MEAN, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std = torch.tensor(STD, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x - mean) / std


def build_model(config: Dict[str, Any]) -> torch.nn.Module:
    """Build the (untrained) stock timm ViT described by ``config``.

    Args:
        config: a dict with ``image_size``, ``patch_size``, ``embed_dim``, ``depth``,
            ``num_heads``, ``mlp_ratio`` and ``num_classes`` (extra keys are ignored).

    Returns:
        A ``timm.models.vision_transformer.VisionTransformer`` with a CLS token and
        CLS pooling, in train mode, whose ``pretrained_cfg`` records the default
        model's normalisation (:data:`MEAN`, :data:`STD`) and input size.

    Raises:
        KeyError: a required key is missing.

    Examples::

        >>> cfg = dict(image_size=32, patch_size=8, embed_dim=32, depth=1,
        ...            num_heads=2, mlp_ratio=2.0, num_classes=10)
        >>> build_model(cfg).patch_embed.grid_size
        (4, 4)
    """
    from timm.models.vision_transformer import VisionTransformer

    missing = [k for k in _ARCH_KEYS if k not in config]
    if missing:
        raise KeyError(f"model config lacks {missing}")
    model = VisionTransformer(
        img_size=int(config["image_size"]),
        patch_size=int(config["patch_size"]),
        in_chans=3,
        num_classes=int(config["num_classes"]),
        embed_dim=int(config["embed_dim"]),
        depth=int(config["depth"]),
        num_heads=int(config["num_heads"]),
        mlp_ratio=float(config["mlp_ratio"]),
        class_token=True,
        global_pool="token",
    )
    # What timm.create_model records for its own models: the input normalisation
    # (read by the "black" fills and by timm.data.resolve_data_config) and size.
    size = int(config["image_size"])
    model.pretrained_cfg = {
        "input_size": (3, size, size),
        "mean": MEAN,
        "std": STD,
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "num_classes": int(config["num_classes"]),
    }
    return model


def _read_weights(weights: Optional[Union[str, Path]]) -> Dict[str, Any]:
    """The payload of a weights file in the shipped format (default: shipped)."""
    path = Path(weights) if weights is not None else DEFAULT_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"no model weights at {path}")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_default_config(weights: Optional[Union[str, Path]] = None) -> Dict[str, Any]:
    """The architecture and training record stored with the default model's weights.

    Args:
        weights: a weights file in the shipped format (a dict with ``config`` and
            ``state_dict``); defaults to :data:`DEFAULT_WEIGHTS`.

    Returns:
        A new dict with the architecture keys of :func:`build_model`
        (``image_size``, ``patch_size``, ``embed_dim``, ``depth``, ...), and, as
        far as the file records them, ``class_names``, ``mean``/``std`` and the
        ``training`` record (settings, accuracy, history, earlier runs).

    Raises:
        FileNotFoundError: the weights file does not exist.

    Examples::

        >>> config = load_default_config()
        >>> config["image_size"], config["patch_size"]
        (64, 8)
    """
    return dict(_read_weights(weights)["config"])


def load_default_model(
    device: Union[str, torch.device] = "cpu",
    weights: Optional[Union[str, Path]] = None,
) -> torch.nn.Module:
    """Load the embedded Fashion-MNIST-scenes ViT.

    The extras live next to the model: :data:`CLASS_NAMES` gives the class name of
    each output, :func:`preprocess` turns images in [0, 1] into model inputs (mean =
    std = 0.5, also recorded in ``model.pretrained_cfg`` as timm does), and
    :func:`load_default_config` returns the architecture and training record stored
    with the weights (for a ``weights`` file of your own, its ``class_names`` too).

    Args:
        device: where to put the model.
        weights: a weights file in the shipped format (a dict with ``config`` and
            ``state_dict``); defaults to :data:`DEFAULT_WEIGHTS`.

    Returns:
        The stock ``timm.models.vision_transformer.VisionTransformer``, in eval mode
        on ``device``: ``model(inputs)`` gives (B, num_classes) logits (10 classes
        for the shipped weights).

    Raises:
        FileNotFoundError: the weights file does not exist.

    Examples::

        >>> model = load_default_model()
        >>> inputs, scenes = load_default_scenes(n=2)
        >>> logits = model(inputs)
        >>> logits.shape
        torch.Size([2, 10])
        >>> names = [CLASS_NAMES[i] for i in logits.argmax(dim=1)]
    """
    payload = _read_weights(weights)
    model = build_model(dict(payload["config"]))
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval()


def load_default_scenes(
    n: int = 8,
    seed: int = 0,
    image_size: int = 64,
    root: Optional[Union[str, Path]] = None,
) -> Tuple[torch.Tensor, Scenes]:
    """Held-out test-split scenes, ready for the default model (demos, tutorials).

    Args:
        n: number of scenes.
        seed: generator seed; the same seed gives the same scenes.
        image_size: image side (the default model expects 64).
        root: where Fashion-MNIST lives; see :func:`load_fashion_mnist`.

    Returns:
        ``(inputs, scenes)``: the preprocessed (n, 3, S, S) float32 tensor and the raw
        :class:`Scenes` (images in [0, 1], labels, boxes, masks).

    Examples::

        >>> inputs, scenes = load_default_scenes(n=2, seed=1)
        >>> inputs.shape, scenes.labels.shape
        (torch.Size([2, 3, 64, 64]), (2,))
    """
    scenes = make_scenes(n, split="test", seed=seed, image_size=image_size, root=root)
    return preprocess(scenes.images), scenes


def load_default_explainer(
    device: Union[str, torch.device] = "cpu",
) -> Tuple[torch.nn.Module, torch.nn.Module]:
    """The trained ViT Shapley explainer and surrogate of the embedded default model.

    The surrogate is the default classifier (:func:`load_default_model`) fine-tuned
    with attention masking; the explainer was trained on its game. See
    ``SHAPLEY_CARD.md`` next to this file for training and accuracy figures.

    Args:
        device: Where to put both models.

    Returns:
        ``(explainer, surrogate)``, both in eval mode; the surrogate is attached to
        the explainer, so ``ViTShapley(explainer)`` works directly.

    Raises:
        FileNotFoundError: the shipped weights (or the default classifier) are missing.
        ValueError: the installed default classifier has another architecture than
            the one the shipped surrogate was made for.

    Warns:
        UserWarning: the default classifier's weights differ from the ones the
            surrogate was fine-tuned from (the explanations then describe the older
            classifier's surrogate).

    Examples::

        >>> from captum_vit import ViTShapley
        >>> explainer, surrogate = load_default_explainer()
        >>> inputs, scenes = load_default_scenes(n=4)
        >>> maps = ViTShapley(explainer).attribute_all_classes(inputs)
        >>> maps.shape
        torch.Size([4, 10, 8, 8])
    """
    import warnings

    from ..shapley import classifier_digest, load_explainer, load_surrogate

    for path in (DEFAULT_SURROGATE, DEFAULT_EXPLAINER):
        if not path.is_file():
            raise FileNotFoundError(f"no shipped ViT Shapley weights at {path}")
    classifier = load_default_model()
    # the shipped pair is checked here with a warning (not refused): the installed
    # default classifier may have been retrained since the surrogate was made
    try:
        surrogate = load_surrogate(
            DEFAULT_SURROGATE, classifier, device=device, check_classifier=False
        )
    except ValueError as exc:
        raise ValueError(
            f"the shipped ViT Shapley surrogate does not fit the installed default "
            f"classifier's architecture ({exc}); retrain it with `captum-vit "
            f"train-shapley` (see captum_vit/zoo/SHAPLEY_CARD.md)"
        ) from exc
    expected = getattr(surrogate, "metadata", {}).get("classifier_digest")
    if expected is not None and expected != classifier_digest(classifier):
        warnings.warn(
            "the shipped ViT Shapley surrogate was fine-tuned from other default-model "
            "weights than the ones installed; retrain it with `captum-vit "
            "train-shapley` (see captum_vit/zoo/SHAPLEY_CARD.md)",
            UserWarning,
            stacklevel=2,
        )
    explainer = load_explainer(DEFAULT_EXPLAINER, surrogate, device=device)
    return explainer, surrogate
