"""Training the surrogate and the explainer (Covert et al., ICLR 2023, section 4).

Both trainers fine-tune a **copy** of the model they are given (the classifier, the
explainer) and never touch the original, the surrogate or the caller's RNG state. Both
use AdamW with a linear warm-up then cosine decay, gradient clipping, an optional
validation loss on fixed held-out tuples (the best-validation weights are returned),
step checkpoints that resume exactly, and a tqdm bar.

One training loop serves both, on one process or many:

- **steps, not epochs**: the data is an endless stream visiting the images in a
  fresh seeded permutation every pass; step ``t`` trains on the stream's positions
  ``t·B .. t·B + B − 1`` (``B`` = the global ``batch_size``). The images of a step,
  their augmentation (every dataset item is read under a seed of its position) and
  the coalitions are functions of ``seed`` and ``t`` only.
- **distributed**: under ``torchrun`` (pass the :class:`~captum_vit.distributed.
  DistContext`) the trained model is wrapped in ``DistributedDataParallel``; every
  rank takes its share of the global batch, the frozen classifier or surrogate runs
  without grad on every rank, and losses are scaled so that the averaged gradient is
  the gradient of the global batch's mean loss, for any number of processes. Rank 0
  writes the checkpoints, so a run resumes exactly, also with another number of
  processes.
- **memory and precision**: ``micro_batch_size`` splits each rank's share into
  micro-batches whose gradients accumulate; ``amp="bf16"|"fp16"`` runs the forward
  passes under autocast (a GradScaler for fp16); TF32 matmuls on Ampere and newer
  GPUs for the run.
"""

from __future__ import annotations

import contextlib
import copy
import math
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import (
    Any,
    Callable,
    Dict,
    Iterator,
    List,
    NamedTuple,
    Optional,
    Tuple,
    Union,
)

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from .._guard import Interrupted, autocast, check_amp
from .._utils import check_int, check_number, progress_bar
from ..distributed import DistContext, shard
from ..vit import CLASS_HEAD, TokenMask, ViTAdapter
from ..vit.adapter import logits_of
from . import _checkpoints
from ._utils import (
    ImageSource,
    Micro,
    cosine_factor,
    eval_mode,
    item_seed,
    model_device,
    read_micro_batches,
    step_generator,
)
from .explainer import ShapleyExplainer, efficient_normalization
from .games import SurrogateGame, masked_chunks, masked_logits
from .sampling import ShapleySampler, UniformSizeSampler, _SubsetSampler

__all__ = [
    "TrainingResult",
    "explainer_loss",
    "surrogate_loss",
    "train_explainer",
    "train_surrogate",
]

Data = Union[Tensor, Dataset]
PathLike = Union[str, Path]
#: ``pieces(images, keep, weights, forward) -> [thunk]``: each thunk runs one forward
#: of the trained model and returns its weighted loss (a scalar).
Pieces = Callable[[Tensor, Tensor, Tensor, Callable], List[Callable[[], Tensor]]]


class TrainingResult(NamedTuple):
    """What a trainer returns.

    Attributes:
        model: The trained copy, in eval mode (best validation weights when a
            validation set was given and ``select_best``).
        history: One record per save point (every ``save_every`` steps and the
            last step): ``epoch`` (passes over the data so far), ``step``,
            ``train_loss`` (mean since the previous point), ``val_loss`` (None
            without validation data), ``lr``, ``seconds`` (training and validation
            so far, checkpoint writing excluded); plus ``best_val``,
            ``skipped_images`` (unreadable images met, left out of the loss) and
            ``world_sizes`` (processes of each run that contributed).
    """

    model: nn.Module
    history: Dict[str, Any]


# ------------------------------------------------------------------------ losses
def surrogate_loss(
    teacher_probs: Tensor, student_logits: Tensor, reduction: str = "mean"
) -> Tensor:
    """Mean ``KL(f(x) ‖ g(x_s))`` over rows, with ``0 log 0 = 0``.

    Args:
        teacher_probs: (n, C) classifier probabilities on the full images.
        student_logits: (n, C) surrogate logits on the masked images.
        reduction: ``"mean"`` (a scalar) or ``"none"`` (the (n,) per-row values).

    Returns:
        A scalar tensor, or (n,) for ``reduction="none"``.
    """
    log_q = F.log_softmax(student_logits.float(), dim=-1)
    p = teacher_probs.float()
    rows = (torch.special.xlogy(p, p) - p * log_q).sum(dim=-1)
    return rows if reduction == "none" else rows.mean()


