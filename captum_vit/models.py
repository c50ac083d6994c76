"""Model loading shared by every command: ``--model`` and ``--checkpoint``.

:func:`load_model` turns a model name into a ready :class:`LoadedModel` (model in eval
mode on its device, class names, the model's :class:`~captum_vit.data.Preprocessing`):

- ``default``: the embedded Fashion-MNIST-scenes ViT (with its shipped ViT Shapley
  parts, only while its shipped weights are used);
- a timm name (``vit_base_patch16_224``): ``timm.create_model``;
- ``hf:ID_OR_DIR``: ``transformers.AutoModelForImageClassification`` from a hub id or
  a local ``save_pretrained`` folder, preprocessing from its image processor
  (``preprocessor_config.json``; without one, the defaults of the image processor
  transformers names for the model type, with a warning saying so; a malformed one
  is refused);
- ``torchvision:NAME``: ``torchvision.models.get_model``, preprocessing from the
  weights' transforms (ImageNet defaults otherwise).

Image–text models (issue 30) load as a :class:`~captum_vit.ZeroShotClassifier` over
class names or prompts (:class:`PromptSpec`: ``--classes``, ``--prompts``,
``--template``, or an ImageFolder's folder names): ``openclip:ARCH`` (an OpenCLIP
architecture, with ``--checkpoint`` or ``--random-weights``; its BPE or Hugging Face
tokenizer from ``open_clip.get_tokenizer``), ``hf:ID_OR_DIR`` of a ``CLIPModel`` or
``SiglipModel`` (its tokenizer from the same folder), and ``default`` with prompts (the
embedded image–text model).

Weights come from ``--checkpoint PATH`` (:func:`read_checkpoint`: a plain
``state_dict``, timm training checkpoints with ``state_dict`` / ``state_dict_ema`` /
``model`` keys, ``module.`` prefixes, ``.safetensors``; always ``weights_only=True``),
``random_weights=True`` (seeded with :data:`RANDOM_WEIGHTS_SEED`), or the library's
pretrained weights (looked up in the local
cache first; without network the call fails at once with a one-line
:class:`ModelError` instead of retrying downloads). A checkpoint whose classifier head
has another number of classes than the architecture's default builds the model with
the checkpoint's number. Every problem is one line: missing file, not a checkpoint,
keys that do not fit (counts and at most five names). ``quiet=True`` (``--quiet``)
hides the download and "Loading weights" bars of transformers, huggingface_hub and
torchvision for the call.

Examples::

    >>> from captum_vit.models import load_model
    >>> loaded = load_model("vit_small_patch16_224", checkpoint="my_vit.pth")
    >>> loaded.num_classes, loaded.input_size
    (37, (224, 224))
    >>> x = loaded.preprocessing(read_image("cat.jpg"))[None]
    >>> logits = loaded.model(x)
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import math
import socket
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union
from urllib.parse import urlparse

import torch
import torch.nn as nn
from torch import Tensor

from .data import Preprocessing

#: ImageNet normalisation (timm / torchvision defaults).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Seed of every random-weight model (the same weights on every process and run).
RANDOM_WEIGHTS_SEED = 0
#: The file a Hugging Face image processor is saved in (``save_pretrained``).
HF_PROCESSOR_FILE = "preprocessor_config.json"

_EMA_KEYS = ("state_dict_ema", "model_ema", "ema")
_PLAIN_KEYS = ("state_dict", "model", "module", "net", "weights")
_PREFIXES = ("module.", "_orig_mod.")


class ModelError(ValueError):
    """A model or checkpoint problem, stated in one line."""


@dataclass
class LoadedModel:
    """A model with what the commands need around it.

    Attributes:
        model: The ``nn.Module`` in eval mode on its device.
        name: The ``--model`` string it was loaded from.
        source: ``"default"``, ``"timm"``, ``"hf"`` or ``"torchvision"``; for
            image-text models (a ``ZeroShotClassifier``): ``"openclip"``,
            ``"hf-image-text"`` or ``"default-image-text"``.
        class_names: Name of every output class.
        preprocessing: The model's input pipeline.
        checkpoint: The checkpoint file, if any.
        weights: ``"shipped"`` (the embedded default's), ``"pretrained"``,
            ``"checkpoint"`` or ``"random"``.
        extras: Trained parts that methods can use (the default model's ViT Shapley
            explainer and surrogate, only with its shipped weights, or those of a
            ``captum-vit train-shapley`` run attached with
            :func:`captum_vit.train_shapley.attach_shapley`).
        checkpoint_digest: SHA-256 of the checkpoint file, if any (for the
            embedded default without one: of its shipped weights file).
        shapley: Digest of the ViT Shapley surrogate and explainer files in
            ``extras`` (the shipped pair or an attached run), if any.
    """

    model: nn.Module
    name: str
    source: str
    class_names: List[str]
    preprocessing: Preprocessing
    checkpoint: Optional[str] = None
    weights: str = "random"
    extras: Dict[str, Any] = field(default_factory=dict)
    checkpoint_digest: Optional[str] = None
    shapley: Optional[str] = None

    @property
    def num_classes(self) -> int:
        """Number of output classes."""
        return len(self.class_names)

    @property
    def input_size(self) -> Tuple[int, int]:
        """(H, W) of the model's input (from its preprocessing)."""
        return self.preprocessing.input_size

    @property
    def takes_scenes(self) -> bool:
        """True for the embedded default model at 64 px: the embedded scenes go
        through ``zoo.preprocess`` unresized (``SceneDataset(default_model=...)``)."""
        default = self.source in ("default", "default-image-text")
        return default and self.input_size == (64, 64)

    @property
    def device(self) -> torch.device:
        """The device of the model's parameters."""
        p = next(self.model.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def normalise(self, images01: Tensor) -> Tensor:
        """Normalise (B, 3, H, W) images in [0, 1] for the model."""
        return self.preprocessing.normalise(images01)

    def describe(self) -> Dict[str, Any]:
        """What identifies the model's numbers (stored with the records of a run)."""
        out = {
            "model": self.name,
            "weights": self.weights,
            "checkpoint_sha256": self.checkpoint_digest,
            "num_classes": self.num_classes,
        }
        if self.shapley is not None:  # only then: older records stay resumable
            out["shapley"] = self.shapley
        prompts = getattr(self.model, "prompts", None)
        if self.source in IMAGE_TEXT_SOURCES and isinstance(prompts, list):
            out["prompts"] = list(prompts)  # zero-shot: the classes are the prompts
        return out


def weights_label(described: Dict[str, Any]) -> str:
    """What a model's weights are, in words, from :meth:`LoadedModel.describe`.

    ``"random weights (seed 0)"``, ``"shipped weights"``, ``"checkpoint weights"``,
    ``"pretrained weights"``; the weights of a local Hugging Face folder are that
    folder's (they may be random, fine-tuned or downloaded: nothing says which).

    Args:
        described: The ``describe()`` dict of a model (as stored with the records of
            a run).

    Returns:
        The label, e.g. for a results table's caption.
    """
    weights = described.get("weights")
    if weights == "random":
        return f"random weights (seed {RANDOM_WEIGHTS_SEED})"
    spec = str(described.get("model", ""))
    if weights == "pretrained" and spec.startswith("hf:") and Path(spec[3:]).is_dir():
        return f"the weights saved in {spec[3:]}"
    return f"{weights} weights"


# ----------------------------------------------------------------- checkpoints
def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, dict)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    )


