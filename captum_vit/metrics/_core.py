"""The one perturbation engine shared by every model-based metric.

Every curve- or subset-type metric in :mod:`captum_vit.metrics` is the same four steps:

1. resolve *feature units* (the patch grid of a timm ViT, or a Captum-style
   ``feature_mask``) and reduce the attributions to one score per feature, (B, F);
2. describe the perturbed inputs as *rows*: a sample index and a boolean keep mask over
   that sample's F features (built lazily, chunk by chunk);
3. evaluate the rows in batches of ``max_examples_per_batch`` with one *remover*: true
   token removal (:class:`captum_vit.vit.TokenMask`, ``"drop"`` mode), replacement of
   the removed features' elements by a pixel baseline, or imputation of the removed
   pixels from the kept ones (:mod:`._imputation`, ROAD);
4. gather the target's score (softmax probability, logit, or top-1 correctness).

Rows that keep every feature are the clean inputs and are not re-evaluated; rows that
keep none are evaluated once per sample. Under token removal the rows are sorted by the
number of kept tokens and cut into batches of (nearly) equal length, so that padding
wastes at most 10% of the tokens of a batch (see :func:`length_chunks`).

Everything here is private; the public functions live in the sibling modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

# evaluates_argument is used by the metric modules as _core.evaluates_argument
from .._guard import evaluates_argument  # noqa: F401
from .._utils import (
    check_choice,
    check_image_batch,
    check_int,
    check_number,
    check_seed,
    gaussian_blur,
    progress_bar,
)
from .._utils import all_finite, format_target as _shared_format_target
from ..vit.adapter import logits_of

TargetType = Union[None, int, Sequence[int], Tensor]
BaselineType = Union[None, str, float, Tensor, Callable[[Tensor], Tensor]]

#: Pixel baselines known by name (see :func:`make_baseline`).
BASELINES = ("black", "mean", "blur", "uniform")
#: Imputations known by name (``removal="noisy_linear"``): a factory of an object
#: whose ``remover(forward_func, inputs, args, features, seed)`` gives the call's
#: remover. Filled by the modules that define them (:mod:`._imputation`), which
#: import this one: the imports of the metrics run one way.
IMPUTATIONS: Dict[str, Callable[[], Any]] = {}
#: Output scores a metric can read.
SCORES = ("probability", "logit")
#: Reductions of pixel-shaped attributions to features.
REDUCTIONS = ("sum", "mean")
#: How ties in the attribution ranking are broken.
TIE_BREAKS = ("random", "index")
#: Largest padding overhead accepted when batching token sequences of unequal length.
PAD_TOLERANCE = 0.1
#: Rows per forward pass when ``max_examples_per_batch`` is None.
DEFAULT_BATCH = 64
#: Default number of curve steps cap (TIS uses 224 steps).
MAX_DEFAULT_STEPS = 224


# --------------------------------------------------------------------- validation
def check_inputs(inputs: Any) -> Tensor:
    """A single finite floating-point input tensor with a non-empty batch dimension
    (an empty batch is an error, as in every method)."""
    if isinstance(inputs, tuple):
        if len(inputs) != 1:
            raise TypeError(
                "inputs: expected a tensor or a 1-tuple of tensors; metrics of "
                "multi-input models are not supported"
            )
        inputs = inputs[0]
    if not isinstance(inputs, Tensor):
        raise TypeError(f"inputs: expected a tensor, got {type(inputs).__name__}")
    if inputs.dim() < 2:
        raise ValueError(
            "inputs: expected a batch (B, ...) with at least one feature dimension, "
            f"got shape {tuple(inputs.shape)}"
        )
    return check_image_batch("inputs", inputs)


def unwrap(value: Any, name: str) -> Tensor:
    """A tensor, or the tensor inside a 1-tuple (Captum returns tuples for tuples)."""
    if isinstance(value, tuple):
        if len(value) != 1:
            raise TypeError(f"{name}: expected a tensor or a 1-tuple of tensors")
        value = value[0]
    if not isinstance(value, Tensor):
        raise TypeError(f"{name}: expected a tensor, got {type(value).__name__}")
    return value


def generator(seed: int, offset: int = 0) -> torch.Generator:
    """A CPU generator; the same seed always gives the same stream."""
    return torch.Generator().manual_seed((int(seed) + 1_000_003 * offset) % (2**63))


def format_target(
    target: TargetType, batch: int, num_classes: int, device: torch.device, name: str
) -> Optional[Tensor]:
    """Captum-style target (int, per-sample list or 1-D tensor) as a (B,) long on
    ``device``; None stays None (the caller uses the predicted class)."""
    if target is None:
        return None
    return _shared_format_target(target, batch, num_classes, name=name).to(device)


def select_args(args: Any, index: Tensor, batch: int) -> Tuple[Any, ...]:
    """``additional_forward_args`` for a subset of rows (tensors with a batch dim)."""
    if args is None:
        return ()
    if not isinstance(args, tuple):
        args = (args,)
    out = []
    for a in args:
        if isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] == batch:
            out.append(a[index.to(a.device)])
        else:
            out.append(a)
    return tuple(out)


# ------------------------------------------------------------------ feature units
@dataclass
class Features:
    """Feature units of a batch.

    ``ids`` is None when every element of a sample is its own feature (Captum's
    default); else a (1 or B, numel) long tensor of feature ids in ``0 .. num - 1``.
    """

    num: int
    ids: Optional[Tensor]
    grid: Optional[Tuple[int, int]] = None

    def rows(self, index: Tensor) -> Optional[Tensor]:
        """Feature ids of the given samples, (m, numel), or None (identity)."""
        if self.ids is None:
            return None
        if self.ids.shape[0] == 1:
            return self.ids.expand(index.numel(), -1)
        return self.ids[index]


def patch_feature_ids(inputs: Tensor, grid: Tuple[int, int], patch: Tuple[int, int]):
    """Feature ids (1, C*H*W) of the row-major patch grid of an image batch."""
    _, c, h, w = inputs.shape
    gh, gw = grid
    ph, pw = patch
    if gh * ph != h or gw * pw != w:
        raise ValueError(
            f"inputs: image size {(h, w)} is not the patch grid {grid} times the patch "
            f"size {patch}; pass a feature_mask"
        )
    rows = torch.arange(h, device=inputs.device) // ph
    cols = torch.arange(w, device=inputs.device) // pw
    ids = rows[:, None] * gw + cols[None, :]
    return ids.expand(c, h, w).reshape(1, -1)


def check_feature_mask(feature_mask: Any, inputs: Tensor) -> Features:
    """Captum-style feature mask: integer ids 0..F-1, broadcastable to ``inputs``."""
    fm = unwrap(feature_mask, "feature_mask")
    if fm.is_floating_point() or fm.is_complex() or fm.dtype == torch.bool:
        raise TypeError(f"feature_mask: expected integer feature ids, got {fm.dtype}")
    shape = tuple(inputs.shape)
    try:
        ok = (
            fm.dim() <= inputs.dim()
            and torch.broadcast_shapes(fm.shape, shape) == shape
        )
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(
            f"feature_mask: shape {tuple(fm.shape)} does not broadcast to the inputs' "
            f"shape {shape}"
        )
    fm = fm.to(inputs.device).long()
    while fm.dim() < inputs.dim():
        fm = fm.unsqueeze(0)
    ids = fm.expand(fm.shape[0], *shape[1:]).reshape(fm.shape[0], -1)
    if fm.shape[0] not in (1, shape[0]):  # pragma: no cover - excluded by broadcast
        raise ValueError("feature_mask: batch dimension must be 1 or B")
    if bool((ids < 0).any()):
        raise ValueError("feature_mask: feature ids must be >= 0")
    num = int(ids.max()) + 1
    present = torch.zeros(ids.shape[0], num, dtype=torch.bool, device=ids.device)
    present.scatter_(1, ids, True)
    if not bool(present.all()):
        raise ValueError(
            f"feature_mask: every id 0..{num - 1} must occur in every example (ids "
            "must be contiguous)"
        )
    return Features(num=num, ids=ids.contiguous())


def reduce_attributions(
    attributions: Any, inputs: Tensor, features: Features, reduction: str
) -> Tensor:
    """Attributions as one score per feature, (B, F) float.

    Pixel-shaped attributions (the inputs' shape, or broadcastable to it, e.g. a
    (B, 1, H, W) map) are summed (``"sum"``) or averaged (``"mean"``) over each
    feature's elements. Feature-shaped attributions, (B, F) or (B, gh, gw) on a ViT,
    are taken as they are.
    """
    attr = unwrap(attributions, "attributions")
    b = inputs.shape[0]
    shape = tuple(inputs.shape)
    num = features.num
    if attr.dim() < 1 or attr.shape[0] != b:
        raise ValueError(
            f"attributions: expected a batch of {b}, got shape {tuple(attr.shape)}"
        )
    attr = attr.detach().to(inputs.device)
    if not attr.is_floating_point():
        attr = attr.float()
    try:
        broadcastable = (
            attr.dim() == inputs.dim()
            and torch.broadcast_shapes(attr.shape, shape) == shape
        )
    except RuntimeError:
        broadcastable = False
    feature_shaped = attr.dim() == 2 and attr.shape[1] == num
    if features.grid is not None and tuple(attr.shape[1:]) == tuple(features.grid):
        feature_shaped = True
    pixel = tuple(attr.shape) == shape or (broadcastable and not feature_shaped)
    if pixel:
        flat = attr.expand(shape).reshape(b, -1)
        if features.ids is None:
            out = flat
        else:
            ids = features.ids.expand(b, -1)
            out = torch.zeros(b, num, dtype=flat.dtype, device=flat.device)
            out.scatter_add_(1, ids, flat)
            if reduction == "mean":
                count = torch.zeros_like(out).scatter_add_(
                    1, ids, torch.ones_like(flat)
                )
                out = out / count  # every id occurs (checked): count >= 1
    elif feature_shaped:
        out = attr.reshape(b, num)
    else:
        grid = f" or (B, gh, gw) = {(b, *features.grid)}" if features.grid else ""
        raise ValueError(
            f"attributions: shape {tuple(attr.shape)} matches neither the inputs' "
            f"shape {shape} nor the feature count (B, F) = {(b, num)}{grid}"
        )
    if not all_finite(out):
        raise ValueError("attributions: contains NaN or infinite values")
    return out


# -------------------------------------------------------------------- baselines
def make_baseline(baseline: BaselineType, inputs: Tensor, seed: int) -> Tensor:
    """The replacement value of every input element, a tensor of the inputs' shape.

    ``"black"``: zeros (the input space the model sees; for normalised images pass the
    normalised black value as a tensor or number). ``"mean"``: per-example, per-channel
    mean (per-example mean for non-image inputs). ``"blur"``: Gaussian blur, kernel 11,
    sigma 5, zero padding (4-D image inputs only). ``"uniform"``: noise uniform in each
    example's [min, max] range, the same seeded pattern for every example. A number or
    a tensor broadcastable to the inputs, or a callable ``f(inputs) -> tensor``.
    """
    shape = tuple(inputs.shape)
    if isinstance(baseline, str):
        check_choice("removal", baseline, BASELINES + ("tokens",))
        if baseline == "black":
            return torch.zeros_like(inputs)
        if baseline == "mean":
            dims = tuple(range(2, inputs.dim())) if inputs.dim() == 4 else None
            if dims is None:
                dims = tuple(range(1, inputs.dim()))
            return inputs.mean(dim=dims, keepdim=True).expand(shape).contiguous()
        if baseline == "blur":
            if inputs.dim() != 4:
                raise ValueError(
                    "removal: 'blur' needs (B, C, H, W) image inputs, got shape "
                    f"{shape}"
                )
            return gaussian_blur(inputs)
        if baseline == "uniform":
            flat = inputs.reshape(shape[0], -1)
            lo = flat.min(dim=1).values.view(-1, *([1] * (inputs.dim() - 1)))
            hi = flat.max(dim=1).values.view(-1, *([1] * (inputs.dim() - 1)))
            u = torch.rand(shape[1:], generator=generator(seed, 7), dtype=inputs.dtype)
            return lo + (hi - lo) * u.to(inputs.device)
        raise ValueError(
            "removal: 'tokens' is not a pixel baseline"
        )  # pragma: no cover
    if isinstance(baseline, bool):
        raise TypeError("removal: expected a name, a number, a tensor or a callable")
    if isinstance(baseline, (int, float)):
        return torch.full_like(inputs, check_number("removal", baseline))
    if callable(baseline) and not isinstance(baseline, Tensor):
        with torch.no_grad():
            value = baseline(inputs)
        name = "removal (callable result)"
    else:
        value, name = baseline, "removal"
    if not isinstance(value, Tensor):
        raise TypeError(
            f"{name}: expected a baseline name {BASELINES + ('tokens',)}, a number, a "
            f"tensor or a callable returning a tensor; got {type(value).__name__}"
        )
    try:
        ok = torch.broadcast_shapes(value.shape, shape) == shape
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(
            f"{name}: baseline of shape {tuple(value.shape)} does not broadcast to the "
            f"inputs' shape {shape}"
        )
    if not all_finite(value):
        raise ValueError(f"{name}: contains NaN or infinite values")
    return value.to(device=inputs.device, dtype=inputs.dtype).expand(shape).contiguous()


# --------------------------------------------------------------------- removers
class TokenRemover:
    """True token removal on a timm ViT (TokenMask, ``"drop"`` mode)."""

    sort_by_count = True

    def __init__(self, model: Any, inputs: Tensor, args: Any) -> None:
        from ..vit import TokenMask

        self.mask = TokenMask(model, mode="drop")
        self.model, self.inputs, self.args = model, inputs, args
        self.prefix_free = self.mask.adapter.num_prefix_tokens == 0

    def __call__(self, index: Tensor, keep: Tensor) -> Tensor:
        images = self.inputs[index]
        if self.args is None:
            return self.mask(images, keep)
        with self.mask.keep(keep):
            args = select_args(self.args, index, len(self.inputs))
            return logits_of(self.model(images, *args))


class PixelRemover:
    """Replace the elements of removed features by a baseline, then run the model."""

    sort_by_count = False
    prefix_free = False

    def __init__(
        self,
        forward_func: Callable,
        inputs: Tensor,
        args: Any,
        features: Features,
        baseline: Tensor,
    ) -> None:
        self.forward_func, self.inputs, self.args = forward_func, inputs, args
        self.features, self.baseline = features, baseline

    def __call__(self, index: Tensor, keep: Tensor) -> Tensor:
        m = index.numel()
        x = self.inputs[index].reshape(m, -1)
        base = self.baseline[index].reshape(m, -1)
        ids = self.features.rows(index)
        mask = keep if ids is None else keep.gather(1, ids)
        x = torch.where(mask, x, base).reshape(m, *self.inputs.shape[1:])
        out = self.forward_func(x, *select_args(self.args, index, len(self.inputs)))
        return logits_of(out)


# ------------------------------------------------------------------------ setup
@dataclass
class Setup:
    """Everything a metric needs after validation."""

    inputs: Tensor
    features: Features
    attributions: Tensor  # (B, F)
    target: Tensor  # (B,)
    clean_outputs: Tensor  # (B, C)
    remover: Any
    score: str
    batch_size: int
    show_progress: bool

    @property
    def batch(self) -> int:
        return self.inputs.shape[0]

    @property
    def num_features(self) -> int:
        return self.features.num

    def scores(self, outputs: Tensor, target: Tensor, kind: Optional[str] = None):
        return row_scores(outputs, target, kind or self.score)

    @property
    def clean_scores(self) -> Tensor:
        return self.scores(self.clean_outputs, self.target)


def row_scores(outputs: Tensor, target: Tensor, kind: str) -> Tensor:
    """The target's softmax probability, logit or top-1 correctness, (m,) float."""
    if not isinstance(outputs, Tensor) or outputs.dim() != 2:
        raise ValueError(
            "forward_func: expected a (batch, num_classes) output, got "
            + (
                str(tuple(outputs.shape))
                if isinstance(outputs, Tensor)
                else "no tensor"
            )
        )
    t = target.to(outputs.device)[:, None]
    if kind == "probability":
        return torch.softmax(outputs.float(), dim=-1).gather(1, t)[:, 0]
    if kind == "logit":
        return outputs.float().gather(1, t)[:, 0]
    if kind == "accuracy":
        return (outputs.argmax(dim=-1) == t[:, 0]).float()
    raise ValueError(
        f"score: expected one of {SCORES}, got {kind!r}"
    )  # pragma: no cover


