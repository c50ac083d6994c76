"""Input helpers shared by the attribution methods and the metrics.

Kept here rather than imported from Captum's private modules, which change between
releases. Every public entry point validates its arguments with these helpers, so that
a wrong value fails early with an error naming the argument:

- :func:`unpack_inputs` / :func:`check_batch`: image batches (floating point, finite,
  non-empty; uint8 images are refused with a hint to convert and normalise them);
- :func:`format_target` / :func:`as_target`: class targets given as anything
  integer-like that NumPy or PyTorch users pass;
- :func:`check_int`, :func:`check_number`, :func:`check_seed`, :func:`check_count`:
  scalar arguments (NaN, infinities, wrong types and out-of-range values are
  refused); :func:`check_choice`, :func:`check_subset`: names from a fixed set.

Every validator takes the argument's name first, then the value:
``check_*(name, value, ...)``. This module imports nothing from ``captum_vit``.
"""

from __future__ import annotations

import math
import re
import numbers
import operator
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

TargetType = Union[None, int, Sequence[int], Tensor]

#: Gaussian blur baseline (Petsiuk et al. 2018; TIS): kernel size and sigma.
BLUR_KERNEL, BLUR_SIGMA = 11, 5.0
#: Largest seed a ``torch.Generator`` accepts, plus one.
SEED_LIMIT = 2**64


# ----------------------------------------------------------------- image batches
def check_batch(name: str, tensor: Tensor) -> Tensor:
    """Refuse an empty batch (batch size 0) with a ``ValueError`` naming ``name``.

    Every method and metric treats an empty batch the same way: it is an error (an
    upstream filter that kept nothing, a wrong slice), never an empty result.
    """
    if tensor.dim() == 0 or tensor.shape[0] == 0:
        raise ValueError(
            f"{name}: expected a batch of at least one example, got shape "
            f"{tuple(tensor.shape)} (an empty batch)"
        )
    return tensor


def all_finite(tensor: Tensor) -> bool:
    """Whether every value of ``tensor`` is finite (no NaN, no infinity).

    A NaN or infinite value makes the sum NaN or infinite, so a finite sum proves the
    tensor finite with one reduction (about 40 times faster than
    ``torch.isfinite(t).all()`` on a ViT-B batch); only a sum that overflowed, or a
    tensor that is not finite, takes the element-wise check.
    """
    if tensor.is_floating_point() and math.isfinite(float(tensor.detach().sum())):
        return True
    return bool(torch.isfinite(tensor).all())


def check_image_batch(name: str, images: Any) -> Tensor:
    """A non-empty, finite, floating-point batch, or an error naming ``name``.

    Raises:
        TypeError: not a tensor, or not floating point (e.g. uint8 images straight
            from a decoder: convert them to float and normalise them as the model
            expects).
        ValueError: an empty batch, or NaN / infinite values.
    """
    if not isinstance(images, Tensor):
        raise TypeError(f"{name}: expected a (B, C, H, W) tensor, got {type(images)}")
    if not images.is_floating_point():
        raise TypeError(
            f"{name}: expected floating-point images, got {images.dtype}; convert them "
            "to float and normalise them as the model expects (e.g. "
            "`x.float() / 255`, then the model's mean/std normalisation)"
        )
    check_batch(name, images)
    if not all_finite(images):
        raise ValueError(f"{name}: contains NaN or infinite values")
    return images


def unpack_inputs(inputs: Union[Tensor, Tuple[Tensor, ...]]) -> Tuple[Tensor, bool]:
    """Accept a tensor or a 1-tuple of tensors (Captum's tuple/tensor symmetry).

    The images are validated with :func:`check_image_batch` (floating point, finite,
    at least one image).

    Returns:
        ``(images, was_tuple)``.
    """
    if isinstance(inputs, tuple):
        if len(inputs) != 1 or not isinstance(inputs[0], Tensor):
            raise ValueError(
                "inputs: ViT methods take one image tensor (or a 1-tuple of it); got a "
                f"tuple of {len(inputs)} items"
            )
        return check_image_batch("inputs", inputs[0]), True
    if not isinstance(inputs, Tensor):
        raise TypeError(f"inputs: expected a (B, C, H, W) tensor, got {type(inputs)}")
    return check_image_batch("inputs", inputs), False