def _strip_prefixes(state: Dict[str, Tensor]) -> Dict[str, Tensor]:
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


def read_checkpoint(
    path: Union[str, Path], use_ema: bool = False
) -> Tuple[Dict[str, Tensor], Dict[str, Any]]:
    """Read the weights of a checkpoint file, whatever the usual layout.

    Accepts ``torch.save(model.state_dict(), p)``, timm training checkpoints (a dict
    with ``state_dict`` and optionally ``state_dict_ema``, ``args``, ``epoch``, ...),
    dicts under ``model`` / ``module``, the embedded zoo format (``config`` +
    ``state_dict``) and ``.safetensors`` files. ``module.`` (DDP) and ``_orig_mod.``
    (``torch.compile``) prefixes are removed. Loading always uses
    ``weights_only=True`` (``argparse.Namespace``, which timm stores as ``args``, is
    the one allowed non-tensor class).

    Args:
        path: The checkpoint file.
        use_ema: Prefer the EMA weights (``state_dict_ema``) when both are present.

    Returns:
        ``(state_dict, meta)``: the tensors, and the other top-level entries of the
        file (e.g. ``config`` of the zoo format, ``arch`` of timm checkpoints).

    Raises:
        ModelError: missing file, not a checkpoint, or no weights in it (one line).

    Examples::

        >>> state, meta = read_checkpoint("train/model_best.pth.tar", use_ema=True)
    """
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"--checkpoint {str(p)!r}: no such file")
    if p.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file

            return _strip_prefixes(dict(load_file(str(p)))), {}
        except Exception as exc:
            raise ModelError(
                f"--checkpoint {str(p)!r}: not a readable .safetensors file "
                f"({_first_line(exc)})"
            ) from exc
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        msg = _first_line(exc)
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise ModelError(
                f"--checkpoint {str(p)!r}: holds objects other than tensors, which "
                "are not loaded (weights_only=True); save model.state_dict() instead"
            ) from exc
        raise ModelError(
            f"--checkpoint {str(p)!r}: not a PyTorch checkpoint ({msg})"
        ) from exc
    if _is_state_dict(obj):
        return _strip_prefixes(obj), {}
    if isinstance(obj, dict):
        order = _EMA_KEYS + _PLAIN_KEYS if use_ema else _PLAIN_KEYS + _EMA_KEYS
        for key in order:
            if _is_state_dict(obj.get(key)):
                meta = {k: v for k, v in obj.items() if not _is_state_dict(v)}
                return _strip_prefixes(obj[key]), meta
    kind = type(obj).__name__
    keys = f" with keys {sorted(map(str, obj))[:5]}" if isinstance(obj, dict) else ""
    raise ModelError(
        f"--checkpoint {str(p)!r}: no weights found (a {kind}{keys}; expected a "
        "state_dict or a dict with 'state_dict', 'state_dict_ema' or 'model')"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def file_digest(path: Union[str, Path]) -> str:
    """SHA-256 of a file (hex), read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def classifier_name(model: nn.Module) -> Optional[str]:
    """Module name of the classifier head (the layer whose output are the logits).

    timm models name it through ``get_classifier()``; otherwise the last
    ``nn.Linear`` of the module tree.
    """
    head = None
    if hasattr(model, "get_classifier"):
        try:
            head = model.get_classifier()
        except (AttributeError, NotImplementedError, TypeError):  # pragma: no cover
            head = None  # odd custom models: the last nn.Linear below
    if isinstance(head, nn.Linear):
        for name, mod in model.named_modules():
            if mod is head:
                return name
    last = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            last = name
    return last


def checkpoint_num_classes(model: nn.Module, state: Dict[str, Tensor]) -> Optional[int]:
    """Number of classes of the checkpoint's head, if it has the model's head."""
    name = classifier_name(model)
    if name is None:
        return None
    w = state.get(f"{name}.weight")
    return int(w.shape[0]) if isinstance(w, Tensor) and w.dim() == 2 else None


def load_weights(model: nn.Module, state: Dict[str, Tensor], what: str) -> None:
    """``model.load_state_dict(state)`` with a one-line error when keys do not fit.

    Raises:
        ModelError: counts of missing, unexpected and reshaped keys and at most five
            of their names.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shaped = [
        f"{k} (checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shaped:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected")
        if shaped:
            parts.append(f"{len(shaped)} of another shape")
        names = (shaped + missing + unexpected)[:5]
        raise ModelError(
            f"{what}: keys do not fit the model ({', '.join(parts)}; e.g. "
            f"{'; '.join(names)})"
        )
    model.load_state_dict(state, strict=True)


# ----------------------------------------------------------------- network
def _reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``host`` can be opened (one quick try)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """Make huggingface_hub use its local cache only (no requests, no retries)."""
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - timm depends on huggingface_hub
        yield
        return
    old = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old


def _offline_message(name: str, host: str, what: str = "weights") -> str:
    if what == "config":
        return (
            f"--model {name}: its config is not in the local cache and could not be "
            f"fetched ({host} is unreachable); save the model with save_pretrained() "
            "on a machine with network and pass --model hf:FOLDER"
        )
    return (
        f"--model {name}: pretrained weights are not in the local cache and could "
        f"not be fetched ({host} is unreachable); pass --checkpoint PATH with saved "
        "weights (a state_dict, timm checkpoint or .safetensors file), or "
        "--random-weights"
    )


def _cached_then_online(
    name: str, host: str, build: Callable[[bool], Any], what: str = "weights"
) -> Any:
    """``build(offline=True)`` (local cache only); if that fails and ``host`` is
    reachable, ``build(offline=False)``; otherwise a one-line :class:`ModelError`."""
    try:
        return build(True)
    except OSError:  # not in the cache (transformers, huggingface_hub, torch.hub)
        pass
    if not _reachable(host):
        raise ModelError(_offline_message(name, host, what))
    try:
        return build(False)
    except Exception as exc:
        raise ModelError(
            f"--model {name}: could not fetch pretrained weights ({_first_line(exc)}); "
            "pass --checkpoint PATH or --random-weights"
        ) from exc


@contextlib.contextmanager
def _quiet_loading(quiet: bool, transformers: bool) -> Iterator[None]:
    """Hide huggingface_hub's download bars (and transformers' "Loading weights"
    bar when ``transformers``) inside the block when ``quiet``; their global
    switches are restored on exit, also when the block raises."""
    if not quiet:
        yield
        return
    hub = importlib.import_module("huggingface_hub.utils.tqdm")
    hub_states = dict(hub.progress_bar_states)
    tf_logging = None
    if transformers:
        try:
            from transformers.utils import logging as tf_logging
        except ImportError:  # _load_hf refuses with its one line
            tf_logging = None
    tf_enabled = tf_logging is not None and tf_logging.is_progress_bar_enabled()
    try:
        with warnings.catch_warnings():
            # HF_HUB_DISABLE_PROGRESS_BARS=0 keeps the bars on (it has priority)
            warnings.simplefilter("ignore")
            if tf_logging is not None:
                tf_logging.disable_progress_bar()  # also disables huggingface_hub's
            else:
                hub.disable_progress_bars()
        yield
    finally:
        if tf_enabled:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tf_logging.enable_progress_bar()
        hub.progress_bar_states.clear()
        hub.progress_bar_states.update(hub_states)


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Random-weight models identical on every rank, without touching the caller's
    global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# ----------------------------------------------------------------- families
def _vit_architecture(state: Dict[str, Tensor]) -> Optional[Dict[str, int]]:
    """Blocks, width, patch size and patch count of a timm ViT state_dict (None if
    it is not one)."""
    proj, pos = state.get("patch_embed.proj.weight"), state.get("pos_embed")
    parts = (k.split(".") for k in state)
    blocks = {
        int(p[1]) for p in parts if p[0] == "blocks" and p[1:2] and p[1].isdigit()
    }
    if not isinstance(proj, Tensor) or proj.dim() != 4 or not blocks:
        return None
    arch = {"depth": max(blocks) + 1, "embed_dim": int(proj.shape[0])}
    arch["patch_size"] = int(proj.shape[-1])
    if isinstance(pos, Tensor) and pos.dim() == 3:
        arch["tokens"] = int(pos.shape[1])
    return arch


def _describe(arch: Dict[str, int]) -> str:
    text = f"{arch['depth']} blocks, width {arch['embed_dim']}, "
    text += f"{arch['patch_size']} px patches"
    return text + (f", {arch['tokens']} tokens" if "tokens" in arch else "")


def _check_default_architecture(
    state: Dict[str, Tensor], config: Dict[str, Any], checkpoint: Any
) -> None:
    """One line when a bare state_dict is a ViT of another architecture than the
    embedded default's (e.g. the 4-block default of earlier versions)."""
    arch = _vit_architecture(state)
    if arch is None:
        return  # not a ViT state_dict: load_weights reports the keys
    grid = int(config["image_size"]) // int(config["patch_size"])
    want = {
        "depth": int(config["depth"]),
        "embed_dim": int(config["embed_dim"]),
        "patch_size": int(config["patch_size"]),
        "tokens": grid * grid + 1,
    }
    if any(arch[k] != want[k] for k in arch):
        raise ModelError(
            f"--checkpoint {str(checkpoint)!r}: its architecture differs from the "
            f"embedded default model's ({_describe(arch)}; the default has "
            f"{_describe(want)}); pass a zoo-format file that carries its 'config' "
            "(as python -m captum_vit.zoo.train writes), or the timm --model it was "
            "built as"
        )


def _load_default(_name, checkpoint, random_weights, use_ema, quiet=False):
    from . import zoo

    shipped = torch.load(zoo.DEFAULT_WEIGHTS, map_location="cpu", weights_only=True)
    config = dict(shipped["config"])
    names = list(config.get("class_names", zoo.CLASS_NAMES))
    weights = "shipped"
    if checkpoint is not None:
        state, meta = read_checkpoint(checkpoint, use_ema)
        if isinstance(meta.get("config"), dict):  # the zoo's own format
            config = dict(meta["config"])
        else:  # a bare state_dict: it must be the default's architecture
            _check_default_architecture(state, config, checkpoint)
        model = zoo.build_model(config)
        k = checkpoint_num_classes(model, state)
        if k is not None and k != int(config["num_classes"]):
            config["num_classes"] = k
            model = zoo.build_model(config)
        load_weights(model, state, f"--checkpoint {checkpoint!r}")
        names = list(config.get("class_names", names))
        weights = "checkpoint"
    else:
        with _seeded(RANDOM_WEIGHTS_SEED):
            model = zoo.build_model(config)
        if random_weights:
            weights = "random"
        else:
            model.load_state_dict(shipped["state_dict"])
    if len(names) != int(config["num_classes"]):
        names = [f"class {i}" for i in range(int(config["num_classes"]))]
    image_size = int(config["image_size"])
    pre = Preprocessing.for_default((image_size, image_size))
    return model, names, pre, weights


def _timm_class_names(model: nn.Module) -> List[str]:
    n = int(model.num_classes)
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(model)
        if subset is not None:
            info = ImageNetInfo(subset)
            return [info.index_to_description(i) for i in range(n)]
    except (ImportError, KeyError, ValueError):  # older timm, unknown subset
        pass  # class names are a nicety: keep "class i"
    return [f"class {i}" for i in range(n)]


def _load_timm(name, checkpoint, random_weights, use_ema, quiet=False):
    import timm

    if not timm.is_model(name):
        raise ModelError(
            f"unknown model {name!r}: use 'default', a timm model name (see "
            "timm.list_models()), hf:ID_OR_DIR or torchvision:NAME"
        )
    weights = "random"
    if checkpoint is not None:
        state, _ = read_checkpoint(checkpoint, use_ema)
        with _seeded(RANDOM_WEIGHTS_SEED):
            model = timm.create_model(name, pretrained=False)
        k = checkpoint_num_classes(model, state)
        if k is not None and k != int(model.num_classes):
            with _seeded(RANDOM_WEIGHTS_SEED):
                model = timm.create_model(name, pretrained=False, num_classes=k)
        load_weights(model, state, f"--checkpoint {checkpoint!r}")
        weights = "checkpoint"
    elif random_weights:
        with _seeded(RANDOM_WEIGHTS_SEED):
            model = timm.create_model(name, pretrained=False)
    else:
        cfg = timm.models.get_pretrained_cfg(name)
        if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
            raise ModelError(
                f"--model {name}: timm has no pretrained weights for it; pass "
                "--checkpoint PATH or --random-weights"
            )
        host = "huggingface.co" if cfg.hf_hub_id else (urlparse(cfg.url).hostname or "")

        def build(offline: bool) -> nn.Module:
            ctx = _hub_offline() if offline else contextlib.nullcontext()
            with ctx:
                return timm.create_model(name, pretrained=True)

        model = _cached_then_online(name, host, build)
        weights = "pretrained"
    return model, _timm_class_names(model), Preprocessing.for_timm(model), weights


def _hf_processor_file(ref: str, local: bool) -> Tuple[Optional[Path], str]:
    """The ``preprocessor_config.json`` of ``hf:ref``: ``(path, "")``, or ``(None,
    why there is none)``.

    A local folder is looked into; for a hub id the local cache is read first, then
    the file is fetched when huggingface.co is reachable (loading the model does not
    fetch it).

    Raises:
        ModelError: the hub answered with another error than "no such file".
    """
    if local:
        path = Path(ref) / HF_PROCESSOR_FILE
        if path.is_file():
            return path, ""
        return None, f"the folder has no {HF_PROCESSOR_FILE}"
    from huggingface_hub import errors, hf_hub_download, try_to_load_from_cache

    missing = f"the hub repository {ref} has no {HF_PROCESSOR_FILE}"
    cached = try_to_load_from_cache(ref, HF_PROCESSOR_FILE)
    if isinstance(cached, str):
        return Path(cached), ""
    if cached is not None:  # the cache recorded that the repository has no such file
        return None, missing
    if not _reachable("huggingface.co"):
        return None, (
            f"its {HF_PROCESSOR_FILE} is not in the local cache and huggingface.co "
            "is unreachable"
        )
    not_there = getattr(errors, "RemoteEntryNotFoundError", errors.EntryNotFoundError)
    try:
        return Path(hf_hub_download(ref, HF_PROCESSOR_FILE)), ""
    except not_there:
        return None, missing
    except OSError as exc:  # HTTP and connection errors
        raise ModelError(
            f"--model hf:{ref}: could not fetch its {HF_PROCESSOR_FILE} "
            f"({_first_line(exc)})"
        ) from exc


def _hf_default_processor(model_type: str) -> Tuple[Optional[Any], str]:
    """transformers' image processor for ``model_type`` with its default arguments
    (what ``AutoImageProcessor`` builds from an empty config): ``(processor, class
    name)``, or ``(None, "")`` when transformers names none for the model type."""
    from transformers.models.auto import image_processing_auto as auto

    names = auto.IMAGE_PROCESSOR_MAPPING_NAMES.get(model_type)
    if isinstance(names, dict):  # transformers 5: one class per backend
        candidates = [names.get("torchvision"), names.get("pil")]
    elif isinstance(names, (tuple, list)):  # transformers 4: (slow, fast)
        candidates = list(names)
    else:
        candidates = [names]
    for name in candidates:
        cls = auto.get_image_processor_class_from_name(name) if name else None
        if cls is None:
            continue
        try:
            return cls(), name
        except ImportError:  # the backend of this variant is not installed
            continue
    return None, ""


def _sizes(proc: Any, default: Tuple[int, int]) -> Tuple[Any, Tuple[int, int]]:
    """(resize, crop) of an image processor; ``default`` where it sets none."""

    def get(obj: Any, key: str) -> Any:
        if obj is None:
            return None
        if isinstance(obj, dict):
            return obj.get(key)
        return getattr(obj, key, None)

    psize = getattr(proc, "size", None)
    resize: Union[int, Tuple[int, int]] = default
    if get(psize, "height") and get(psize, "width"):
        resize = (int(get(psize, "height")), int(get(psize, "width")))
    elif get(psize, "shortest_edge"):
        resize = int(get(psize, "shortest_edge"))
    crop = resize if isinstance(resize, tuple) else (resize, resize)
    csize = getattr(proc, "crop_size", None)
    if getattr(proc, "do_center_crop", False) and get(csize, "height"):
        crop = (int(get(csize, "height")), int(get(csize, "width")))
    return resize, crop


def _mean_std(proc: Any, where: str) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """The processor's normalisation, checked (finite numbers, positive std)."""
    if not getattr(proc, "do_normalize", True):
        return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    mean, std = getattr(proc, "image_mean", None), getattr(proc, "image_std", None)
    if isinstance(mean, (int, float)):
        mean = [mean] * 3
    if isinstance(std, (int, float)):
        std = [std] * 3
    ok = all(
        isinstance(v, (list, tuple))
        and len(v) > 0
        and all(isinstance(x, (int, float)) and math.isfinite(x) for x in v)
        for v in (mean, std)
    )
    if not ok or min(std) <= 0:
        raise ModelError(
            f"{where}: image_mean {mean!r} and image_std {std!r} are not finite "
            "numbers with a positive std"
        )
    return tuple(float(x) for x in mean), tuple(float(x) for x in std)


def _hf_preprocessing(ref: str, config: Any, local: bool) -> Preprocessing:
    """Preprocessing from the model's Hugging Face image processor.

    Without a ``preprocessor_config.json``, the defaults of the image processor that
    transformers names for the model type (``ViTImageProcessor``: mean = std = 0.5)
    at the config's image size, or ImageNet's mean and std when it names none; a
    ``UserWarning`` says which and why. A malformed file is a :class:`ModelError`.
    """
    size = getattr(config, "image_size", 224)
    size = (size, size) if isinstance(size, int) else tuple(size)
    spec = f"--model hf:{ref}"
    path, why = _hf_processor_file(ref, local)
    resamples = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}
    if path is not None:
        from transformers import AutoImageProcessor

        where = f"{spec}: {path}"
        try:
            with _hub_offline():
                proc = AutoImageProcessor.from_pretrained(
                    str(path.parent), local_files_only=True
                )
            interp = resamples.get(int(getattr(proc, "resample", 2) or 2), "bilinear")
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ModelError(
                f"{where}: not a valid image processor config ({_first_line(exc)})"
            ) from exc
        mean, std = _mean_std(proc, where)
        resize, crop = _sizes(proc, size)
        return Preprocessing.resize_crop(resize, crop, mean, std, interp)
    model_type = str(getattr(config, "model_type", ""))
    proc, name = _hf_default_processor(model_type)
    if proc is None:
        warnings.warn(
            f"{spec}: {why}, and transformers names no image processor for model "
            f"type {model_type!r}; using ImageNet's mean {IMAGENET_MEAN} and std "
            f"{IMAGENET_STD} (timm's and torchvision's default) at "
            f"{size[0]}x{size[1]}; save the model's image processor with "
            "save_pretrained() to use its own",
            UserWarning,
            stacklevel=4,
        )
        return Preprocessing.resize_crop(size, size, IMAGENET_MEAN, IMAGENET_STD)
    mean, std = _mean_std(proc, f"{spec}: {name}()")
    interp = resamples.get(int(getattr(proc, "resample", 2) or 2), "bilinear")
    resize, crop = _sizes(proc, size)
    if crop != size:  # the processor's default size is not this model's
        resize, crop = size, size
    shown = (
        f"{interp} resize of the shorter side to {resize}, centre crop "
        if isinstance(resize, int)
        else f"{interp} resize to "
    )
    warnings.warn(
        f"{spec}: {why}; using {name}'s defaults for model type {model_type!r}: "
        f"mean {mean}, std {std}, {shown}{crop[0]}x{crop[1]} "
        "(what transformers gives this model without the file); save the model's "
        "image processor with save_pretrained() to use its own",
        UserWarning,
        stacklevel=4,
    )
    return Preprocessing.resize_crop(resize, crop, mean, std, interp)