def _forward_chunks(
    forward_func: Callable, inputs: Tensor, args: Any, batch_size: int
) -> Tensor:
    outs = []
    for start in range(0, inputs.shape[0], batch_size):
        index = torch.arange(start, min(start + batch_size, inputs.shape[0]))
        out = forward_func(
            inputs[index.to(inputs.device)],
            *select_args(args, index.to(inputs.device), inputs.shape[0]),
        )
        outs.append(logits_of(out) if hasattr(out, "logits") else out)
    out = torch.cat(outs, dim=0) if len(outs) > 1 else outs[0]
    if not isinstance(out, Tensor) or out.dim() != 2:
        raise ValueError(
            "forward_func: expected a (batch, num_classes) output, got "
            + (str(tuple(out.shape)) if isinstance(out, Tensor) else type(out).__name__)
        )
    return out


def vit_adapter(forward_func: Any) -> Any:
    """The :class:`~captum_vit.vit.ViTAdapter` of a supported model, else None."""
    from ..vit import ViTAdapter

    if not isinstance(forward_func, torch.nn.Module):
        return None
    try:
        return ViTAdapter(forward_func)
    except TypeError:
        return None


def prepare_call(kw: Dict[str, Any], metric: str, target_name: str = "target") -> Setup:
    """:func:`prepare` from a public metric's keyword arguments (its ``locals()``):
    the arguments every removal metric shares, under their public names
    (``score`` defaults to ``"probability"`` for metrics without one)."""
    return prepare(
        kw["forward_func"],
        kw["inputs"],
        kw["attributions"],
        kw["target"],
        kw["additional_forward_args"],
        feature_mask=kw["feature_mask"],
        removal=kw["removal"],
        score=kw.get("score", "probability"),
        attribution_reduction=kw["attribution_reduction"],
        max_examples_per_batch=kw["max_examples_per_batch"],
        seed=kw["seed"],
        show_progress=kw["show_progress"],
        target_name=target_name,
        metric=metric,
    )