def pack_output(out: Tensor, was_tuple: bool) -> Union[Tensor, Tuple[Tensor]]:
    """Return ``out`` in the same tuple-ness as the inputs."""
    return (out,) if was_tuple else out


# ---------------------------------------------------------------------- targets
def _is_bool(value: Any) -> bool:
    if isinstance(value, Tensor):
        return value.dtype == torch.bool
    if isinstance(value, np.ndarray):
        return value.dtype.kind == "b"
    return isinstance(value, (bool, np.bool_))


def _scalar_index(value: Any) -> Optional[int]:
    """``value`` as a Python int if it is an integer-like scalar, else None."""
    if _is_bool(value):
        return None
    if isinstance(value, Tensor):
        if value.dim() != 0 or value.is_floating_point() or value.is_complex():
            return None
        return int(value.item())
    if isinstance(value, np.ndarray):
        if value.ndim != 0 or value.dtype.kind not in "iu":
            return None
        return int(value.item())
    if isinstance(value, numbers.Integral):
        return int(operator.index(value))
    return None


def as_target(target: Any, name: str = "target") -> Union[None, int, Tensor]:
    """Normalise an integer-like class target, without range checks.

    Accepted: None; a Python or NumPy integer, or a 0-d integer array / tensor (one
    class for every sample); a 1-D integer NumPy array or tensor of any integer dtype,
    or a list/tuple of integer-like scalars (one class per sample).

    Returns:
        None, an int, or a 1-D ``torch.long`` tensor on the target's device (CPU for
        lists and arrays).

    Raises:
        TypeError: booleans, floats, strings, nested sequences and other types.
        ValueError: arrays or tensors of more than one dimension.
    """
    if target is None:
        return None
    if _is_bool(target):
        raise TypeError(f"{name}: expected integer class indices, got booleans")
    scalar = _scalar_index(target)
    if scalar is not None:
        return scalar
    if isinstance(target, np.ndarray):
        if target.dtype.kind not in "iu":
            raise TypeError(
                f"{name}: expected an integer array of class indices, got dtype "
                f"{target.dtype}"
            )
        target = torch.from_numpy(target.astype(np.int64))
    if isinstance(target, Tensor):
        if target.is_floating_point() or target.is_complex():
            raise TypeError(
                f"{name}: expected an integer tensor of class indices, got "
                f"{target.dtype}"
            )
        if target.dim() != 1:
            raise ValueError(
                f"{name}: expected a scalar or 1-D integer tensor of class indices, "
                f"got shape {tuple(target.shape)} dtype {target.dtype}"
            )
        return target.to(torch.long)
    if isinstance(target, (list, tuple)):
        values: List[int] = []
        for v in target:
            i = _scalar_index(v)
            if i is None:
                raise TypeError(
                    f"{name}: expected an int or a per-sample list of integer class "
                    f"indices, got an element {v!r} of type {type(v).__name__} "
                    "(tuples indexing multi-dimensional outputs are not supported)"
                )
            values.append(i)
        return torch.tensor(values, dtype=torch.long)
    raise TypeError(
        f"{name}: expected an int, a list of ints or an integer tensor / array, got "
        f"{type(target).__name__}"
    )


def format_target(
    target: TargetType, batch: int, num_classes: int, name: str = "target"
) -> Tensor:
    """Turn a Captum-style class target into a (B,) long tensor and validate it.

    Args:
        target: An int (same class for every sample), a per-sample list/tuple or 1-D
            tensor of ints; NumPy integers and arrays and tensors of any integer dtype
            are accepted too (see :func:`as_target`).
        batch: Batch size B.
        num_classes: Number of output classes.
        name: Argument name used in error messages.

    Returns:
        A (B,) long tensor on the CPU.

    Raises:
        TypeError: for tuples of indices into multi-dimensional outputs or other types.
        ValueError: wrong length, or a class index outside ``[0, num_classes)``.
    """
    t = as_target(target, name)
    if t is None:
        raise TypeError(f"{name}: expected class indices, got None")
    if isinstance(t, int):
        t = torch.full((batch,), t, dtype=torch.long)
    else:
        t = t.cpu()
    if t.numel() != batch:
        raise ValueError(
            f"{name}: expected {batch} per-sample targets, got {t.numel()}"
        )
    if batch and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        raise ValueError(
            f"{name}: class indices must lie in [0, {num_classes}), got "
            f"{t.tolist() if batch <= 16 else (int(t.min()), int(t.max()))}"
        )
    return t