def explainer_loss(
    phi: Tensor, subsets: Tensor, values: Tensor, v0: Tensor, reduction: str = "mean"
) -> Tensor:
    """ViT Shapley's loss ``N · MSE(v(0) + sᵀφ, v(s))``.

    The mean runs over images, subsets and classes, and is multiplied by the number of
    patches N (Covert et al.'s scaling).

    Args:
        phi: (B, N, C) normalised Shapley values.
        subsets: (B, K, N) boolean (or 0/1) coalitions.
        values: (B, K, C) game values ``v(s)``.
        v0: (C,) or (B, C) value of the empty coalition.
        reduction: ``"mean"`` (a scalar) or ``"none"`` (the (B,) per-image values,
            whose mean is the scalar).

    Returns:
        A scalar tensor, or (B,) for ``reduction="none"``.
    """
    v0 = v0 if v0.dim() == 2 else v0.unsqueeze(0)
    pred = v0.unsqueeze(1) + torch.einsum("bkn,bnc->bkc", subsets.to(phi.dtype), phi)
    if reduction == "none":
        err = (pred - values.to(pred.dtype)).pow(2)
        return phi.shape[1] * err.mean(dim=(1, 2))
    return phi.shape[1] * F.mse_loss(pred, values.to(pred.dtype))


# -------------------------------------------------------------------- settings
def _loop(identifies: bool = True) -> Any:
    """A field of :class:`_Settings`; ``identifies``: part of the fingerprint."""
    return field(metadata={"identifies": identifies})


@dataclass(frozen=True)
class _Settings:
    """The settings both trainers share, as their keyword arguments name them.

    The fields that identify a run (``identifies``) go into its checkpoint's
    fingerprint, with what each trainer adds (:meth:`fingerprint`); the others
    (where the checkpoint is, how many are kept, micro-batches, DataLoader workers,
    the progress bar) may change between a run and its resumption.
    """

    epochs: float = _loop()
    batch_size: int = _loop()
    lr: float = _loop()
    weight_decay: float = _loop()
    warmup: float = _loop()
    grad_clip: Optional[float] = _loop()
    seed: int = _loop()
    max_steps: Optional[int] = _loop()
    save_every: Optional[int] = _loop()
    amp: Optional[str] = _loop()
    checkpoint: Optional[PathLike] = _loop(False)
    resume: bool = _loop(False)
    keep_checkpoints: int = _loop(False)
    select_best: bool = _loop(False)
    micro_batch_size: Optional[int] = _loop(False)
    workers: int = _loop(False)
    show_progress: bool = _loop(False)

    @classmethod
    def of(cls, arguments: Dict[str, Any]) -> "_Settings":
        """The settings among a trainer's arguments (its ``locals()`` on entry),
        not yet checked (:meth:`check`).

        Args:
            arguments: The trainer's arguments by name.

        Returns:
            The settings.
        """
        return cls(**{f.name: arguments[f.name] for f in fields(cls)})

    def check(self) -> None:
        """Raise a ``ValueError`` naming the first bad setting.

        Raises:
            ValueError: a setting of the wrong type or out of range.
        """
        check_number("epochs", self.epochs, 0.0)
        if not self.epochs > 0:
            raise ValueError(f"epochs: expected a positive number, got {self.epochs}")
        check_int("batch_size", self.batch_size, 1)
        check_int("keep_checkpoints", self.keep_checkpoints, 0)
        check_number("lr", self.lr, 0.0)
        check_number("weight_decay", self.weight_decay, 0.0)
        check_number("warmup", self.warmup, 0.0, 1.0)
        if self.grad_clip is not None:
            check_number("grad_clip", self.grad_clip, 0.0)
        for name in ("max_steps", "save_every", "micro_batch_size"):
            value = getattr(self, name)
            if value is not None:
                check_int(name, value, 1)
        check_int("workers", self.workers, 0)

    def fingerprint(
        self, extra: Optional[Dict[str, Any]], **identity: Any
    ) -> Dict[str, Any]:
        """The settings that identify a run, as its checkpoint stores them.

        Args:
            extra: The caller's ``settings`` (e.g. the model and data of a command).
            **identity: What the trainer adds (data sizes, its own settings).

        Returns:
            Every identifying field, ``identity`` and ``extra``; values other than
            None, bool, int, float and str as their ``str``.

        Raises:
            TypeError: a name given twice.
        """
        own = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.metadata["identifies"]
        }
        values = dict(**own, **identity, **(extra or {}))
        return {
            k: v if isinstance(v, (int, float, str, bool, type(None))) else str(v)
            for k, v in values.items()
        }


# ------------------------------------------------------------------- the data
class _Stream:
    """The training examples: position ``p`` of an endless stream is image
    ``perm_e[p mod n]`` with ``e = p div n`` and ``perm_e`` a permutation seeded by
    ``(seed, e)``; step ``t`` takes positions ``t·B .. t·B + B − 1``."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self._perms: Dict[int, Tensor] = {}

    def index(self, position: int) -> int:
        epoch, i = divmod(position, self.n)
        perm = self._perms.get(epoch)
        if perm is None:
            if len(self._perms) > 1:
                self._perms.clear()
            gen = step_generator(self.seed, epoch, 17)
            perm = self._perms[epoch] = torch.randperm(self.n, generator=gen)
        return int(perm[i])

    def requests(self, step: int, tags: List[int]) -> List[Tuple[int, int, int]]:
        """``(index, seed, tag)`` of the step's positions ``tags``."""
        base = step * self.batch_size
        return [(self.index(base + j), item_seed(self.seed, base + j), j) for j in tags]