def _load_hf(ref, checkpoint, random_weights, use_ema, quiet=False):
    try:
        import transformers  # noqa: F401
        from transformers import AutoConfig, AutoModelForImageClassification
    except ImportError:
        raise ModelError(
            "--model hf:...: the transformers package is not installed "
            "(pip install transformers)"
        ) from None
    local = Path(ref).is_dir()
    spec = f"hf:{ref}"

    def get_config(offline: bool) -> Any:
        return AutoConfig.from_pretrained(ref, local_files_only=offline)

    if local:
        try:
            config = get_config(True)
        except Exception as exc:
            raise ModelError(
                f"--model {spec}: not a Hugging Face model folder ({_first_line(exc)})"
            ) from exc
    else:
        config = _cached_then_online(spec, "huggingface.co", get_config, "config")
    if getattr(config, "model_type", None) in HF_IMAGE_TEXT_TYPES:
        return _load_hf_image_text(
            ref, config, local, checkpoint, random_weights, use_ema
        )
    weights = "random"
    if checkpoint is not None:
        state, _ = read_checkpoint(checkpoint, use_ema)
        with _seeded(RANDOM_WEIGHTS_SEED):
            model = AutoModelForImageClassification.from_config(config)
        k = checkpoint_num_classes(model, state)
        if k is not None and k != int(config.num_labels):
            config.num_labels = k
            config.id2label = {i: f"class {i}" for i in range(k)}
            config.label2id = {v: i for i, v in config.id2label.items()}
            with _seeded(RANDOM_WEIGHTS_SEED):
                model = AutoModelForImageClassification.from_config(config)
        load_weights(model, state, f"--checkpoint {checkpoint!r}")
        weights = "checkpoint"
    elif random_weights:
        with _seeded(RANDOM_WEIGHTS_SEED):
            model = AutoModelForImageClassification.from_config(config)
    else:

        model = _hf_pretrained(
            spec, local, AutoModelForImageClassification.from_pretrained, ref
        )
        weights = "pretrained"
    cfg = model.config
    id2label = getattr(cfg, "id2label", None) or {}
    names = [str(id2label.get(i, f"class {i}")) for i in range(int(cfg.num_labels))]
    pre = _hf_preprocessing(ref, cfg, local)
    return model, names, pre, weights