# ----------------------------------------------------------------- scalar values
def _is_choice(value: Any, choices: Sequence[Any]) -> bool:
    if all(isinstance(c, str) for c in choices) and not isinstance(value, str):
        return False  # a name is a string: no tensor or array compared to names
    return value in choices


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    """``value`` if it is one of ``choices``, else a ``ValueError`` naming ``name``.

    Args:
        name: Argument name for the message.
        value: The value.
        choices: The allowed values (shown in the message as given: a list or a
            tuple). Where they are all strings, only a string can match.

    Returns:
        ``value``.
    """
    if not _is_choice(value, choices):
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")
    return value


def check_subset(name: str, values: Any, choices: Sequence[str]) -> Tuple[str, ...]:
    """A name or a non-empty sequence of distinct names from ``choices``.

    Args:
        name: Argument name for the message.
        values: One name, or a sequence of names.
        choices: The allowed names.

    Returns:
        The names as a tuple.

    Raises:
        ValueError: an empty sequence, an unknown name or a repeated one.
    """
    values = (values,) if isinstance(values, str) else tuple(values)
    if (
        not values
        or any(not _is_choice(v, choices) for v in values)
        or len(set(values)) != len(values)
    ):
        raise ValueError(
            f"{name}: expected a non-empty subset of {tuple(choices)}, got {values!r}"
        )
    return values