def _micro_plan(n: int, rank: int, world: int, micro: Optional[int]) -> List[List[int]]:
    """This rank's share of ``0..n-1`` (by position, as :func:`shard` does), in
    micro-batches of at most ``micro``."""
    mine = shard(list(range(n)), rank, world)
    size = len(mine) if micro is None else micro
    return [mine[i : i + size] for i in range(0, len(mine), size)]


@contextlib.contextmanager
def _tf32(device: torch.device) -> Iterator[None]:
    """TF32 matmuls and convolutions on Ampere and newer GPUs, restored after."""
    if device.type != "cuda" or torch.cuda.get_device_capability(device)[0] < 8:
        yield
        return
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _unused_parameters(model: nn.Module, forward: Callable, x: Tensor) -> bool:
    """Whether a forward/backward leaves some trainable parameter without a gradient
    (DDP must then look for unused parameters). Gradients are cleared after."""
    with torch.random.fork_rng(devices=[]):
        out = forward(x)
        logits_of(out).float().sum().backward()
    unused = any(p.requires_grad and p.grad is None for p in model.parameters())
    for p in model.parameters():
        p.grad = None
    return unused


class _Run(NamedTuple):
    """One run of the loop: its kind, settings, device, processes and checkpoint
    files (None without a ``checkpoint``)."""

    kind: str
    settings: _Settings
    device: torch.device
    ctx: DistContext
    files: Optional[_checkpoints.StepCheckpoints]


def _validation(
    run: _Run,
    source: Optional[ImageSource],
    prepare: Callable[[Tensor, List[int]], Any],
    loss: Callable[[Tensor, Any], Tensor],
) -> Optional[Callable[[], float]]:
    """A function computing the global mean validation loss on every rank.

    Each rank takes its share of the validation images; ``prepare(images, tags)``
    computes the fixed targets once (cached with the images), ``loss(images,
    targets)`` the per-image losses under no grad. Unreadable images are left out.
    """
    if source is None:
        return None
    ctx, device, opts = run.ctx, run.device, run.settings
    n = len(source)
    plan = _micro_plan(n, ctx.rank, ctx.world_size, opts.micro_batch_size or 256)
    cache: List[Tuple[Micro, Any]] = []

    def requests() -> Iterator[List[Tuple[int, int, int]]]:
        for tags in plan:
            yield [(p, item_seed(opts.seed, -1 - p), p) for p in tags]

    def fn() -> float:
        if not cache:
            with torch.no_grad(), autocast(device, opts.amp):
                for micro in read_micro_batches(
                    source, requests, len(plan), device, opts.workers
                ):
                    cache.append((micro, prepare(micro.images, micro.tags)))
        stats = torch.zeros(2, dtype=torch.float64, device=device)
        with torch.no_grad(), autocast(device, opts.amp):
            for micro, targets in cache:
                per_image = loss(micro.images, targets).double()
                ok = micro.ok.to(per_image.dtype)
                stats[0] += (per_image * ok).sum()
                stats[1] += ok.sum()
        ctx.all_reduce(stats)
        return float(stats[0] / stats[1]) if float(stats[1]) > 0 else float("nan")

    return fn


# ------------------------------------------------------------------- the loop
def _interrupted_line(
    kind: str,
    step: int,
    total: int,
    ckpt: Optional[Path],
    kept: Optional[int],
    save_every: int,
) -> str:
    """What Ctrl-C during training prints: the step, what is kept, how to resume."""
    where = f"interrupted at {kind} step {step} of {total}"
    if ckpt is None:
        return f"{where}; no checkpoint file was given, so nothing is kept"
    if kept is None:
        return (
            f"{where}, before its first checkpoint (every {save_every} steps): "
            "nothing is kept for this stage; the same command starts it again"
        )
    return (
        f"{where}; kept: the checkpoint of step {kept} ({ckpt}); run the same command "
        "again to resume from it"
    )