def _load_torchvision(name, checkpoint, random_weights, use_ema, quiet=False):
    try:
        from torchvision import models as tvm
    except ImportError:  # pragma: no cover - torchvision ships with timm installs
        raise ModelError("--model torchvision:...: torchvision is not installed")
    spec = f"torchvision:{name}"
    if name not in tvm.list_models():
        raise ModelError(
            f"unknown model {spec!r}: see torchvision.models.list_models()"
        )
    try:
        default_weights = tvm.get_model_weights(name).DEFAULT
    except (ValueError, KeyError, AttributeError):  # a builder without weights
        default_weights = None
    weights = "random"
    if checkpoint is not None:
        state, _ = read_checkpoint(checkpoint, use_ema)
        with _seeded(RANDOM_WEIGHTS_SEED):
            model = tvm.get_model(name, weights=None)
        k = checkpoint_num_classes(model, state)
        head = classifier_name(model)
        own = model.state_dict().get(f"{head}.weight") if head else None
        if k is not None and own is not None and k != int(own.shape[0]):
            with _seeded(RANDOM_WEIGHTS_SEED):
                model = tvm.get_model(name, weights=None, num_classes=k)
        load_weights(model, state, f"--checkpoint {checkpoint!r}")
        weights = "checkpoint"
    elif random_weights:
        with _seeded(RANDOM_WEIGHTS_SEED):
            model = tvm.get_model(name, weights=None)
    else:
        if default_weights is None:
            raise ModelError(
                f"--model {spec}: torchvision has no pretrained weights for it; pass "
                "--checkpoint PATH or --random-weights"
            )
        url = default_weights.url
        cached = (
            Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
        )
        if not cached.is_file() and not _reachable(urlparse(url).hostname or ""):
            raise ModelError(_offline_message(spec, urlparse(url).hostname or url))
        try:
            model = tvm.get_model(name, weights=default_weights, progress=not quiet)
        except Exception as exc:
            raise ModelError(
                f"--model {spec}: could not fetch pretrained weights "
                f"({_first_line(exc)}); pass --checkpoint PATH or --random-weights"
            ) from exc
        weights = "pretrained"
    head = classifier_name(model)
    n = int(model.state_dict()[f"{head}.weight"].shape[0]) if head else 1000
    names = [f"class {i}" for i in range(n)]
    if default_weights is not None:
        cats = default_weights.meta.get("categories")
        if weights == "pretrained" and cats and len(cats) == n:
            names = list(cats)
        t = default_weights.transforms()
        interp = getattr(t, "interpolation", None)
        pre = Preprocessing.resize_crop(
            int(t.resize_size[0]),
            (int(t.crop_size[0]), int(t.crop_size[0])),
            t.mean,
            t.std,
            getattr(interp, "value", "bilinear"),
        )
    else:
        pre = Preprocessing.resize_crop(256, (224, 224), IMAGENET_MEAN, IMAGENET_STD)
    return model, names, pre, weights