def gaussian_blur(
    images: Tensor, kernel: int = BLUR_KERNEL, sigma: float = BLUR_SIGMA
) -> Tensor:
    """Depthwise Gaussian blur with zero padding (as the RISE reference code).

    Shared by the metrics' ``"blur"`` baseline and the ``"blur"`` fill of the
    mask-based attribution methods, so both hide pixels the same way.

    Args:
        images: (B, C, H, W) batch.
        kernel: Odd kernel size (default 11).
        sigma: Standard deviation of the Gaussian in pixels (default 5).

    Returns:
        The blurred batch, same shape, dtype and device.
    """
    r = torch.arange(kernel, dtype=images.dtype, device=images.device) - kernel // 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    k2 = g[:, None] * g[None, :]
    k2 = k2 / k2.sum()
    c = images.shape[1]
    weight = k2.expand(c, 1, kernel, kernel)
    return F.conv2d(images, weight, padding=kernel // 2, groups=c)


def _bounds(low: Optional[float], high: Optional[float], lo_open: bool, hi_open: bool):
    if low is not None and high is not None:
        return f"in {'(' if lo_open else '['}{low}, {high}{')' if hi_open else ']'}"
    if low is not None:
        return f"{'>' if lo_open else '>='} {low}"
    if high is not None:
        return f"{'<' if hi_open else '<='} {high}"
    return "finite"


def check_int(
    name: str,
    value: Any,
    low: Optional[int] = None,
    high: Optional[int] = None,
) -> int:
    """An integer-like scalar (Python/NumPy int, 0-d integer tensor) in
    ``[low, high]``, as a Python int.

    Raises:
        TypeError: strings and other non-numbers.
        ValueError: numbers that are not integers (booleans, 2.5, NaN, infinities) or
            out of range.
    """
    i = _scalar_index(value)
    if i is None:
        is_number = isinstance(value, (numbers.Number, np.bool_)) or (
            isinstance(value, Tensor) and value.dim() == 0
        )
        error = ValueError if is_number else TypeError
        raise error(f"{name}: expected an integer, got {value!r}")
    if (low is not None and i < low) or (high is not None and i > high):
        raise ValueError(
            f"{name}: expected an integer {_bounds(low, high, False, False)}, got {i}"
        )
    return i


def check_number(
    name: str,
    value: Any,
    low: Optional[float] = None,
    high: Optional[float] = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    allow_inf: bool = False,
) -> float:
    """A finite real scalar (Python/NumPy number, 0-d real tensor) within the bounds,
    as a Python float.

    Args:
        name: Argument name for the messages.
        value: The value.
        low: Lower bound (None: unbounded).
        high: Upper bound (None: unbounded).
        low_open: Exclude ``low`` itself.
        high_open: Exclude ``high`` itself.
        allow_inf: Accept ``±inf`` (within the bounds); NaN is always refused.

    Raises:
        TypeError: booleans, strings, complex numbers, other types.
        ValueError: NaN, infinite (unless allowed) or out of range.
    """
    if _is_bool(value):
        raise TypeError(f"{name}: expected a number, got {value!r}")
    if isinstance(value, Tensor) and value.dim() == 0 and not value.is_complex():
        v = float(value.item())
    elif isinstance(value, numbers.Real):
        v = float(value)
    else:
        raise TypeError(f"{name}: expected a number, got {value!r}")
    if math.isnan(v) or (math.isinf(v) and not allow_inf):
        raise ValueError(f"{name}: expected a finite number, got {v}")
    too_low = low is not None and (v <= low if low_open else v < low)
    too_high = high is not None and (v >= high if high_open else v > high)
    if too_low or too_high:
        raise ValueError(
            f"{name}: expected a value {_bounds(low, high, low_open, high_open)}, "
            f"got {v}"
        )
    return v


def check_seed(name: str, value: Any, allow_none: bool = False) -> Optional[int]:
    """A seed for ``torch.Generator``: an integer in ``[0, 2**64)`` (or None if
    allowed).

    Args:
        name: Argument name for the messages.
        value: The seed.
        allow_none: Accept None (returned as is).

    Returns:
        The seed as a Python int, or None.
    """
    if value is None and allow_none:
        return None
    return check_int(name, value, 0, SEED_LIMIT - 1)


def check_count(name: str, value: Any, low: int = 1) -> int:
    """A job setting that counts something (images, masks, a batch size): a Python
    ``int``, not a bool, of at least ``low``.

    Stricter than :func:`check_int` (no NumPy integers or tensors: job settings are
    written to JSON records as they are given), and every refusal is a
    ``ValueError`` ("expected a positive integer" when ``low`` is 1).

    Args:
        name: Argument name for the message.
        value: The setting.
        low: The smallest value allowed.

    Returns:
        ``value``.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        what = "a positive integer" if low == 1 else f"an integer >= {low}"
        raise ValueError(f"{name}: expected {what}, got {value!r}")
    return value


# ---------------------------------------------------------------- progress bars
#: Seconds between two lines of a progress bar written to a non-terminal (a log
#: file, a pipe): there a bar is a few plain lines, not ``\r`` redraws.
LOG_INTERVAL = 30.0
_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class _LineWriter:
    """The file a bar writes to when its stream is not a terminal: each redraw of
    the bar (``\\r`` + text) becomes one plain line; cursor moves and the blanks
    that erase a bar are dropped."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.last = ""

    def write(self, text: str) -> int:
        for part in _ESCAPE.sub("", text).replace("\r", "\n").split("\n"):
            part = part.rstrip()
            if part.strip() and part != self.last:  # a redraw of the same state
                self.stream.write(part + "\n")
                self.last = part
        return len(text)

    def flush(self) -> None:
        flush = getattr(self.stream, "flush", None)
        if flush is not None:
            flush()


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed file
        return False


def progress_bar(
    iterable: Any = None,
    *,
    total: Optional[int] = None,
    desc: str = "",
    enabled: bool = True,
    unit: str = "it",
    initial: int = 0,
    file: Any = None,
) -> Any:
    """A tqdm bar, or a do-nothing stand-in when not ``enabled``: the one way every
    progress bar of the package is made.

    On a terminal (and in a notebook, through ``tqdm.auto``) it is tqdm's own bar.
    Written to anything else (a log file, a pipe) it is a few plain lines instead
    of ``\\r`` redraws: one when it starts, one every :data:`LOG_INTERVAL` seconds
    and one when it ends.

    Args:
        iterable: What to iterate over (or None, and ``update`` by hand).
        total: Expected number of steps.
        desc: The bar's label.
        enabled: False gives a disabled bar (it still counts, prints nothing).
        unit: The unit of a step.
        initial: Steps already done (a resumed run).
        file: The stream (default: ``sys.stderr`` when the bar is made).

    Returns:
        A ``tqdm`` instance.
    """
    import sys

    from tqdm.auto import tqdm

    stream = sys.stderr if file is None else file
    options: dict = dict(dynamic_ncols=True)
    notebook = any(c.__module__ == "tqdm.notebook" for c in tqdm.__mro__)
    if enabled and not notebook and not _is_terminal(stream):
        stream = _LineWriter(stream)
        options = dict(
            mininterval=LOG_INTERVAL, maxinterval=LOG_INTERVAL, ascii=True, ncols=80
        )
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        initial=initial,
        disable=not enabled,
        file=stream,
        **options,
    )