def _train(
    run: _Run,
    model: nn.Module,
    source: ImageSource,
    subsets: Callable[[int], Tensor],
    pieces: Pieces,
    val_loss: Optional[Callable[[], float]],
    probe_forward: Callable[[nn.Module, Tensor], Any],
) -> TrainingResult:
    ctx, device, opts, files = run.ctx, run.device, run.settings, run.files
    world, n, b = ctx.world_size, len(source), opts.batch_size
    if b < world:
        raise ValueError(
            f"batch_size: the global batch of {b} image(s) needs at least one image "
            f"per process ({world} processes)"
        )
    steps_per_epoch = math.ceil(n / b)
    total = max(1, math.ceil(opts.epochs * n / b))
    if opts.max_steps is not None:
        total = min(total, opts.max_steps)
    save_every = opts.save_every or steps_per_epoch
    warmup_steps = int(round(opts.warmup * total))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(trainable, lr=opts.lr, weight_decay=opts.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if opts.amp == "fp16" else None
    history: Dict[str, Any] = {
        "epoch": [],
        "step": [],
        "train_loss": [],
        "val_loss": [],
        "lr": [],
        "seconds": [],
        "best_val": None,
        "skipped_images": 0,
        "world_sizes": [],
    }
    best_state: Optional[Dict[str, Tensor]] = None
    best_step: Optional[int] = None
    step, elapsed = 0, 0.0
    finished = False  # resumed from the cut-down checkpoint of a finished run
    if files is not None and opts.resume:
        payload = ctx.agree(files.read, (ValueError,))
        seen = ctx.all_gather(None if payload is None else int(payload["step"]))
        if len(set(seen)) > 1:
            exc = ValueError(
                f"checkpoint: the processes see different checkpoints at {files.path} "
                f"(steps {seen}): every process must see the same output folder"
            )
            exc.all_ranks = True  # type: ignore[attr-defined]
            raise exc
        if payload is not None:
            model.load_state_dict(payload["model"])
            if payload.get("optimizer") is not None:  # None: a finished run's
                optim.load_state_dict(payload["optimizer"])
            if scaler is not None and payload.get("scaler"):
                scaler.load_state_dict(payload["scaler"])
            step, elapsed = int(payload["step"]), float(payload["seconds"])
            history = payload["history"]
            best_state = payload.get("best")
            best_step = payload.get("best_step")
            if best_state is None and best_step == step:  # the weights themselves
                best_state = _checkpoints.state_copy(model)
            finished = bool(payload.get("finished"))
    if step < total:
        history["world_sizes"] = list(history.get("world_sizes", [])) + [world]

    forward: Callable = model
    ddp: Optional[nn.parallel.DistributedDataParallel] = None
    if ctx.distributed:
        probe = source.get([0], device)
        unused = _unused_parameters(model, lambda x: probe_forward(model, x), probe)
        ddp = nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=unused,
        )
        forward = ddp

    def save() -> None:
        """The step checkpoint, by rank 0."""
        if files is None or not ctx.is_main:
            return
        files.write(
            step,
            elapsed,
            model,
            optim.state_dict(),
            scaler.state_dict() if scaler is not None else None,
            history,
            best_state,
            best_step,
        )

    stream = _Stream(n, b, opts.seed)
    plan = _micro_plan(b, ctx.rank, world, opts.micro_batch_size)

    def requests() -> Iterator[List[Tuple[int, int, int]]]:
        for t in range(step, total):
            for tags in plan:
                yield stream.requests(t, tags)

    bar = progress_bar(
        total=total * b,
        initial=step * b,
        enabled=opts.show_progress and ctx.is_main,
        desc=run.kind,
        unit="img",
    )
    skipped: List[str] = []

    def on_skip(reason: str) -> None:
        skipped.append(reason)
        if len(skipped) <= 5:
            bar.write(
                f"{run.kind}: skipped an unreadable image ({reason})", file=sys.stderr
            )

    running: List[float] = []
    t0 = time.perf_counter()
    rng_devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=rng_devices), _tf32(device):
            micros = read_micro_batches(
                source,
                requests,
                (total - step) * len(plan),
                device,
                opts.workers,
                on_skip,
            )
            while step < total:
                factor = cosine_factor(step, total, warmup_steps)
                for group in optim.param_groups:
                    group["lr"] = opts.lr * factor
                torch.manual_seed(
                    int(step_generator(opts.seed, step, 3).initial_seed())
                )
                model.train()
                keep = subsets(step)  # (B, k, d): the whole global batch's coalitions
                optim.zero_grad(set_to_none=True)
                stats = torch.zeros(3, dtype=torch.float64, device=device)
                n_skipped = len(skipped)
                for m in range(len(plan)):
                    micro = next(micros)
                    weights = micro.ok.float() * (world / b)
                    with autocast(device, opts.amp):
                        thunks = pieces(
                            micro.images, keep[micro.tags], weights, forward
                        )
                    for i, thunk in enumerate(thunks):
                        last = m == len(plan) - 1 and i == len(thunks) - 1
                        sync = ddp.no_sync() if ddp is not None and not last else None
                        with sync or contextlib.nullcontext():
                            with autocast(device, opts.amp):
                                loss = thunk()
                            (
                                scaler.scale(loss) if scaler is not None else loss
                            ).backward()
                        stats[0] += loss.detach().double()
                        stats[1] += (~torch.isfinite(loss.detach())).double()
                stats[2] = len(skipped) - n_skipped
                ctx.all_reduce(stats)
                history["skipped_images"] += int(stats[2])
                if float(stats[1]) > 0 and scaler is None:
                    raise FloatingPointError(
                        f"{run.kind} training: non-finite loss at step {step} "
                        "(lower lr, check the data)"
                    )
                if scaler is not None:
                    scaler.unscale_(optim)
                if opts.grad_clip is not None and opts.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(trainable, opts.grad_clip)
                if scaler is not None:
                    scaler.step(optim)
                    scaler.update()
                else:
                    optim.step()
                if float(stats[1]) == 0:
                    running.append(float(stats[0]) / world)
                step += 1
                bar.update(b)
                if running:
                    bar.set_postfix(loss=f"{running[-1]:.4g}")
                if step % save_every == 0 or step == total:
                    model.eval()
                    val = val_loss() if val_loss is not None else None
                    elapsed += time.perf_counter() - t0
                    history["epoch"].append(round(step * b / n, 4))
                    history["step"].append(step)
                    history["train_loss"].append(
                        float(sum(running) / len(running)) if running else None
                    )
                    history["val_loss"].append(val)
                    history["lr"].append(
                        opts.lr * cosine_factor(step - 1, total, warmup_steps)
                    )
                    history["seconds"].append(elapsed)
                    running = []
                    if val is not None and (
                        history["best_val"] is None or val < history["best_val"]
                    ):
                        history["best_val"] = val
                        best_state = (
                            _checkpoints.state_copy(model) if opts.select_best else None
                        )
                        best_step = step if opts.select_best else None
                    if val is not None and opts.show_progress and ctx.is_main:
                        bar.write(
                            f"{run.kind} step {step}: val loss {val:.5g}",
                            file=sys.stderr,
                        )
                    save()
                    t0 = time.perf_counter()  # seconds: training, not checkpoints
    except KeyboardInterrupt:
        ckpt, kept = (files.path, files.step) if files is not None else (None, None)
        raise Interrupted(
            _interrupted_line(run.kind, step, total, ckpt, kept, save_every)
        ) from None
    finally:
        bar.close()
    if opts.select_best and best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    for p in model.parameters():
        p.grad = None
    if files is not None and ctx.is_main and not finished:
        files.finish(step, elapsed, model, history)
    return TrainingResult(model, history)