def parse_model_spec(spec: str) -> Tuple[str, str]:
    """Split ``--model`` into ``(source, name)``: ``default``, ``timm``, ``hf``,
    ``torchvision`` or ``openclip``.

    Raises:
        ModelError: an empty name after a prefix.
    """
    if spec == "default":
        return "default", "default"
    for prefix in ("hf", "torchvision", "timm", "openclip"):
        if spec.startswith(prefix + ":"):
            name = spec[len(prefix) + 1 :]
            if not name:
                raise ModelError(f"--model {spec!r}: a name must follow '{prefix}:'")
            return prefix, name
    return "timm", spec


def load_model(
    spec: str = "default",
    checkpoint: Optional[Union[str, Path]] = None,
    *,
    random_weights: bool = False,
    use_ema: bool = False,
    device: Union[str, torch.device] = "cpu",
    quiet: bool = False,
    prompts: Optional["PromptSpec"] = None,
    folder_classes: Optional[List[str]] = None,
) -> LoadedModel:
    """Load a model by name with its weights and preprocessing.

    Args:
        spec: ``"default"``, a timm name, ``"hf:ID_OR_DIR"`` or
            ``"torchvision:NAME"`` (``"timm:NAME"`` also works).
        checkpoint: Weights file (see :func:`read_checkpoint`); the classifier's
            number of classes follows the checkpoint's head.
        random_weights: Random initial weights (seeded: the same on every process)
            instead of pretrained ones.
        use_ema: Prefer a checkpoint's EMA weights.
        device: Where to put the model.
        quiet: No progress bars while loading (transformers' "Loading weights",
            huggingface_hub's and torchvision's downloads); the libraries' global
            progress-bar switches are restored afterwards.
        prompts: Class names or prompts of an image–text model (``--classes``,
            ``--prompts``, ``--template``); it then loads as a
            :class:`~captum_vit.ZeroShotClassifier` (with ``"default"``: the
            embedded image–text model). A classifier refuses them.
        folder_classes: An ImageFolder's class names, the classes of an image–text
            model given no ``prompts`` (templated with ``"a photo of a {}."``).

    Returns:
        A :class:`LoadedModel` in eval mode on ``device``.

    Raises:
        ModelError: unknown model, unavailable weights (fails at once offline),
            unreadable or mismatching checkpoint; always one line.

    Examples::

        >>> loaded = load_model("test_vit", random_weights=True)
        >>> loaded.input_size
        (160, 160)
    """
    if checkpoint is not None and random_weights:
        raise ModelError("--checkpoint and --random-weights exclude each other")
    source, name = parse_model_spec(spec)
    loaders = {
        "default": _load_default,
        "timm": _load_timm,
        "hf": _load_hf,
        "torchvision": _load_torchvision,
        "openclip": _load_openclip,
    }
    if source == "default" and prompts is not None:
        source = "default-image-text"
        loaders[source] = _load_default_image_text
    with _quiet_loading(quiet, transformers=source == "hf"):
        model, names, pre, weights = loaders[source](
            name, checkpoint, random_weights, use_ema, quiet
        )
    if isinstance(model, ImageText):
        source = model.source
        model, names = _zero_shot(spec, model, prompts, folder_classes)
    elif prompts is not None:
        raise ModelError(
            f"--prompts/--classes: --model {spec} is a classifier; prompts apply to "
            "image-text models (openclip:ARCH, hf: CLIP or SigLIP, default)"
        )
    model = model.to(device).eval()
    loaded = LoadedModel(
        model=model,
        name=spec,
        source=source,
        class_names=list(names),
        preprocessing=pre,
        checkpoint=str(checkpoint) if checkpoint is not None else None,
        weights=weights,
        checkpoint_digest=file_digest(checkpoint) if checkpoint is not None else None,
    )
    if source == "default-image-text":
        from .zoo.image_text import DEFAULT_IMAGE_TEXT_WEIGHTS

        loaded.checkpoint_digest = file_digest(DEFAULT_IMAGE_TEXT_WEIGHTS)
    if source == "default" and checkpoint is None:
        from . import zoo

        # "shipped" names no version: the file's digest does, so that records of a
        # run on an earlier default (another architecture or training) are not
        # resumed as if they were this model's
        loaded.checkpoint_digest = file_digest(zoo.DEFAULT_WEIGHTS)
        if weights == "shipped":
            from .methods import default_model_extras

            # the shipped ViT Shapley parts belong to these exact weights only
            loaded.extras = default_model_extras(device)
            if loaded.extras:  # a retrained pair gives other vit-shapley numbers
                loaded.shapley = "+".join(
                    file_digest(p)[:16]
                    for p in (zoo.DEFAULT_SURROGATE, zoo.DEFAULT_EXPLAINER)
                )
    return loaded


