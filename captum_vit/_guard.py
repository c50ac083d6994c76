"""How every method and metric runs the user's model for one call.

- :func:`eval_mode`: dropout, drop-path and other train-mode behaviour would make an
  explanation random (and differ between two identical calls), so the model is
  evaluated in eval mode for the call; every submodule's own ``training`` flag is
  restored afterwards, also when the call raises.
- :func:`eager`: a model compiled with ``torch.compile(model)`` or in place with
  ``model.compile()`` runs eagerly for the call (``torch.compiler.set_stance
  ("force_eager")``, restored afterwards): the methods record attention through hooks,
  switch fused-attention flags and differentiate intermediate tensors, none of which
  a compiled graph reliably sees. :func:`unwrap_compiled` gives the module an
  ``OptimizedModule`` wraps (used by :class:`~captum_vit.vit.ViTAdapter`).
- :func:`model_call` combines both for the models an attributor (or a metric's
  ``forward_func``) holds; :func:`evaluates_model` and :func:`evaluates_argument` are
  its decorators for attribution methods and metric functions.
- :func:`require_autograd`: gradient methods cannot run inside
  ``torch.inference_mode()`` and say so.
- :func:`check_layout` and :func:`check_dtype`: the image batch fits the model that
  will run it (``ViTAdapter.check_images`` calls both, so every method and
  :class:`~captum_vit.TokenMask` does): a channels-last batch or a batch without its
  batch dimension gets the ``permute`` / ``[None]`` that fixes it, and images of
  another floating-point dtype than the model's get the call that converts them
  (e.g. ``.float()``) instead of torch's "Input type (double) and bias type (float)"
  error. Inputs are never cast silently: PyTorch and Captum do not cast either, and a
  float64 batch explained by a float32 model would return float32-precision maps
  (in float64) without a word.
- :func:`autocast` and :func:`check_amp`: the ``--amp`` precision (bf16, fp16) the
  jobs and the ViT Shapley trainers run forward passes in, refused with one line
  where the device cannot run it.
- :class:`Interrupted`: Ctrl-C during a long run (a dataset job, a trainer), with the
  one line saying what was kept and how to resume.
"""

from __future__ import annotations

import functools
import inspect
import sys
import threading
from contextlib import ExitStack, contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, TypeVar

import torch
import torch.nn as nn
from torch import Tensor

_F = TypeVar("_F", bound=Callable[..., Any])


def _walk(modules: Tuple[nn.Module, ...]) -> Dict[int, nn.Module]:
    """Every module under ``modules``, each once, keyed by ``id``: what
    ``nn.Module.modules()`` visits, without its generators and dotted names (a guard
    walks the model on every call; this is about three times faster)."""
    found: Dict[int, nn.Module] = {}
    todo: List[Optional[nn.Module]] = list(modules)
    while todo:
        m = todo.pop()
        if m is None or id(m) in found:
            continue
        found[id(m)] = m
        todo.extend(m._modules.values())
    return found


#: Ids of the modules an enclosing :func:`eval_mode` of this thread holds in eval
#: mode (every module of its walk): a nested guard over them has nothing to do.
_HELD = threading.local()


@contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Put modules (and all their submodules) in eval mode; restore every flag after.

    Each submodule's own ``training`` flag is restored, so mixed train/eval models come
    back exactly as they were, also when the body raises. Models already in eval mode
    are not touched at all (no overhead on the inference path). Inside an enclosing
    ``eval_mode`` that walked the same modules (an attributor called by a registry
    function, a method inside a metric) the nested call does not walk them again,
    unless one of them was itself put back in train mode meanwhile.
    """
    held = getattr(_HELD, "ids", None)
    if held is not None and all(id(m) in held and not m.training for m in modules):
        yield
        return
    walked = _walk(modules)
    saved: List[Tuple[nn.Module, bool]] = [(m, m.training) for m in walked.values()]
    switched = any(flag for _, flag in saved)
    _HELD.ids = walked.keys() | (held or set())
    try:
        if switched:
            for m, _ in saved:
                object.__setattr__(m, "training", False)
        yield
    finally:
        if switched:
            for m, flag in saved:
                object.__setattr__(m, "training", flag)
        _HELD.ids = held


def is_compiled_wrapper(model: Any) -> bool:
    """Whether ``model`` is the ``OptimizedModule`` returned by ``torch.compile``."""
    return (
        isinstance(model, nn.Module)
        and type(model).__name__ == "OptimizedModule"
        and isinstance(getattr(model, "_orig_mod", None), nn.Module)
    )


def unwrap_compiled(model: Any) -> Any:
    """The module ``torch.compile(module)`` wraps (any depth); other objects as is.

    A model compiled in place with ``model.compile()`` is its own module and is
    returned unchanged; :func:`eager` makes it run eagerly during a call.
    """
    while is_compiled_wrapper(model):
        model = model._orig_mod
    return model


@contextmanager
def eager() -> Iterator[None]:
    """Run every ``torch.compile``-d module and function eagerly inside the block.

    Uses ``torch.compiler.set_stance("force_eager")`` and restores the previous stance
    on exit. Nothing is done when TorchDynamo was never imported (then nothing can
    have been compiled) or inside a region that is being compiled.
    """
    if "torch._dynamo" not in sys.modules or torch.compiler.is_compiling():
        yield
        return
    with torch.compiler.set_stance("force_eager"):
        yield


def _holds_models(obj: Any) -> bool:
    """Attributors and captum-vit helper objects (adapters, games, token masks)."""
    from captum.attr import Attribution

    return isinstance(obj, Attribution) or type(obj).__module__.startswith(
        "captum_vit."
    )


def models_of(obj: Any) -> List[nn.Module]:
    """The ``nn.Module``s behind a model, a bound ``forward``, an adapter or an
    attributor (its forward function and every module or attributor it holds).

    Plain functions (e.g. ``lambda x: model(x)``) hide their model: nothing is found.
    """
    found: List[nn.Module] = []
    seen = set()
    todo = [obj]
    while todo:
        o = todo.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        if isinstance(o, nn.Module):
            found.append(o)
        elif inspect.ismethod(o):
            todo.append(o.__self__)
        elif _holds_models(o) and hasattr(o, "__dict__"):
            todo.extend(
                v
                for v in vars(o).values()
                if isinstance(v, nn.Module) or inspect.ismethod(v) or _holds_models(v)
            )
    return found


@contextmanager
def model_call(*objs: Any) -> Iterator[None]:
    """Evaluate the models behind ``objs`` (see :func:`models_of`) for one call: eval
    mode (:func:`eval_mode`) and eager execution (:func:`eager`), both restored on
    exit, also when the body raises."""
    modules = [m for o in objs for m in models_of(o)]
    with ExitStack() as stack:
        stack.enter_context(eval_mode(*modules))
        stack.enter_context(eager())
        yield


def evaluates_model(fn: _F) -> _F:
    """Decorator for attribution methods: run ``fn(self, ...)`` inside
    ``model_call(self)``."""

    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        with model_call(self):
            return fn(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def evaluates_argument(name: str) -> Callable[[_F], _F]:
    """Decorator for metric functions: run the function inside ``model_call`` of its
    argument ``name`` (``forward_func`` or ``explainer``)."""

    def decorate(fn: _F) -> _F:
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                model = sig.bind_partial(*args, **kwargs).arguments.get(name)
            except TypeError:  # let the call itself report the bad signature
                model = None
            with model_call(model):
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def require_autograd(method: str) -> None:
    """Raise a ``RuntimeError`` inside ``torch.inference_mode()``: ``method``
    differentiates the model and needs autograd."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            f"{method} needs autograd (it differentiates the model) and cannot run "
            "inside torch.inference_mode(); call it outside the inference_mode block "
            "(wrapping the call in torch.no_grad() is fine)"
        )