def _make_run(
    kind: str,
    settings: _Settings,
    fingerprint: Dict[str, Any],
    device: torch.device,
    ctx: Optional[DistContext],
) -> _Run:
    """The run of ``kind``: its precision checked for ``device``, one process
    unless ``ctx`` says otherwise, its checkpoint files if it has a checkpoint."""
    check_amp(device, settings.amp)
    ckpt = settings.checkpoint
    return _Run(
        kind=kind,
        settings=settings,
        device=device,
        ctx=ctx if ctx is not None else DistContext(device=device),
        files=(
            _checkpoints.StepCheckpoints(
                Path(ckpt), kind, fingerprint, settings.keep_checkpoints
            )
            if ckpt is not None
            else None
        ),
    )


# --------------------------------------------------------------- surrogate
def train_surrogate(
    classifier: nn.Module,
    data: Data,
    val_data: Optional[Data] = None,
    *,
    epochs: float = 5,
    batch_size: int = 64,
    subsets_per_image: int = 1,
    lr: float = 1e-5,
    weight_decay: float = 0.01,
    warmup: float = 0.05,
    grad_clip: Optional[float] = 1.0,
    mode: str = "attention",
    sampler: Optional[_SubsetSampler] = None,
    forward_batch_size: int = 256,
    seed: int = 0,
    checkpoint: Optional[PathLike] = None,
    resume: bool = True,
    keep_checkpoints: int = 1,
    select_best: bool = True,
    max_steps: Optional[int] = None,
    save_every: Optional[int] = None,
    micro_batch_size: Optional[int] = None,
    amp: Optional[str] = None,
    workers: int = 0,
    ctx: Optional[DistContext] = None,
    settings: Optional[Dict[str, Any]] = None,
    show_progress: bool = False,
    device: Union[str, torch.device, None] = None,
) -> TrainingResult:
    """Fine-tune a copy of ``classifier`` to predict well with patches held out.

    Minimises ``E_x E_s KL(f(x) ‖ g(x_s))`` (Covert et al., eq. 14), where ``f`` is the
    frozen classifier on the full image and ``g(x_s)`` the copy evaluated on the kept
    patches with :class:`~captum_vit.vit.TokenMask` (attention masking by default).
    Subsets come from :class:`UniformSizeSampler` (size ``Unif{0..d}``, then members).
    See the module docstring for steps, distributed runs, micro-batches and precision.

    Args:
        classifier: A supported ViT with at least one prefix token. It is copied;
            the original is only evaluated (eval mode, no grad) and left as found.
        data: Training images, preprocessed for the classifier: an (N, C, H, W)
            tensor or a map-style dataset of images, ``(image, label)`` pairs or the
            dict items of :mod:`captum_vit.data` (its training transform, if any, is
            applied under a seed of each example's position).
        val_data: Optional held-out images; the validation loss is the mean KL on
            fixed subsets (``subsets_per_image`` per image, drawn once from
            ``seed``).
        epochs: Passes over ``data`` (``ceil(epochs · N / batch_size)`` steps).
        batch_size: Images per step, over all processes.
        subsets_per_image: Subsets drawn per image per step (the classifier's output
            is computed once per image).
        lr: Peak AdamW learning rate (paper: 1e-5 for ViT-B).
        weight_decay: AdamW weight decay.
        warmup: Fraction of the steps used for linear warm-up.
        grad_clip: Gradient-norm clipping (None disables).
        mode: TokenMask mode, ``"attention"`` (paper) or ``"drop"`` (same function for
            token-pooled models, faster).
        sampler: Subset sampler (default ``UniformSizeSampler(num_patches)``).
        forward_batch_size: Largest number of masked images per forward pass.
        seed: Seed for data order, augmentation, subsets and any dropout.
        checkpoint: File written every ``save_every`` steps (by rank 0); if it exists
            and ``resume``, the run continues from it (it must come from a run with
            the same settings; the number of processes may differ).
        resume: Continue from ``checkpoint`` when present.
        keep_checkpoints: Step checkpoints kept: the newest ``N`` (``checkpoint``
            itself, the older ones beside it as ``<stem>.step<S>.pt``). When the
            run ends, the newest is cut down to the returned weights and the
            history (its optimiser state could only continue this run, and a
            longer run has other settings): running again returns at once. ``0``
            removes the checkpoints when the run ends (running again trains
            again).
        select_best: Return the weights with the best validation loss.
        max_steps: Stop after this many optimizer steps (the schedule spans them).
        save_every: Steps between validation, history records and checkpoints
            (default: one pass over the data).
        micro_batch_size: Images per forward/backward pass on each process; the
            process's share of the batch accumulates gradients over micro-batches
            (default: the whole share at once).
        amp: ``"bf16"`` or ``"fp16"`` (CUDA only, with a GradScaler) autocast.
        workers: DataLoader worker processes reading a dataset.
        ctx: The process's :class:`~captum_vit.distributed.DistContext` under
            ``torchrun`` (default: one process).
        settings: Extra settings identifying the run in its checkpoint (e.g. the
            model and data descriptions of a command).
        show_progress: Show a tqdm bar (rank 0).
        device: Training device (default: the context's under torchrun, else the
            classifier's).

    Returns:
        A :class:`TrainingResult` whose ``model`` is the surrogate (eval mode).

    Raises:
        TypeError/ValueError: unsupported model, bad data or hyper-parameters, or a
            checkpoint from a different run.

    Examples::

        >>> result = train_surrogate(model, train_images, val_images, epochs=2,
        ...                          show_progress=True)
        >>> surrogate = result.model
    """
    opts = _Settings.of(locals())
    adapter = ViTAdapter(classifier)
    adapter.require(CLASS_HEAD, "train_surrogate")
    if adapter.num_prefix_tokens < 1:
        raise ValueError(
            "classifier: ViT Shapley needs a model with at least one prefix token"
        )
    opts.check()
    check_int("subsets_per_image", subsets_per_image, 1)
    check_int("forward_batch_size", forward_batch_size, 1)
    TokenMask(adapter, mode=mode)  # validates mode
    source = ImageSource(data, "data")
    val_source = ImageSource(val_data, "val_data") if val_data is not None else None
    device = _device(ctx, classifier, device)
    d = adapter.num_patches
    sampler = sampler if sampler is not None else UniformSizeSampler(d)
    if sampler.num_players != d:
        raise ValueError(
            f"sampler: draws subsets of {sampler.num_players} players, the model has "
            f"{d} patches"
        )
    adapter.check_images(source.get([0]), "data")
    teacher = adapter.model
    student = copy.deepcopy(teacher).to(device)
    for p in student.parameters():
        p.requires_grad_(True)
        p.grad = None
    masks = {m: TokenMask(student, mode=m) for m in ("attention", mode)}
    k = subsets_per_image
    b = batch_size

    def teacher_probs(images: Tensor) -> Tensor:
        with torch.no_grad(), eval_mode(teacher):
            out = adapter.logits(images.to(model_device(teacher)))
            return out.float().softmax(-1).to(device)

    def subsets(step: int) -> Tensor:
        gen = step_generator(seed, step)
        return sampler.sample(b * k, generator=gen).reshape(b, k, d)

    def pieces(
        images: Tensor, keep: Tensor, weights: Tensor, forward: Callable
    ) -> List[Callable[[], Tensor]]:
        target = teacher_probs(images).repeat_interleave(k, dim=0)
        x = images.repeat_interleave(k, dim=0)
        rows = keep.reshape(-1, d).to(device)
        w = weights.repeat_interleave(k) / k  # an image's loss: mean over its subsets

        def piece(idx: Tensor, chunk_mode: str) -> Tensor:
            with masks[chunk_mode].keep(rows[idx]):
                logits = logits_of(forward(x[idx]))
            return (surrogate_loss(target[idx], logits, "none") * w[idx]).sum()

        return [
            (lambda i=idx, m=cm: piece(i, m))
            for idx, cm in masked_chunks(rows, mode, forward_batch_size)
        ]

    fingerprint = opts.fingerprint(
        settings,
        n=len(source),
        n_val=len(val_source) if val_source is not None else 0,
        subsets_per_image=k,
        mode=mode,
        sampler=repr(sampler),
        num_patches=d,
    )
    run = _make_run("surrogate", opts, fingerprint, device, ctx)
    val_keep: Optional[Tensor] = None
    if val_source is not None:
        gen = step_generator(seed, -1, 5)
        val_keep = sampler.sample(len(val_source) * k, generator=gen).reshape(-1, k, d)

    def val_prepare(images: Tensor, tags: List[int]) -> Tuple[Tensor, Tensor]:
        return teacher_probs(images), val_keep[tags].reshape(-1, d).to(device)

    def val_per_image(images: Tensor, targets: Tuple[Tensor, Tensor]) -> Tensor:
        probs, rows = targets
        x = images.repeat_interleave(k, dim=0)
        logits = masked_logits(masks[mode], x, rows, forward_batch_size)
        kl = surrogate_loss(probs.repeat_interleave(k, dim=0), logits, "none")
        return kl.reshape(-1, k).mean(dim=1)

    return _train(
        run,
        student,
        source,
        subsets,
        pieces,
        _validation(run, val_source, val_prepare, val_per_image),
        lambda model, x: model(x),
    )