def prepare(
    forward_func: Callable,
    inputs: Any,
    attributions: Any,
    target: TargetType,
    additional_forward_args: Any,
    *,
    feature_mask: Any = None,
    removal: BaselineType = None,
    score: str = "probability",
    attribution_reduction: str = "sum",
    max_examples_per_batch: Optional[int] = None,
    seed: int = 0,
    show_progress: bool = False,
    target_name: str = "target",
    score_choices: Sequence[str] = SCORES,
    metric: str = "this metric",
) -> Setup:
    """Validate a metric call and run the clean forward pass (under no_grad).

    Supported ViT families are recognised by their adapter: a model without classifier
    head is refused (a class target would index its embedding), token removal needs a
    family that can drop tokens (Swin cannot: pixel baselines work on its patch grid),
    and the default features are the patch grid of any supported family.
    """
    if not callable(forward_func):
        raise TypeError("forward_func: expected a callable (a model or a function)")
    inputs = check_inputs(inputs)
    check_choice("score", score, score_choices)
    check_choice("attribution_reduction", attribution_reduction, REDUCTIONS)
    batch_size = DEFAULT_BATCH
    if max_examples_per_batch is not None:
        batch_size = check_int("max_examples_per_batch", max_examples_per_batch, 1)
    seed = check_seed("seed", seed)
    from ..vit import CLASS_HEAD, TOKEN_DROP

    adapter = vit_adapter(forward_func)
    if adapter is not None:
        adapter.require(CLASS_HEAD, metric)
    vit = adapter is not None and adapter.has(TOKEN_DROP)
    if removal is None:
        removal = "tokens" if vit and feature_mask is None else "black"
    if isinstance(removal, str):
        names = ("tokens",) + BASELINES + tuple(IMPUTATIONS)
        check_choice("removal", removal, names)
        if removal in IMPUTATIONS:
            removal = IMPUTATIONS[removal]()
    # an imputation (e.g. NoisyLinearImputation) makes its own remover
    imputation = removal if callable(getattr(removal, "remover", None)) else None

    # feature units
    if removal == "tokens":
        if adapter is not None:
            adapter.require(TOKEN_DROP, f"{metric} with removal='tokens'")
        if not vit:
            raise ValueError(
                "removal: 'tokens' needs forward_func to be a supported timm ViT "
                "module; use a pixel baseline ('black', 'mean', 'blur', 'uniform', a "
                "tensor or a callable) for other models"
            )
        if feature_mask is not None:
            raise ValueError(
                "feature_mask: token removal works on the patch grid; drop "
                "feature_mask or use a pixel baseline"
            )
    if feature_mask is not None:
        features = check_feature_mask(feature_mask, inputs)
    elif adapter is not None:
        grid = tuple(int(g) for g in adapter.grid_for(inputs))
        ids = patch_feature_ids(inputs, grid, adapter.patch_size)
        features = Features(num=grid[0] * grid[1], ids=ids, grid=grid)
    else:
        features = Features(num=int(inputs[0].numel()), ids=None)

    attr = reduce_attributions(attributions, inputs, features, attribution_reduction)
    with torch.no_grad():
        pixel = removal != "tokens" and imputation is None
        base = make_baseline(removal, inputs, seed) if pixel else None

    with torch.no_grad():
        clean = _forward_chunks(
            forward_func, inputs, additional_forward_args, batch_size
        )
        if clean.shape[0] != inputs.shape[0]:
            raise ValueError(
                f"forward_func: returned {clean.shape[0]} rows for {inputs.shape[0]} "
                "inputs"
            )
        t = format_target(
            target, inputs.shape[0], clean.shape[1], clean.device, target_name
        )
        if t is None:
            t = clean.argmax(dim=-1)
        if removal == "tokens":
            remover: Any = TokenRemover(forward_func, inputs, additional_forward_args)
        elif imputation is not None:
            remover = imputation.remover(
                forward_func, inputs, additional_forward_args, features, seed
            )
        else:
            remover = PixelRemover(
                forward_func, inputs, additional_forward_args, features, base
            )
    return Setup(
        inputs=inputs,
        features=features,
        attributions=attr,
        target=t,
        clean_outputs=clean,
        remover=remover,
        score=score,
        batch_size=batch_size,
        show_progress=bool(show_progress),
    )


