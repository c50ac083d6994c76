"""Training the surrogate and the explainer (Covert et al., ICLR 2023, section 4).

Both trainers fine-tune a **copy** of the model they are given (the classifier, the
explainer) and never touch the original, the surrogate or the caller's RNG state. Both
use AdamW with a linear warm-up then cosine decay, gradient clipping, an optional
validation loss on fixed held-out tuples (the best-validation weights are returned),
checkpoints that resume exactly (data order and subsets are functions of ``seed`` and
the step), and a tqdm bar.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..vit import CLASS_HEAD, TokenMask, ViTAdapter
from ._utils import (
    ImageSource,
    check_float,
    check_positive_int,
    cosine_factor,
    eval_mode,
    model_device,
    step_generator,
)
from .explainer import ShapleyExplainer, efficient_normalization
from .games import SurrogateGame, masked_logits
from .sampling import ShapleySampler, UniformSizeSampler, _SubsetSampler

__all__ = [
    "TrainingResult",
    "explainer_loss",
    "surrogate_loss",
    "train_explainer",
    "train_surrogate",
]

_CKPT_FORMAT = "captum_vit.shapley.training"
Data = Union[Tensor, Dataset]
PathLike = Union[str, Path]


class TrainingResult(NamedTuple):
    """What a trainer returns.

    Attributes:
        model: The trained copy, in eval mode (best validation weights when a
            validation set was given and ``select_best``).
        history: Per-epoch records: ``epoch``, ``step``, ``train_loss``, ``val_loss``
            (None without validation data), ``lr``, ``seconds``; plus ``best_val``.
    """

    model: nn.Module
    history: Dict[str, Any]


# ------------------------------------------------------------------------ losses
def surrogate_loss(teacher_probs: Tensor, student_logits: Tensor) -> Tensor:
    """Mean ``KL(f(x) ‖ g(x_s))`` over rows, with ``0 log 0 = 0``.

    Args:
        teacher_probs: (n, C) classifier probabilities on the full images.
        student_logits: (n, C) surrogate logits on the masked images.

    Returns:
        A scalar tensor.
    """
    log_q = F.log_softmax(student_logits.float(), dim=-1)
    p = teacher_probs.float()
    return (torch.special.xlogy(p, p) - p * log_q).sum(dim=-1).mean()


def explainer_loss(phi: Tensor, subsets: Tensor, values: Tensor, v0: Tensor) -> Tensor:
    """ViT Shapley's loss ``N · MSE(v(0) + sᵀφ, v(s))``.

    The mean runs over images, subsets and classes, and is multiplied by the number of
    patches N (Covert et al.'s scaling).

    Args:
        phi: (B, N, C) normalised Shapley values.
        subsets: (B, K, N) boolean (or 0/1) coalitions.
        values: (B, K, C) game values ``v(s)``.
        v0: (C,) or (B, C) value of the empty coalition.

    Returns:
        A scalar tensor.
    """
    v0 = v0 if v0.dim() == 2 else v0.unsqueeze(0)
    pred = v0.unsqueeze(1) + torch.einsum("bkn,bnc->bkc", subsets.to(phi.dtype), phi)
    return phi.shape[1] * F.mse_loss(pred, values.to(pred.dtype))


# ------------------------------------------------------------------ checkpoints
def _fingerprint(**kw: Any) -> Dict[str, Any]:
    return {
        k: (v if isinstance(v, (int, float, str, bool)) else str(v))
        for k, v in kw.items()
    }


def _load_checkpoint(path: Path, kind: str, fingerprint: Dict[str, Any]) -> Dict:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != _CKPT_FORMAT:
        raise ValueError(f"checkpoint: {path} is not a captum-vit training checkpoint")
    if payload.get("kind") != kind:
        raise ValueError(
            f"checkpoint: {path} belongs to a {payload.get('kind')} run, not {kind}"
        )
    if payload.get("fingerprint") != fingerprint:
        diff = {
            k: (payload.get("fingerprint", {}).get(k), v)
            for k, v in fingerprint.items()
            if payload.get("fingerprint", {}).get(k) != v
        }
        raise ValueError(
            f"checkpoint: {path} was written by a run with other settings "
            f"(checkpoint vs now: {diff}); delete it or pass resume=False"
        )
    return payload


def _save_checkpoint(path: Path, payload: Dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def _state_copy(model: nn.Module) -> Dict[str, Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------- the loop
def _train(
    kind: str,
    model: nn.Module,
    source: ImageSource,
    step_loss: Callable[[Tensor, int], Tensor],
    val_loss: Optional[Callable[[], float]],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    warmup: float,
    grad_clip: Optional[float],
    seed: int,
    checkpoint: Optional[PathLike],
    resume: bool,
    select_best: bool,
    max_steps: Optional[int],
    show_progress: bool,
    device: torch.device,
    fingerprint: Dict[str, Any],
) -> TrainingResult:
    steps_per_epoch = math.ceil(len(source) / batch_size)
    total = epochs * steps_per_epoch
    if max_steps is not None:
        total = min(total, check_positive_int("max_steps", max_steps))
    warmup_steps = int(round(warmup * total))
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    history: Dict[str, Any] = {
        "epoch": [],
        "step": [],
        "train_loss": [],
        "val_loss": [],
        "lr": [],
        "seconds": [],
        "best_val": None,
    }
    best_state: Optional[Dict[str, Tensor]] = None
    step, elapsed = 0, 0.0
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and resume and ckpt.is_file():
        payload = _load_checkpoint(ckpt, kind, fingerprint)
        model.load_state_dict(payload["model"])
        optim.load_state_dict(payload["optimizer"])
        step, elapsed = int(payload["step"]), float(payload["seconds"])
        history = payload["history"]
        best_state = payload.get("best")

    def save() -> None:
        if ckpt is None:
            return
        _save_checkpoint(
            ckpt,
            {
                "format": _CKPT_FORMAT,
                "kind": kind,
                "fingerprint": fingerprint,
                "step": step,
                "seconds": elapsed,
                "model": _state_copy(model),
                "optimizer": optim.state_dict(),
                "history": history,
                "best": best_state,
            },
        )

    bar = tqdm(total=total, initial=step, disable=not show_progress, desc=kind)
    running: List[float] = []
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        while step < total:
            epoch = step // steps_per_epoch
            batches = source.batches(batch_size, seed, epoch)
            for index in batches[step - epoch * steps_per_epoch :]:
                if step >= total:
                    break
                factor = cosine_factor(step, total, warmup_steps)
                for group in optim.param_groups:
                    group["lr"] = lr * factor
                torch.manual_seed(int(step_generator(seed, step, 3).initial_seed()))
                model.train()
                images = source.get(index, device)
                loss = step_loss(images, step)
                if not bool(torch.isfinite(loss)):
                    raise FloatingPointError(
                        f"{kind} training: non-finite loss at step {step} "
                        "(lower lr, check the data)"
                    )
                optim.zero_grad(set_to_none=True)
                loss.backward()
                if grad_clip is not None and grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, grad_clip)
                optim.step()
                running.append(float(loss.detach()))
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{running[-1]:.4g}")
            epoch_done = step % steps_per_epoch == 0 or step >= total
            if epoch_done:
                model.eval()
                val = val_loss() if val_loss is not None else None
                elapsed += time.perf_counter() - t0
                t0 = time.perf_counter()
                history["epoch"].append(epoch + 1)
                history["step"].append(step)
                history["train_loss"].append(
                    float(sum(running) / len(running)) if running else None
                )
                history["val_loss"].append(val)
                history["lr"].append(lr * cosine_factor(step - 1, total, warmup_steps))
                history["seconds"].append(elapsed)
                running = []
                if val is not None and (
                    history["best_val"] is None or val < history["best_val"]
                ):
                    history["best_val"] = val
                    best_state = _state_copy(model) if select_best else None
                if show_progress and val is not None:
                    bar.write(f"{kind} epoch {epoch + 1}: val loss {val:.5g}")
                save()
    bar.close()
    if select_best and best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    for p in model.parameters():
        p.grad = None
    return TrainingResult(model, history)


def _common_checks(
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    warmup: float,
    grad_clip: Optional[float],
) -> None:
    check_positive_int("epochs", epochs)
    check_positive_int("batch_size", batch_size)
    check_float("lr", lr, 0.0)
    check_float("weight_decay", weight_decay, 0.0)
    check_float("warmup", warmup, 0.0, 1.0)
    if grad_clip is not None:
        check_float("grad_clip", grad_clip, 0.0)


# --------------------------------------------------------------- surrogate
def train_surrogate(
    classifier: nn.Module,
    data: Data,
    val_data: Optional[Data] = None,
    *,
    epochs: int = 5,
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
    select_best: bool = True,
    max_steps: Optional[int] = None,
    show_progress: bool = False,
    device: Union[str, torch.device, None] = None,
) -> TrainingResult:
    """Fine-tune a copy of ``classifier`` to predict well with patches held out.

    Minimises ``E_x E_s KL(f(x) ‖ g(x_s))`` (Covert et al., eq. 14), where ``f`` is the
    frozen classifier on the full image and ``g(x_s)`` the copy evaluated on the kept
    patches with :class:`~captum_vit.vit.TokenMask` (attention masking by default).
    Subsets come from :class:`UniformSizeSampler` (size ``Unif{0..d}``, then members).

    Args:
        classifier: A supported timm ViT with at least one prefix token. It is copied;
            the original is only evaluated (eval mode, no grad) and left as found.
        data: Training images, preprocessed for the classifier: an (N, C, H, W)
            tensor or a map-style dataset of images / ``(image, label)`` pairs.
        val_data: Optional held-out images; the validation loss is the mean KL on
            fixed subsets (``subsets_per_image`` per image, drawn once from
            ``seed``).
        epochs: Passes over ``data``.
        batch_size: Images per step.
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
        seed: Seed for data order, subsets and any dropout.
        checkpoint: File written after every epoch; if it exists and ``resume``, the
            run continues from it (it must come from a run with the same settings).
        resume: Continue from ``checkpoint`` when present.
        select_best: Return the weights with the best validation loss.
        max_steps: Stop after this many optimizer steps (the schedule spans them).
        show_progress: Show a tqdm bar.
        device: Training device (default: the classifier's).

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
    adapter = ViTAdapter(classifier)
    adapter.require(CLASS_HEAD, "train_surrogate")
    if adapter.num_prefix_tokens < 1:
        raise ValueError(
            "classifier: ViT Shapley needs a model with at least one prefix token"
        )
    _common_checks(epochs, batch_size, lr, weight_decay, warmup, grad_clip)
    check_positive_int("subsets_per_image", subsets_per_image)
    check_positive_int("forward_batch_size", forward_batch_size)
    TokenMask(adapter, mode=mode)  # validates mode
    source = ImageSource(data, "data")
    val_source = ImageSource(val_data, "val_data") if val_data is not None else None
    device = model_device(classifier, device)
    d = adapter.num_patches
    sampler = sampler if sampler is not None else UniformSizeSampler(d)
    if sampler.num_players != d:
        raise ValueError(
            f"sampler: draws subsets of {sampler.num_players} players, the model has "
            f"{d} patches"
        )
    source_probe = source.get([0])
    adapter.check_images(source_probe, "data")
    teacher = adapter.model
    student = copy.deepcopy(teacher).to(device)
    for p in student.parameters():
        p.requires_grad_(True)
        p.grad = None
    student_mask = TokenMask(student, mode=mode)
    k = subsets_per_image

    def teacher_probs(images: Tensor) -> Tensor:
        with torch.no_grad(), eval_mode(teacher):
            out = adapter.logits(images.to(model_device(teacher)))
            return out.float().softmax(-1)

    def step_loss(images: Tensor, step: int) -> Tensor:
        p = teacher_probs(images).to(device)
        keep = sampler.sample(images.shape[0] * k, generator=step_generator(seed, step))
        logits = masked_logits(
            student_mask,
            images.repeat_interleave(k, dim=0),
            keep.to(device),
            forward_batch_size,
        )
        return surrogate_loss(p.repeat_interleave(k, dim=0), logits)

    val_fn: Optional[Callable[[], float]] = None
    if val_source is not None:
        n_val = len(val_source)
        val_keep = sampler.sample(n_val * k, generator=step_generator(seed, -1, 5))
        val_target = torch.cat(
            [
                teacher_probs(val_source.get(range(i, min(n_val, i + 256)), device))
                for i in range(0, n_val, 256)
            ]
        ).cpu()

        def _val() -> float:
            total, count = 0.0, 0
            with torch.no_grad():
                for i in range(0, n_val, batch_size):
                    idx = list(range(i, min(n_val, i + batch_size)))
                    x = val_source.get(idx, device).repeat_interleave(k, dim=0)
                    keep = val_keep[i * k : (i + len(idx)) * k].to(device)
                    logits = masked_logits(student_mask, x, keep, forward_batch_size)
                    p = val_target[i : i + len(idx)].to(device)
                    loss = surrogate_loss(p.repeat_interleave(k, dim=0), logits)
                    total += float(loss) * x.shape[0]
                    count += x.shape[0]
            return total / count

        val_fn = _val

    fingerprint = _fingerprint(
        n=len(source),
        n_val=len(val_source) if val_source is not None else 0,
        epochs=epochs,
        batch_size=batch_size,
        subsets_per_image=k,
        lr=lr,
        weight_decay=weight_decay,
        warmup=warmup,
        grad_clip=grad_clip,
        mode=mode,
        sampler=repr(sampler),
        seed=seed,
        max_steps=max_steps,
        num_patches=d,
    )
    return _train(
        "surrogate",
        student,
        source,
        step_loss,
        val_fn,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        warmup=warmup,
        grad_clip=grad_clip,
        seed=seed,
        checkpoint=checkpoint,
        resume=resume,
        select_best=select_best,
        max_steps=max_steps,
        show_progress=show_progress,
        device=device,
        fingerprint=fingerprint,
    )


# --------------------------------------------------------------- explainer
def train_explainer(
    explainer: ShapleyExplainer,
    surrogate: nn.Module,
    data: Data,
    val_data: Optional[Data] = None,
    *,
    epochs: int = 10,
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
    select_best: bool = True,
    max_steps: Optional[int] = None,
    show_progress: bool = False,
    device: Union[str, torch.device, None] = None,
) -> TrainingResult:
    """Train a copy of ``explainer`` to output the surrogate game's Shapley values.

    For every image, ``num_subsets`` coalitions are drawn from the Shapley kernel
    (paired with their complements by default), the frozen surrogate gives
    ``v(s)``, ``v(1)`` and the cached ``v(0)`` (probabilities), and the loss is
    ``N · MSE(v(0) + sᵀφ, v(s))`` over images, subsets and all classes, with ``φ`` the
    efficiently normalised explainer output (Covert et al., appendix C).

    Args:
        explainer: A :class:`ShapleyExplainer` (e.g. ``from_surrogate(surrogate)``);
            it is copied, the original is not modified.
        surrogate: The surrogate defining the game (only evaluated, left as found).
        data: Training images (tensor or dataset, as for :func:`train_surrogate`).
        val_data: Optional held-out images; the validation loss uses fixed tuples
            ``(x, s, v(s))`` computed once.
        epochs: Passes over ``data``.
        batch_size: Images per step (paper: 64).
        num_subsets: Coalitions per image per step (paper: 32; even when paired).
        paired: Paired (complement) sampling.
        lr: Peak AdamW learning rate (paper: 1e-4).
        weight_decay: AdamW weight decay.
        warmup: Fraction of steps for linear warm-up before the cosine decay.
        grad_clip: Gradient-norm clipping (paper: 1.0; None disables).
        game_mode: TokenMask mode used to evaluate the surrogate (``"drop"``: the same
            values as attention masking, on shorter sequences).
        forward_batch_size: Largest number of masked images per surrogate forward.
        seed: Seed for data order and subsets.
        checkpoint: Resumable checkpoint file, written after every epoch.
        resume: Continue from ``checkpoint`` when present.
        select_best: Return the weights with the best validation loss.
        max_steps: Stop after this many optimizer steps.
        show_progress: Show a tqdm bar.
        device: Training device (default: the explainer's).

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
    if not isinstance(explainer, ShapleyExplainer):
        raise TypeError(
            f"explainer: expected a ShapleyExplainer, got {type(explainer)}"
        )
    explainer.check_surrogate(surrogate)
    _common_checks(epochs, batch_size, lr, weight_decay, warmup, grad_clip)
    check_positive_int("num_subsets", num_subsets, 2 if paired else 1)
    if paired and num_subsets % 2:
        raise ValueError(f"num_subsets: must be even when paired, got {num_subsets}")
    game = SurrogateGame(surrogate, mode=game_mode, batch_size=forward_batch_size)
    source = ImageSource(data, "data")
    val_source = ImageSource(val_data, "val_data") if val_data is not None else None
    device = model_device(explainer, device)
    game.adapter.check_images(source.get([0]), "data")
    d = explainer.num_patches
    sampler = ShapleySampler(d)
    k = num_subsets
    model = copy.deepcopy(explainer).to(device)
    for p in model.parameters():
        p.grad = None
    sur_device = model_device(game.model)

    def targets(images: Tensor, keep: Tensor):
        x = images.to(sur_device)
        v1 = game.full_value(x)
        v0 = game.empty_value(x)
        vs = game(x.repeat_interleave(k, dim=0), keep.reshape(-1, d).to(sur_device))
        b = images.shape[0]
        return v1.to(device), v0.to(device), vs.reshape(b, k, -1).to(device)

    def step_loss(images: Tensor, step: int) -> Tensor:
        b = images.shape[0]
        keep = sampler.sample(
            b * k, paired=paired, generator=step_generator(seed, step)
        )
        keep = keep.reshape(b, k, d)
        v1, v0, vs = targets(images, keep)
        phi = efficient_normalization(model(images), v1, v0)
        return explainer_loss(phi, keep.to(device), vs, v0)

    val_fn: Optional[Callable[[], float]] = None
    if val_source is not None:
        n_val = len(val_source)
        val_keep = sampler.sample(
            n_val * k, paired=paired, generator=step_generator(seed, -1, 5)
        ).reshape(n_val, k, d)
        val_targets = []
        for i in range(0, n_val, batch_size):
            idx = list(range(i, min(n_val, i + batch_size)))
            v1, v0, vs = targets(val_source.get(idx, device), val_keep[idx])
            val_targets.append((idx, v1, v0, vs))

        def _val() -> float:
            total, count = 0.0, 0
            with torch.no_grad():
                for idx, v1, v0, vs in val_targets:
                    x = val_source.get(idx, device)
                    phi = efficient_normalization(model(x), v1, v0)
                    loss = explainer_loss(phi, val_keep[idx].to(device), vs, v0)
                    total += float(loss) * len(idx)
                    count += len(idx)
            return total / count

        val_fn = _val

    fingerprint = _fingerprint(
        n=len(source),
        n_val=len(val_source) if val_source is not None else 0,
        epochs=epochs,
        batch_size=batch_size,
        num_subsets=k,
        paired=paired,
        lr=lr,
        weight_decay=weight_decay,
        warmup=warmup,
        grad_clip=grad_clip,
        seed=seed,
        max_steps=max_steps,
        num_patches=d,
        num_classes=explainer.num_classes,
        shared_blocks=explainer.shared_blocks,
    )
    result = _train(
        "explainer",
        model,
        source,
        step_loss,
        val_fn,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        warmup=warmup,
        grad_clip=grad_clip,
        seed=seed,
        checkpoint=checkpoint,
        resume=resume,
        select_best=select_best,
        max_steps=max_steps,
        show_progress=show_progress,
        device=device,
        fingerprint=fingerprint,
    )
    result.model.surrogate = surrogate
    return result