def _device(
    ctx: Optional[DistContext], model: nn.Module, device: Union[str, torch.device, None]
) -> torch.device:
    if device is not None:
        return torch.device(device)
    if ctx is not None and ctx.distributed:
        return ctx.device
    return model_device(model)


# --------------------------------------------------------------- explainer
def train_explainer(
    explainer: ShapleyExplainer,
    surrogate: nn.Module,
    data: Data,
    val_data: Optional[Data] = None,
    *,
    epochs: float = 10,
    batch_size: int = 32,
    num_subsets: int = 32,
    paired: bool = True,
    lr: float = 1e-4,
    weight_decay: float = 0.01,
    warmup: float = 0.05,
    grad_clip: Optional[float] = 1.0,
    game_mode: str = "drop",
    forward_batch_size: int = 1024,
    seed: int = 0,
    checkpoint: Optional[PathLike] = None,
    resume: bool = True,
    keep_checkpoints: int = 1,
    select_best: bool = True,
    max_steps: Optional[int] = None,
    save_every: Optional[int] = None,
    micro_batch_size: Optional[int] = None,
    amp: Optional[str] = None,
    workers: int = 0,
    ctx: Optional[DistContext] = None,
    settings: Optional[Dict[str, Any]] = None,
    show_progress: bool = False,
    device: Union[str, torch.device, None] = None,
) -> TrainingResult:
    """Train a copy of ``explainer`` to output the surrogate game's Shapley values.

    For every image, ``num_subsets`` coalitions are drawn from the Shapley kernel
    (paired with their complements by default), the frozen surrogate gives
    ``v(s)``, ``v(1)`` and the cached ``v(0)`` (probabilities), and the loss is
    ``N · MSE(v(0) + sᵀφ, v(s))`` over images, subsets and all classes, with ``φ`` the
    efficiently normalised explainer output (Covert et al., appendix C). See the
    module docstring for steps, distributed runs, micro-batches and precision.

    Args:
        explainer: A :class:`ShapleyExplainer` (e.g. ``from_surrogate(surrogate)``);
            it is copied, the original is not modified.
        surrogate: The surrogate defining the game (only evaluated, without grad, on
            every process; left as found).
        data: Training images (tensor or dataset, as for :func:`train_surrogate`).
        val_data: Optional held-out images; the validation loss uses fixed tuples
            ``(x, s, v(s))`` computed once.
        epochs: Passes over ``data`` (``ceil(epochs · N / batch_size)`` steps).
        batch_size: Images per step over all processes (paper: 64).
        num_subsets: Coalitions per image per step (paper: 32; even when paired).
        paired: Paired (complement) sampling.
        lr: Peak AdamW learning rate (paper: 1e-4).
        weight_decay: AdamW weight decay.
        warmup: Fraction of steps for linear warm-up before the cosine decay.
        grad_clip: Gradient-norm clipping (paper: 1.0; None disables).
        game_mode: TokenMask mode used to evaluate the surrogate (``"drop"``: the same
            values as attention masking, on shorter sequences).
        forward_batch_size: Largest number of masked images per surrogate forward.
        seed: Seed for data order, augmentation and subsets.
        checkpoint: Resumable checkpoint file, written every ``save_every`` steps.
        resume: Continue from ``checkpoint`` when present.
        keep_checkpoints: Step checkpoints kept: the newest ``N`` (``checkpoint``
            itself, the older ones beside it as ``<stem>.step<S>.pt``). When the
            run ends, the newest is cut down to the returned weights and the
            history (its optimiser state could only continue this run, and a
            longer run has other settings): running again returns at once. ``0``
            removes the checkpoints when the run ends (running again trains
            again).
        select_best: Return the weights with the best validation loss.
        max_steps: Stop after this many optimizer steps.
        save_every: Steps between validation, history records and checkpoints
            (default: one pass over the data).
        micro_batch_size: Images per forward/backward pass on each process
            (gradient accumulation; default: the process's whole share).
        amp: ``"bf16"`` or ``"fp16"`` (CUDA only, with a GradScaler) autocast.
        workers: DataLoader worker processes reading a dataset.
        ctx: The process's :class:`~captum_vit.distributed.DistContext` under
            ``torchrun`` (default: one process).
        settings: Extra settings identifying the run in its checkpoint.
        show_progress: Show a tqdm bar (rank 0).
        device: Training device (default: the context's under torchrun, else the
            explainer's).

    Returns:
        A :class:`TrainingResult` whose ``model`` is the trained explainer (eval mode,
        with ``surrogate`` attached).

    Raises:
        ValueError: the explainer's patch grid or class count differs from the
            surrogate's, bad data or hyper-parameters, or a foreign checkpoint.

    Examples::

        >>> explainer = ShapleyExplainer.from_surrogate(surrogate)
        >>> result = train_explainer(explainer, surrogate, train_images, val_images)
        >>> phi = result.model.shapley_values(images)      # (B, N, C)
    """
    opts = _Settings.of(locals())
    if not isinstance(explainer, ShapleyExplainer):
        raise TypeError(
            f"explainer: expected a ShapleyExplainer, got {type(explainer)}"
        )
    explainer.check_surrogate(surrogate)
    opts.check()
    check_int("num_subsets", num_subsets, 2 if paired else 1)
    if paired and num_subsets % 2:
        raise ValueError(f"num_subsets: must be even when paired, got {num_subsets}")
    game = SurrogateGame(surrogate, mode=game_mode, batch_size=forward_batch_size)
    source = ImageSource(data, "data")
    val_source = ImageSource(val_data, "val_data") if val_data is not None else None
    device = _device(ctx, explainer, device)
    game.adapter.check_images(source.get([0]), "data")
    d = explainer.num_patches
    sampler = ShapleySampler(d)
    k = num_subsets
    b = batch_size
    model = copy.deepcopy(explainer).to(device)
    for p in model.parameters():
        p.grad = None
    sur_device = model_device(game.model)

    def targets(images: Tensor, keep: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        x = images.to(sur_device)
        v1 = game.full_value(x)
        v0 = game.empty_value(x)
        vs = game(x.repeat_interleave(k, dim=0), keep.reshape(-1, d).to(sur_device))
        n = images.shape[0]
        return v1.to(device), v0.to(device), vs.reshape(n, k, -1).to(device)

    def subsets(step: int) -> Tensor:
        gen = step_generator(seed, step)
        return sampler.sample(b * k, paired=paired, generator=gen).reshape(b, k, d)

    def pieces(
        images: Tensor, keep: Tensor, weights: Tensor, forward: Callable
    ) -> List[Callable[[], Tensor]]:
        v1, v0, vs = targets(images, keep)
        keep = keep.to(device)

        def piece() -> Tensor:
            phi = efficient_normalization(forward(images).float(), v1, v0)
            return (explainer_loss(phi, keep, vs, v0, "none") * weights).sum()

        return [piece]

    fingerprint = opts.fingerprint(
        settings,
        n=len(source),
        n_val=len(val_source) if val_source is not None else 0,
        num_subsets=k,
        paired=paired,
        num_patches=d,
        num_classes=explainer.num_classes,
        shared_blocks=explainer.shared_blocks,
    )
    run = _make_run("explainer", opts, fingerprint, device, ctx)
    val_keep: Optional[Tensor] = None
    if val_source is not None:
        gen = step_generator(seed, -1, 5)
        val_keep = sampler.sample(len(val_source) * k, paired=paired, generator=gen)
        val_keep = val_keep.reshape(-1, k, d)

    def val_prepare(images: Tensor, tags: List[int]) -> Tuple[Tensor, ...]:
        keep = val_keep[tags]
        return (keep.to(device),) + targets(images, keep)

    def val_per_image(images: Tensor, prepared: Tuple[Tensor, ...]) -> Tensor:
        keep, v1, v0, vs = prepared
        phi = efficient_normalization(model(images).float(), v1, v0)
        return explainer_loss(phi, keep, vs, v0, "none")

    result = _train(
        run,
        model,
        source,
        subsets,
        pieces,
        _validation(run, val_source, val_prepare, val_per_image),
        lambda m, x: m(x),
    )
    result.model.surrogate = surrogate
    return result