# ------------------------------------------------------------ image-text models
#: ``--model`` sources whose models are :class:`~captum_vit.ZeroShotClassifier` s.
IMAGE_TEXT_SOURCES = ("openclip", "hf-image-text", "default-image-text")
#: Hugging Face ``model_type`` s loaded as image-text models.
HF_IMAGE_TEXT_TYPES = ("clip", "siglip")
#: The template of class names that come without one (folder names, --classes).
DEFAULT_TEMPLATE = "a photo of a {}."


@dataclass
class PromptSpec:
    """What an image-text model classifies: class names with a template, or whole
    prompts (``template=None``).

    Attributes:
        names: Class names or prompts, one per class.
        template: A string with one ``{}`` for the class name, or None.
    """

    names: List[str]
    template: Optional[str] = None


@dataclass
class ImageText:
    """An image-text model as a loader returns it, before its prompts are known."""

    model: nn.Module
    tokenizer: Any
    source: str


def _zero_shot(
    spec: str,
    loaded: ImageText,
    prompts: Optional[PromptSpec],
    folder_classes: Optional[List[str]],
) -> Tuple[nn.Module, List[str]]:
    from .vit import ZeroShotClassifier

    if prompts is None and folder_classes:
        prompts = PromptSpec(list(folder_classes), DEFAULT_TEMPLATE)
    if prompts is None:
        raise ModelError(
            f"--model {spec}: an image-text model needs the classes to score: give "
            "--classes, --prompts, or an ImageFolder --data (its folder names)"
        )
    try:
        zs = ZeroShotClassifier(
            loaded.model,
            prompts.names,
            template=prompts.template,
            tokenizer=loaded.tokenizer,
        )
    except (TypeError, ValueError) as exc:
        msg = _first_line(exc)
        for arg in ("prompts", "template"):
            if msg.startswith(arg + ":"):
                msg = f"--{arg}{msg[len(arg):]}"
        raise ModelError(msg) from exc
    return zs, list(zs.class_names)


