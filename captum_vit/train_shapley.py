"""Train ViT Shapley for any supported model on any folder of images.

:func:`run_train_shapley` is what ``captum-vit train-shapley`` runs: the surrogate stage
(:func:`~captum_vit.shapley.train_surrogate`) then the explainer stage
(:func:`~captum_vit.shapley.train_explainer`) for a model loaded with
:func:`captum_vit.models.load_model`, on images from :mod:`captum_vit.data` (an image
folder, or the embedded Fashion-MNIST training scenes by default), on one process or
under ``torchrun`` with DDP. It writes into the run folder:

- ``surrogate.pt`` and ``explainer.pt``, read by
  :func:`~captum_vit.shapley.load_surrogate` and
  :func:`~captum_vit.shapley.load_explainer` (the surrogate records the digest of
  the classifier it was fine-tuned from, the explainer that of its surrogate);
- ``surrogate_ckpt.pt`` / ``explainer_ckpt.pt``: step checkpoints (every
  ``save_every`` steps); running the same command again resumes from them, also with
  another number of processes, and refuses other settings. The newest
  ``keep_checkpoints`` (default 1) of each stage are kept (the older ones as
  ``<stage>_ckpt.step<S>.pt``); the best-validation weights are in the newest, as a
  second copy only while they differ from its weights. When a stage ends, its
  newest checkpoint is cut down to the stage's final weights and history (running
  again then skips the stage; the optimiser state could only continue a run that
  is over); ``keep_checkpoints=0`` removes them then;
- ``record.json``: settings, loss history, processes, seconds and images/s per stage.

:func:`attach_shapley` puts a run's surrogate and explainer into a loaded model's
``extras`` (``captum-vit explain|evaluate --shapley RUN``), after checking that they
belong to that model.

Labels are never needed. Training images go through the paper's augmentation
(:data:`AUGMENT`, Covert et al. 2023, App. C.1) built on the model's own preprocessing
(:meth:`captum_vit.data.Preprocessing.train_transform`) unless ``augment=False``;
validation images use the eval preprocessing.

Examples::

    >>> from captum_vit.models import load_model
    >>> from captum_vit.train_shapley import StageOptions, run_train_shapley
    >>> from captum_vit.train_shapley import training_data
    >>> loaded = load_model("vit_small_patch16_224", checkpoint="my_vit.pth")
    >>> train, val = training_data(loaded, data="my_images/")
    >>> record = run_train_shapley("runs/vit_s", loaded, train, val)
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch

from ._guard import Interrupted
from .data import DataError, ImageDataset, ItemDataset, SceneDataset
from .distributed import DistContext

#: Files of a run folder.
SURROGATE_FILE = "surrogate.pt"
EXPLAINER_FILE = "explainer.pt"
RECORD_FILE = "record.json"
STAGES = ("surrogate", "explainer")

#: The paper's training augmentation (Covert et al. 2023, App. C.1: random resized
#: crops, horizontal and vertical flips, colour jitter of brightness, contrast,
#: saturation and hue), with the reference configuration's values, as keyword
#: arguments of :meth:`captum_vit.data.Preprocessing.train_transform`.
AUGMENT: Dict[str, Any] = dict(
    scale=(0.8, 1.0),
    ratio=(3 / 4, 4 / 3),
    hflip=0.5,
    vflip=0.5,
    color_jitter=(0.2, 0.2, 0.1, 0.1),
    color_jitter_prob=0.8,
)

#: Per-stage defaults of the options left at None (those of
#: :func:`~captum_vit.shapley.train_surrogate` and
#: :func:`~captum_vit.shapley.train_explainer`; learning rates: the paper's).
STAGE_DEFAULTS: Dict[str, Dict[str, Any]] = {
    "surrogate": dict(epochs=5.0, lr=1e-5, subsets=1),
    "explainer": dict(epochs=10.0, lr=1e-4, subsets=32),
}

#: Embedded training scenes generated when no image folder is given.
DEFAULT_SCENES = 8000
#: Held-out validation images (at most a tenth of a folder).
DEFAULT_VAL = 256


@dataclass
class StageOptions:
    """Hyper-parameters of the two stages (None: the stage's default).

    Attributes:
        stage: ``"surrogate"``, ``"explainer"`` or ``"all"``.
        epochs: Passes over the data (default 5 for the surrogate, 10 for the
            explainer).
        max_steps: Cap on optimiser steps.
        batch_size: Images per step over all processes (paper: 64).
        micro_batch_size: Images per forward/backward pass per process (gradient
            accumulation).
        lr: Peak learning rate (default: the paper's 1e-5 surrogate, 1e-4 explainer).
        subsets: Coalitions per image per step (default 1 surrogate, 32 explainer).
        weight_decay: AdamW weight decay.
        warmup: Fraction of steps of linear warm-up.
        grad_clip: Gradient-norm clipping (0 disables).
        mask_mode: How the surrogate holds patches out while it is fine-tuned
            (``"attention"``, the paper's, or ``"drop"``).
        shared_blocks: Leading blocks the explainer keeps frozen and shares with
            the surrogate (0: the paper's setting).
        seed: Seed of data order, augmentation, subsets, held-out images, scenes.
        save_every: Steps between validation and step checkpoints (default: one
            pass over the data).
        amp: ``"bf16"`` or ``"fp16"`` autocast (fp16 on CUDA only).
        workers: DataLoader worker processes per process.
        half: Store the final weights as float16 (half the size, as shipped).
        show_progress: Progress bars on rank 0.
        keep_checkpoints: Step checkpoints kept per stage (the newest N; the
            newest holds the best-validation weights); when a stage ends the
            newest is cut down to its final weights, and 0 removes them all.
    """

    stage: str = "all"
    epochs: Optional[float] = None
    max_steps: Optional[int] = None
    batch_size: int = 64
    micro_batch_size: Optional[int] = None
    lr: Optional[float] = None
    subsets: Optional[int] = None
    weight_decay: float = 0.01
    warmup: float = 0.05
    grad_clip: float = 1.0
    mask_mode: str = "attention"
    shared_blocks: int = 0
    seed: int = 0
    save_every: Optional[int] = None
    amp: Optional[str] = None
    workers: int = 0
    half: bool = False
    show_progress: bool = True
    keep_checkpoints: int = 1

    def stages(self) -> Tuple[str, ...]:
        """The stages to run, in order."""
        return STAGES if self.stage == "all" else (self.stage,)

    def resolved(self, stage: str) -> Dict[str, Any]:
        """The settings of ``stage``, defaults filled in."""
        out = asdict(self)
        for k, v in STAGE_DEFAULTS[stage].items():
            if out[k] is None:
                out[k] = v
        return out


# ------------------------------------------------------------------ checks
def check_trainable(loaded: Any) -> None:
    """Raise a one-line ``ValueError`` unless ViT Shapley can be trained for the
    model: a token ViT with a classifier head, at least one prefix token (for
    ``v(0)``), token dropping or attention masking."""
    from .vit import ATTENTION_MASK, CLASS_HEAD, TOKEN_DROP, ViTAdapter

    try:
        adapter = ViTAdapter(loaded.model)
        adapter.require(CLASS_HEAD, "ViT Shapley")
        adapter.require(ATTENTION_MASK, "ViT Shapley")
        adapter.require(TOKEN_DROP, "ViT Shapley")
    except TypeError as exc:
        raise ValueError(f"--model {loaded.name}: {exc}") from None
    if adapter.num_prefix_tokens < 1:
        raise ValueError(
            f"--model {loaded.name}: ViT Shapley needs a prefix token (CLS or "
            "register) so that the empty coalition v(0) is defined"
        )


# ------------------------------------------------------------------ data
def training_data(
    loaded: Any,
    data: Optional[Union[str, Path]] = None,
    n: Optional[int] = None,
    n_val: Optional[int] = None,
    seed: int = 0,
    augment: bool = True,
) -> Tuple[ItemDataset, Optional[ItemDataset]]:
    """The training and validation images of a run.

    Args:
        loaded: The :class:`~captum_vit.models.LoadedModel` (its preprocessing).
        data: An image folder (an ImageFolder tree or a flat folder; labels are not
            needed), or None for the embedded Fashion-MNIST *training-split* scenes.
        n: Scenes to generate (default :data:`DEFAULT_SCENES`), or a seeded subset
            of the folder (default: all of it).
        n_val: Held-out validation images: other scenes (default
            :data:`DEFAULT_VAL`), or images of the folder left out of training
            (default: ``min(256, images // 10)``); 0 for none.
        seed: Seed of the scenes, of the subset and of the held-out choice.
        augment: Training images through :data:`AUGMENT`.

    Returns:
        ``(train, val)``; ``val`` is None with ``n_val=0``.

    Raises:
        DataError: a missing or empty folder, or more held-out images than the data
            allows (one line).
    """
    pre = loaded.preprocessing
    transform = pre.train_transform(**AUGMENT) if augment else None
    if data is None:
        default = loaded.source == "default" and pre.input_size[0] == pre.input_size[1]
        size = pre.input_size[0] if default else 64
        kw = dict(default_model=default, split="train", image_size=size)
        train = SceneDataset(
            n or DEFAULT_SCENES, pre, seed=seed, transform=transform, **kw
        )
        n_val = DEFAULT_VAL if n_val is None else n_val
        val = SceneDataset(n_val, pre, seed=seed + 1, **kw) if n_val else None
        return train, val
    folder = ImageDataset.from_folder(data, pre)
    if n is not None:
        folder = folder.subset(n, seed)
    if n_val is None:
        n_val = min(DEFAULT_VAL, len(folder) // 10)
    if n_val >= len(folder):
        raise DataError(
            f"--val-n {n_val}: the data has {len(folder)} image(s); at least one must "
            "remain for training"
        )
    train, val = folder.holdout(n_val, seed) if n_val else (folder, None)
    return train.with_transform(transform), val


# ------------------------------------------------------------------ running
def _file_digest(path: Path) -> str:
    from .models import file_digest

    return file_digest(path)[:16]


def run_train_shapley(
    out: Union[str, Path],
    loaded: Any,
    train: ItemDataset,
    val: Optional[ItemDataset] = None,
    options: Optional[StageOptions] = None,
    ctx: Optional[DistContext] = None,
    augment: bool = True,
) -> Dict[str, Any]:
    """Train the surrogate and/or the explainer of ``loaded`` into the run folder.

    Args:
        out: The run folder (created; every process must see it).
        loaded: The classifier, a :class:`~captum_vit.models.LoadedModel` on this
            process's device.
        train: Training images (see :func:`training_data`).
        val: Validation images, or None.
        options: The stages and their hyper-parameters.
        ctx: This process's :class:`~captum_vit.distributed.DistContext` (default:
            one process).
        augment: Whether ``train`` is augmented (recorded with the settings).

    Returns:
        The run's record (also written to ``out/record.json`` by rank 0).

    Raises:
        ValueError: a checkpoint written with other settings, an explainer stage
            without ``surrogate.pt``, or a surrogate made for another classifier
            (one line each).
    """
    from .shapley import (
        ShapleyExplainer,
        classifier_digest,
        load_surrogate,
        save_explainer,
        save_surrogate,
        train_explainer,
        train_surrogate,
    )
    from .shapley._utils import seeded

    opts = options or StageOptions()
    ctx = ctx or DistContext(device=loaded.device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    record_path = out / RECORD_FILE
    # the classifier only: a ViT Shapley pair already attached to it (the default's
    # shipped one) plays no part in training a new pair
    model_desc = {k: v for k, v in loaded.describe().items() if k != "shapley"}
    record: Dict[str, Any] = {}
    if record_path.is_file():
        try:
            record = json.loads(record_path.read_text())
        except ValueError:
            record = {}
    record.update(
        classifier={  # how to load it again (benchmarks/shapley_accuracy.py)
            "model": loaded.name,
            "checkpoint": loaded.checkpoint,
            "weights": loaded.weights,
        },
        model=model_desc,
        data=train.describe(),
        validation=val.describe() if val is not None else None,
        augment=augment,
    )
    common = dict(
        model=json.dumps(model_desc, sort_keys=True),
        data=json.dumps(train.describe(), sort_keys=True),
        validation=json.dumps(val.describe() if val is not None else None),
        augment=augment,
    )
    device = ctx.device
    sur_path = out / SURROGATE_FILE
    for stage in opts.stages():
        o = opts.resolved(stage)
        kw = dict(
            epochs=o["epochs"],
            batch_size=o["batch_size"],
            lr=o["lr"],
            weight_decay=o["weight_decay"],
            warmup=o["warmup"],
            grad_clip=o["grad_clip"] or None,
            seed=o["seed"],
            checkpoint=out / f"{stage}_ckpt.pt",
            max_steps=o["max_steps"],
            save_every=o["save_every"],
            micro_batch_size=o["micro_batch_size"],
            amp=o["amp"],
            workers=o["workers"],
            ctx=ctx,
            show_progress=o["show_progress"],
            keep_checkpoints=o["keep_checkpoints"],
            device=device,
        )
        t0 = time.perf_counter()
        if stage == "surrogate":
            result = train_surrogate(
                loaded.model,
                train,
                val,
                subsets_per_image=o["subsets"],
                mode=o["mask_mode"],
                settings=dict(common),
                **kw,
            )
            if ctx.is_main:
                save_surrogate(
                    result.model,
                    sur_path,
                    half=o["half"],
                    metadata={"history": result.history, "settings": _jsonable(o)},
                    classifier=loaded.model,
                )
        else:
            if not sur_path.is_file():
                raise ValueError(
                    f"--stage explainer: no {sur_path} (run --stage surrogate first)"
                )
            surrogate = load_surrogate(sur_path, loaded.model, device=device)
            with seeded(o["seed"]):  # the new head's initial weights
                explainer = ShapleyExplainer.from_surrogate(
                    surrogate, shared_blocks=o["shared_blocks"]
                )
            try:
                result = train_explainer(
                    explainer,
                    surrogate,
                    train,
                    val,
                    num_subsets=o["subsets"],
                    settings=dict(common, surrogate=classifier_digest(surrogate)),
                    **kw,
                )
            except Interrupted as exc:
                raise Interrupted(
                    f"{exc} (the surrogate stage is finished: {sur_path})"
                ) from None
            if ctx.is_main:
                save_explainer(
                    result.model,
                    out / EXPLAINER_FILE,
                    half=o["half"],
                    metadata={"history": result.history, "settings": _jsonable(o)},
                    surrogate=surrogate,
                )
        ctx.barrier()  # the weights are on disk before any process reads them
        seconds = result.history["seconds"][-1] if result.history["seconds"] else 0.0
        steps = result.history["step"][-1] if result.history["step"] else 0
        record[stage] = {
            "settings": _jsonable(o),
            "history": result.history,
            "processes": ctx.world_size,
            "wall_s": time.perf_counter() - t0,
            "train_s": seconds,
            "images_per_s": steps * o["batch_size"] / seconds if seconds else None,
        }
        if ctx.is_main:
            record_path.write_text(json.dumps(record, indent=1))
    return record


def _jsonable(options: Dict[str, Any]) -> Dict[str, Any]:
    return {
        k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v))
        for k, v in options.items()
    }


# ------------------------------------------------------------------ using a run
def attach_shapley(
    loaded: Any, run: Union[str, Path], device: Union[str, torch.device, None] = None
) -> None:
    """Make a run's surrogate and explainer the loaded model's ViT Shapley parts.

    They go into ``loaded.extras`` under ``shapley_surrogate`` and
    ``shapley_explainer`` (replacing the shipped ones of the default model), and the
    files' digest into ``loaded.shapley`` (so records of other runs are not reused).

    Args:
        loaded: A :class:`~captum_vit.models.LoadedModel`.
        run: A run folder of ``captum-vit train-shapley``.
        device: Where to put both (default: the model's device).

    Raises:
        ValueError: missing files, a surrogate fine-tuned from another classifier, an
            explainer for another patch grid or surrogate (one line, naming
            ``--shapley``).
    """
    from .shapley import load_explainer, load_surrogate

    run = Path(run)
    device = loaded.device if device is None else device
    paths = (run / SURROGATE_FILE, run / EXPLAINER_FILE)
    for path in paths:
        if not path.is_file():
            raise ValueError(
                f"--shapley {run}: no {path.name} (train it with `captum-vit "
                f"train-shapley --out {run}`)"
            )
    try:
        surrogate = load_surrogate(paths[0], loaded.model, device=device)
        explainer = load_explainer(paths[1], surrogate, device=device)
    except (TypeError, ValueError) as exc:
        hint = ""
        if "another classifier" in str(exc):
            hint = "; load the model it was trained for (--model, --checkpoint)"
        raise ValueError(f"--shapley {run}: {exc}{hint}") from None
    loaded.extras = dict(
        loaded.extras, shapley_surrogate=surrogate, shapley_explainer=explainer
    )
    loaded.shapley = "+".join(_file_digest(p) for p in paths)


__all__ = [
    "AUGMENT",
    "DEFAULT_SCENES",
    "DEFAULT_VAL",
    "EXPLAINER_FILE",
    "RECORD_FILE",
    "STAGES",
    "STAGE_DEFAULTS",
    "SURROGATE_FILE",
    "StageOptions",
    "attach_shapley",
    "check_trainable",
    "run_train_shapley",
    "training_data",
]