# --------------------------------------------------------------------- evaluate
def evaluate(
    setup: Setup,
    sample: Tensor,
    counts: Tensor,
    make_keep: Callable[[Tensor], Tensor],
    desc: str = "metric",
    kind: Optional[str] = None,
) -> Tensor:
    """Scores of M perturbed rows.

    Args:
        setup: The prepared call.
        sample: (M,) sample index of every row.
        counts: (M,) number of kept features of every row (only used to skip, share
            and order rows; ``make_keep`` must agree with it).
        make_keep: Maps (m,) row indices to their (m, F) boolean keep masks.
        desc: Progress-bar label.
        kind: Score kind, default ``setup.score``.

    Returns:
        (M,) float scores on the inputs' device.
    """
    num = setup.num_features
    device = setup.inputs.device
    sample = sample.to(device)
    counts = counts.to(device)
    m_rows = sample.numel()
    target = setup.target
    out = torch.empty(m_rows, dtype=torch.float32, device=device)

    full = counts >= num
    clean = setup.scores(setup.clean_outputs, target, kind).to(device)
    out[full] = clean[sample[full]]

    # rows keeping nothing are identical for a sample: evaluate one per sample
    empty = counts <= 0
    arange = torch.arange(m_rows, device=device)
    first_empty = torch.full((setup.batch,), m_rows, dtype=torch.long, device=device)
    first_empty.scatter_reduce_(0, sample[empty], arange[empty], reduce="amin")
    leader = empty & (first_empty[sample] == arange)
    todo = torch.nonzero(~full & (~empty | leader)).flatten()
    remover = setup.remover
    if remover.prefix_free and bool((counts[todo] <= 0).any()):
        raise ValueError(
            "removal: token removal cannot evaluate an empty token set on a ViT "
            "without prefix tokens; use a pixel baseline for this model"
        )
    if remover.sort_by_count and todo.numel():
        todo = todo[torch.argsort(counts[todo], descending=True, stable=True)]
        chunks = length_chunks(counts[todo].tolist(), setup.batch_size)
    else:
        chunks = [
            (start, min(start + setup.batch_size, todo.numel()))
            for start in range(0, todo.numel(), setup.batch_size)
        ]

    bar = None
    if setup.show_progress:
        bar = progress_bar(total=int(todo.numel()), desc=desc, unit="img")
    try:
        with torch.no_grad():
            for start, stop in chunks:
                rows = todo[start:stop]
                keep = make_keep(rows)
                outputs = remover(sample[rows], keep)
                out[rows] = setup.scores(outputs, target[sample[rows]], kind).to(device)
                if bar is not None:
                    bar.update(int(rows.numel()))
    finally:
        if bar is not None:
            bar.close()

    dup = empty & ~leader
    if bool(dup.any()):
        out[dup] = out[first_empty[sample[dup]]]
    return out