# ------------------------------------------------------------ inputs for a model
#: The tensor method that converts images to a model's dtype.
_DTYPE_CALLS = {
    torch.float32: ".float()",
    torch.float64: ".double()",
    torch.float16: ".half()",
    torch.bfloat16: ".bfloat16()",
}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def check_layout(images: Tensor, in_chans: Optional[int], name: str = "inputs") -> None:
    """Refuse a batch that is not (B, C, H, W) with C = ``in_chans``, with a hint.

    A (B, H, W, C) batch is named channels-last with the ``permute`` that fixes it; a
    single (C, H, W) or (H, W, C) image gets the indexing that adds the batch
    dimension.

    Args:
        images: The image batch (a tensor).
        in_chans: Channels the model expects (None: not checked).
        name: Argument name used in the message.

    Raises:
        ValueError: wrong rank, or another number of channels.
    """
    shape = tuple(images.shape)
    c = in_chans
    if images.dim() != 4:
        hint = ""
        if images.dim() == 3 and c is not None and shape[0] == c:
            hint = "; one image without its batch dimension? use x[None]"
        elif images.dim() == 3 and c is not None and shape[-1] == c:
            hint = "; one channels-last image? use x.permute(2, 0, 1)[None]"
        raise ValueError(
            f"{name}: expected a (B, C, H, W) image batch, got shape {shape}{hint}"
        )
    if c is None or shape[1] == c:
        return
    if shape[-1] == c:
        raise ValueError(
            f"{name}: expected (B, {c}, H, W); got {shape}, which looks "
            "channels-last: use x.permute(0, 3, 1, 2)"
        )
    raise ValueError(f"{name}: the model expects {c} channels, got {shape[1]}")


def model_dtype(model: nn.Module) -> Optional[torch.dtype]:
    """The floating-point dtype of ``model``'s parameters; None when it has none or
    several (mixed-precision models are not checked)."""
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    return dtypes.pop() if len(dtypes) == 1 else None


def _autocast_on(device: torch.device) -> bool:
    """Whether ``torch.autocast`` is active for ``device``'s type (it reconciles
    input and weight dtypes itself)."""
    if device.type not in ("cpu", "cuda", "xpu", "mps", "hpu"):
        return False  # e.g. meta: autocast has no notion of it
    return torch.is_autocast_enabled(device.type)


def check_dtype(images: Tensor, model: nn.Module, name: str = "inputs") -> None:
    """Refuse floating-point images whose dtype is not ``model``'s, saying how to
    convert them.

    Nothing is checked under ``torch.autocast`` (which casts per operation) or for a
    model whose parameters have several dtypes. Callers whose model converts its
    inputs itself (Hugging Face models cast ``pixel_values`` to their patch
    embedding's dtype) do not call this.

    Args:
        images: The (floating-point) image batch.
        model: The module the images enter first (e.g. the patch embedding, as
            ``ViTAdapter.check_images`` passes), or the whole model.
        name: Argument name used in the message.

    Raises:
        TypeError: the dtypes differ, e.g. ``inputs: float64 images for a float32
            model; call .float() on them``.
    """
    if not images.is_floating_point():
        return  # check_image_batch words integer images
    want = model_dtype(model)
    if want is None or images.dtype == want or _autocast_on(images.device):
        return
    call = _DTYPE_CALLS.get(want, f".to({want})")
    raise TypeError(
        f"{name}: {_dtype_name(images.dtype)} images for a {_dtype_name(want)} model; "
        f"call {call} on them (or convert the model, or run it under torch.autocast)"
    )


# ------------------------------------------------------------------- precision
@contextmanager
def autocast(device: torch.device, amp: Optional[str]) -> Iterator[None]:
    """``torch.autocast`` for ``amp`` in ``{"bf16", "fp16"}``; nothing for None."""
    if amp is None:
        yield
        return
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def check_amp(device: torch.device, amp: Optional[str]) -> None:
    """Raise ValueError (naming ``--amp``) for a precision the device cannot run."""
    if amp not in (None, "bf16", "fp16"):
        raise ValueError(f"--amp: expected bf16 or fp16, got {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        raise ValueError(
            "--amp fp16 needs a CUDA device (CPU autocast runs bf16): use --amp bf16 "
            "or --device cuda"
        )


# ------------------------------------------------------------------ long runs
class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a job; ``str(exc)`` is the one line the command prints (what
    was kept, and how to resume)."""