def _openclip_preprocessing(model: nn.Module) -> Preprocessing:
    import open_clip

    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg.get("size", 224)
    size = (size, size) if isinstance(size, int) else tuple(size)
    mean, std = cfg.get("mean"), cfg.get("std")
    interp = str(cfg.get("interpolation", "bicubic"))
    resize: Union[int, Tuple[int, int]] = size
    if cfg.get("resize_mode", "shortest") == "shortest" and size[0] == size[1]:
        resize = size[0]
    return Preprocessing.resize_crop(resize, size, mean, std, interp)


def _load_openclip(name, checkpoint, random_weights, use_ema, quiet=False):
    try:
        import open_clip
    except ImportError:
        raise ModelError(
            "--model openclip:...: open_clip is not installed (pip install "
            "'captum-vit[clip]')"
        ) from None
    if name not in open_clip.list_models():
        raise ModelError(
            f"unknown model 'openclip:{name}': see open_clip.list_models()"
        )
    if checkpoint is None and not random_weights:
        raise ModelError(
            f"--model openclip:{name}: pass --checkpoint PATH with its weights (an "
            "open_clip checkpoint or state_dict), or --random-weights"
        )
    with _seeded(RANDOM_WEIGHTS_SEED):
        model = open_clip.create_model(name, pretrained=None)
    weights = "random"
    if checkpoint is not None:
        state, _ = read_checkpoint(checkpoint, use_ema)
        load_weights(model, state, f"--checkpoint {checkpoint!r}")
        weights = "checkpoint"
    try:
        with _hub_offline():
            tokenizer = open_clip.get_tokenizer(name)
    except Exception as exc:
        raise ModelError(
            f"--model openclip:{name}: its tokenizer is not available offline "
            f"({_first_line(exc)})"
        ) from exc
    pre = _openclip_preprocessing(model)
    return ImageText(model, tokenizer, "openclip"), [], pre, weights