def length_chunks(
    counts: Sequence[int], batch_size: int, tolerance: float = PAD_TOLERANCE
) -> list:
    """Split rows sorted by decreasing token count into batches for token removal.

    A batch is padded to its longest sequence, so a new batch starts when it is full
    or when adding the next row would make the padded token count exceed the real
    one by more than ``tolerance`` (equal counts need no padding at all).

    Returns:
        ``[(start, stop), ...]`` slices of the sorted rows.
    """
    chunks, start, total = [], 0, 0
    for i, c in enumerate(counts):
        n = i - start
        if n and (
            n >= batch_size or counts[start] * (n + 1) > (1.0 + tolerance) * (total + c)
        ):
            chunks.append((start, i))
            start, total = i, 0
        total += c
    if start < len(counts):
        chunks.append((start, len(counts)))
    return chunks


# ------------------------------------------------------------------- rankings
def feature_ranks(
    attributions: Tensor, seed: int, tie_break: str, descending: bool = True
) -> Tensor:
    """Position of every feature in the removal order, (B, F) long (0 = first).

    Ties are broken by a seeded random permutation of the features (``"random"``, the
    same permutation for every example) or by feature index (``"index"``).
    """
    check_choice("tie_break", tie_break, TIE_BREAKS)
    b, num = attributions.shape
    device = attributions.device
    if tie_break == "random":
        perm = torch.randperm(num, generator=generator(seed, 11)).to(device)
    else:
        perm = torch.arange(num, device=device)
    key = attributions[:, perm]
    order = perm[torch.argsort(-key if descending else key, dim=1, stable=True)]
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(num, device=device).expand(b, num))
    return ranks


