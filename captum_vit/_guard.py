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
"""

from __future__ import annotations

import functools
import inspect
import sys
from contextlib import ExitStack, contextmanager
from typing import Any, Callable, Iterator, List, Tuple, TypeVar

import torch
import torch.nn as nn

_F = TypeVar("_F", bound=Callable[..., Any])


@contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Put modules (and all their submodules) in eval mode; restore every flag after.

    Each submodule's own ``training`` flag is restored, so mixed train/eval models come
    back exactly as they were, also when the body raises. Models already in eval mode
    are not touched at all (no overhead on the inference path).
    """
    saved: List[Tuple[nn.Module, bool]] = [
        (m, m.training) for module in modules for m in module.modules()
    ]
    if not any(flag for _, flag in saved):
        yield
        return
    try:
        for m, _ in saved:
            object.__setattr__(m, "training", False)
        yield
    finally:
        for m, flag in saved:
            object.__setattr__(m, "training", flag)


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