def _hf_pretrained(
    spec: str, local: bool, from_pretrained: Callable[..., Any], ref: str
) -> nn.Module:
    """``from_pretrained(ref)``: from the folder ``ref`` when ``local`` (its failure
    one line naming --model), else from the Hugging Face cache, then online."""

    def build(offline: bool) -> nn.Module:
        return from_pretrained(ref, local_files_only=offline or local)

    if not local:
        return _cached_then_online(spec, "huggingface.co", build)
    try:
        return build(True)
    except Exception as exc:
        raise ModelError(
            f"--model {spec}: cannot load its weights ({_first_line(exc)}); "
            "pass --checkpoint PATH or --random-weights"
        ) from exc


class _VisionConfig:
    """The vision side of an image-text config, for :func:`_hf_preprocessing`."""

    def __init__(self, config: Any) -> None:
        self.model_type = config.model_type
        self.image_size = getattr(config.vision_config, "image_size", 224)


def _load_hf_image_text(ref, config, local, checkpoint, random_weights, use_ema):
    from transformers import AutoModel, AutoTokenizer

    spec = f"hf:{ref}"
    weights = "random"
    if checkpoint is not None or random_weights:
        with _seeded(RANDOM_WEIGHTS_SEED):
            model = AutoModel.from_config(config)
        if checkpoint is not None:
            state, _ = read_checkpoint(checkpoint, use_ema)
            load_weights(model, state, f"--checkpoint {checkpoint!r}")
            weights = "checkpoint"
    else:

        model = _hf_pretrained(spec, local, AutoModel.from_pretrained, ref)
        weights = "pretrained"

    def get_tokenizer(offline: bool) -> Any:
        return AutoTokenizer.from_pretrained(ref, local_files_only=offline or local)

    try:
        if local:
            tokenizer = get_tokenizer(True)
        else:
            tokenizer = _cached_then_online(spec, "huggingface.co", get_tokenizer)
    except (OSError, ValueError, TypeError) as exc:
        raise ModelError(
            f"--model {spec}: no tokenizer found with the model ({_first_line(exc)}); "
            "save its tokenizer or processor there with save_pretrained()"
        ) from exc
    pre = _hf_preprocessing(ref, _VisionConfig(config), local)
    return ImageText(model, tokenizer, "hf-image-text"), [], pre, weights


def _load_default_image_text(name, checkpoint, random_weights, use_ema, quiet=False):
    from .zoo.image_text import load_default_image_text

    if checkpoint is not None or random_weights:
        raise ModelError(
            "--model default with --prompts: the embedded image-text model uses its "
            "shipped weights (no --checkpoint or --random-weights)"
        )
    try:
        model = load_default_image_text()
    except FileNotFoundError as exc:
        raise ModelError(
            f"--model default: the embedded image-text model is not installed ({exc})"
        ) from exc
    pre = Preprocessing.for_default((64, 64))
    return ImageText(model, model.tokenizer, "default-image-text"), [], pre, "shipped"