def as_fractions(fractions: Any) -> Tensor:
    """``fractions`` as a flat float64 tensor (range checks are the caller's)."""
    try:
        return torch.as_tensor(fractions, dtype=torch.float64).flatten()
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(
            f"fractions: expected a sequence of numbers, got {fractions!r}"
        ) from None


def curve_points(
    num: int, n_steps: Optional[int], fractions: Optional[Sequence[float]]
) -> Tuple[Tensor, Tensor]:
    """A curve's points: the (S,) numbers of features moved (long) and the (S,)
    fractions of the ``num`` features they are (float32, the curve's x-axis)."""
    counts = steps_to_counts(num, n_steps, fractions)
    return counts, (counts.double() / num).float()


def steps_to_counts(
    num: int, n_steps: Optional[int], fractions: Optional[Sequence[float]]
) -> Tensor:
    """Numbers of features moved at each curve point, (S,) long."""
    if fractions is not None:
        if n_steps is not None:
            raise ValueError("n_steps: give either n_steps or fractions, not both")
        f = as_fractions(fractions)
        if f.numel() < 2 or not bool(((f >= 0) & (f <= 1)).all()):
            raise ValueError(
                "fractions: expected at least two fractions in [0, 1], got "
                f"{f.tolist()}"
            )
        if not bool((f[1:] > f[:-1]).all()):
            raise ValueError("fractions: expected strictly increasing values")
        ks = torch.round(f * num).long()
        if not bool((ks[1:] > ks[:-1]).all()):
            raise ValueError(
                f"fractions: two fractions round to the same number of the {num} "
                "features"
            )
        return ks
    if n_steps is None:
        n_steps = min(num, MAX_DEFAULT_STEPS)
    n_steps = check_int("n_steps", n_steps, 1)
    if n_steps > num:
        raise ValueError(
            f"n_steps: {n_steps} is larger than the number of features ({num})"
        )
    j = torch.arange(n_steps + 1, dtype=torch.float64)
    return torch.floor(j * num / n_steps + 0.5).long()


# ---------------------------------------------------------------- correlations
def pearson(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise Pearson correlation (float64); 0.0 where either row is constant."""
    a = a.double() - a.double().mean(dim=-1, keepdim=True)
    b = b.double() - b.double().mean(dim=-1, keepdim=True)
    den = torch.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    num = (a * b).sum(-1)
    ok = den > 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), 0.0)


def rankdata(x: Tensor) -> Tensor:
    """Row-wise ranks with ties averaged (1-based), float64."""
    x = x.double()
    order = torch.argsort(x, dim=-1, stable=True)
    xs = torch.gather(x, -1, order)
    n = x.shape[-1]
    pos = torch.arange(1, n + 1, dtype=torch.float64, device=x.device).expand_as(xs)
    ranks_sorted = torch.empty_like(xs)
    for r in range(xs.shape[0]):
        _, inverse, counts = torch.unique_consecutive(
            xs[r], return_inverse=True, return_counts=True
        )
        sums = torch.zeros(counts.numel(), dtype=torch.float64, device=x.device)
        sums.index_add_(0, inverse, pos[r])
        ranks_sorted[r] = (sums / counts)[inverse]
    ranks = torch.empty_like(ranks_sorted)
    ranks.scatter_(-1, order, ranks_sorted)
    return ranks


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise Spearman correlation (Pearson of average ranks); 0.0 if constant."""
    return pearson(rankdata(a), rankdata(b))


def area(fractions: Tensor, curves: Tensor, mode: str) -> Tensor:
    """Trapezoidal area over the fractions, or the plain mean of the curve points."""
    check_choice("area", mode, ("trapezoid", "mean"))
    if mode == "mean":
        return curves.mean(dim=-1)
    x = fractions.to(curves.device, curves.dtype)
    return torch.trapezoid(curves, x, dim=-1)
