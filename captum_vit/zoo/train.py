"""Train (or evaluate) the embedded default ViT on Fashion-MNIST scenes.

Training scenes are generated on the fly from the Fashion-MNIST *training* split,
fresh every epoch (epoch ``e`` draws from ``numpy.random.default_rng([seed, e])``, so a
resumed run sees exactly the data an uninterrupted one would). Held-out scenes come from
the *test* split. The model is a stock ``timm`` ``VisionTransformer``; optimisation is
AdamW with linear warm-up and cosine decay and light label smoothing.

Usage::

    python -m captum_vit.zoo.train --out runs/zoo   # the shipped recipe (MODEL_CARD.md)
    python -m captum_vit.zoo.train --out runs/zoo --resume
    python -m captum_vit.zoo.train --evaluate-only            # shipped weights

Each epoch writes ``<out>/checkpoint.pt`` (full training state, for ``--resume``) and
``<out>/default_vit.pt`` (the shipped format: ``{"config", "state_dict"}``, loadable
with ``torch.load(..., weights_only=True)``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .._utils import progress_bar
from . import (  # _ARCH_KEYS: what --init's weights must share with the trained model
    _ARCH_KEYS,
    CLASS_NAMES,
    DEFAULT_WEIGHTS,
    MEAN,
    STD,
    build_model,
    generate_scenes,
    load_default_config,
    load_default_model,
    make_scenes,
    preprocess,
)

__all__ = ["evaluate", "evaluate_dropped_tokens", "main", "parse_args", "train"]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv: arguments (without the program name); ``sys.argv[1:]`` when None.

    Returns:
        The parsed arguments.
    """
    p = argparse.ArgumentParser(
        prog="python -m captum_vit.zoo.train",
        description="Train or evaluate the default ViT on Fashion-MNIST scenes.",
    )
    p.add_argument("--out", type=Path, default=Path("runs/zoo"), help="run folder")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--train-size", type=int, default=32000, help="scenes per epoch")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    p.add_argument("--min-lr", type=float, default=1e-5)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="DataLoader processes generating scenes beside training (0: inline)",
    )
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--patch-size", type=int, default=8)
    p.add_argument("--embed-dim", type=int, default=128)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--mlp-ratio", type=float, default=4.0)
    p.add_argument(
        "--eval-size", type=int, default=5000, help="held-out scenes, final eval"
    )
    p.add_argument(
        "--epoch-eval-size", type=int, default=1000, help="held-out scenes per epoch"
    )
    p.add_argument("--eval-seed", type=int, default=1234)
    p.add_argument("--data-root", type=str, default=None, help="Fashion-MNIST root")
    p.add_argument("--resume", action="store_true", help="continue <out>/checkpoint.pt")
    p.add_argument(
        "--init",
        type=Path,
        default=None,
        help="start from these weights (an earlier run's default_vit.pt, same "
        "architecture) instead of random ones: a second schedule",
    )
    p.add_argument(
        "--stop-after",
        type=int,
        default=None,
        help="stop after this many epochs in total (continue later with --resume)",
    )
    p.add_argument(
        "--evaluate-only",
        action="store_true",
        help="evaluate --weights (default: shipped) incl. random token dropping",
    )
    p.add_argument("--weights", type=Path, default=None)
    return p.parse_args(argv)


def _lr_factor(step: int, warmup: int, total: int, floor: float) -> float:
    """Linear warm-up to 1, then cosine decay to ``floor``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, batch: int = 250
) -> float:
    """Top-1 accuracy of ``model`` on scenes in [0, 1].

    Args:
        model: the classifier (put in eval mode here; its mode is restored).
        images: (n, 3, S, S) float32 images in [0, 1].
        labels: (n,) int labels.
        batch: forward batch size.

    Returns:
        The fraction of correct predictions (0 for n = 0).
    """
    was_training = model.training
    model.eval()
    correct = 0
    try:
        for i in range(0, len(labels), batch):
            logits = model(preprocess(images[i : i + batch]))
            pred = logits.argmax(dim=1).numpy()
            correct += int((pred == labels[i : i + batch]).sum())
    finally:
        model.train(was_training)
    return correct / max(1, len(labels))


@torch.no_grad()
def evaluate_dropped_tokens(
    model: torch.nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    fractions: Sequence[float] = (0.25, 0.5, 0.75),
    seed: int = 0,
    batch: int = 250,
) -> Dict[float, float]:
    """Accuracy when a random fraction of patch tokens is removed per image.

    Uses ``captum_vit.TokenMask(model, mode="drop")``; each image gets its own random
    subset of exactly ``round((1 - fraction) * N)`` kept patch tokens (prefix tokens are
    always kept).

    Args:
        model: the classifier.
        images: (n, 3, S, S) float32 images in [0, 1].
        labels: (n,) int labels.
        fractions: fractions of patch tokens to remove.
        seed: seed of the torch generator choosing the removed tokens.
        batch: forward batch size.

    Returns:
        ``{fraction: accuracy}``.

    Raises:
        ImportError: ``captum_vit.TokenMask`` is not available.
    """
    from ..vit import TokenMask

    model.eval()
    masker = TokenMask(model, mode="drop")
    n_tokens = model.patch_embed.num_patches
    gen = torch.Generator().manual_seed(seed)
    out: Dict[float, float] = {}
    for frac in fractions:
        n_keep = max(1, int(round((1.0 - frac) * n_tokens)))
        correct = 0
        for i in range(0, len(labels), batch):
            x = preprocess(images[i : i + batch])
            order = torch.rand(x.shape[0], n_tokens, generator=gen).argsort(dim=1)
            keep = torch.zeros(x.shape[0], n_tokens, dtype=torch.bool)
            keep.scatter_(1, order[:, :n_keep], True)
            pred = masker(x, keep).argmax(dim=1).numpy()
            correct += int((pred == labels[i : i + batch]).sum())
        out[float(frac)] = correct / max(1, len(labels))
    return out


class _SceneStream(torch.utils.data.IterableDataset):
    """One epoch of training batches, drawn from ``default_rng([seed, epoch])``.

    The batches are the same whether they are generated inline or in a DataLoader
    worker process (one worker keeps the order), so a run is reproducible either way.
    """

    def __init__(self, args: argparse.Namespace, epoch: int) -> None:
        self.args, self.epoch = args, epoch

    def __iter__(self):
        args = self.args
        if torch.utils.data.get_worker_info() is not None:
            torch.set_num_threads(1)  # the worker only runs numpy
        rng = np.random.default_rng([args.seed, self.epoch])
        steps = math.ceil(args.train_size / args.batch_size)
        for step in range(steps):
            bs = min(args.batch_size, args.train_size - step * args.batch_size)
            batch = generate_scenes(
                rng, bs, "train", args.image_size, root=args.data_root
            )
            yield preprocess(batch.images), torch.from_numpy(batch.labels)


def _config_from_args(
    args: argparse.Namespace, init: Optional[Dict[str, Any]]
) -> Dict[str, Any]:
    """The exported config; ``init``: ``--init``'s payload (:func:`_load_init`)."""
    return {
        "architecture": "timm.models.vision_transformer.VisionTransformer",
        "image_size": args.image_size,
        "patch_size": args.patch_size,
        "embed_dim": args.embed_dim,
        "depth": args.depth,
        "num_heads": args.heads,
        "mlp_ratio": args.mlp_ratio,
        "num_classes": len(CLASS_NAMES),
        "class_token": True,
        "global_pool": "token",
        "class_names": list(CLASS_NAMES),
        "mean": list(MEAN),
        "std": list(STD),
        "training": {
            "seed": args.seed,
            "epochs": args.epochs,
            "train_size_per_epoch": args.train_size,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "min_lr": args.min_lr,
            "weight_decay": args.weight_decay,
            "warmup_epochs": args.warmup_epochs,
            "label_smoothing": args.label_smoothing,
            "grad_clip": args.grad_clip,
            "threads": args.threads,
            "workers": args.workers,
            "init": _init_record(args.init, init),
        },
    }


def _init_record(
    path: Optional[Path], payload: Optional[Dict[str, Any]]
) -> Optional[Dict[str, Any]]:
    """What ``--init`` started from: the file's name, digest and its own training."""
    if path is None or payload is None:
        return None
    digest = hashlib.sha256()
    for key, value in sorted(payload["state_dict"].items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    config = payload["config"]
    return {
        "file": path.name,
        "sha256": digest.hexdigest(),
        "training": config.get("training"),
        "results": config.get("results"),
    }


def _load_init(path: Optional[Path]) -> Optional[Dict[str, Any]]:
    """``--init``'s file (``{"config", "state_dict"}``), or None without ``--init``."""
    if path is None:
        return None
    if not path.is_file():
        raise FileNotFoundError(f"--init: no weights at {path}")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or not {"config", "state_dict"} <= set(payload):
        raise ValueError(
            f"--init: {path} is not in the trainer's format (a dict with 'config' "
            "and 'state_dict', e.g. <out>/default_vit.pt)"
        )
    return payload


def _initial_model(
    config: Dict[str, Any], init: Optional[Dict[str, Any]], path: Optional[Path]
) -> torch.nn.Module:
    """The model to train: freshly initialised, or with ``--init``'s weights."""
    model = build_model(config)
    if init is None:
        return model
    theirs = {k: init["config"].get(k) for k in _ARCH_KEYS}
    ours = {k: config[k] for k in _ARCH_KEYS}
    if theirs != ours:
        diff = ", ".join(
            f"{k} {theirs[k]} != {ours[k]}" for k in _ARCH_KEYS if theirs[k] != ours[k]
        )
        raise ValueError(f"--init: {path} has another architecture ({diff})")
    model.load_state_dict(init["state_dict"])
    return model


def _comparable(config: Dict[str, Any]) -> Dict[str, Any]:
    """The config without settings that may change on resume (thread count)."""
    training = {
        k: v for k, v in config["training"].items() if k not in ("threads", "workers")
    }
    training.setdefault("init", None)  # checkpoints from before --init existed
    return {**config, "training": training}


def _export(path: Path, model: torch.nn.Module, config: Dict[str, Any]) -> None:
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_suffix(".tmp")
    torch.save({"config": config, "state_dict": state}, tmp)
    tmp.replace(path)


def train(args: argparse.Namespace) -> Dict[str, Any]:
    """Train the default model as configured by ``args``.

    Args:
        args: parsed command-line arguments (see :func:`parse_args`).

    Returns:
        The exported config, with ``results`` (accuracy, timing, history) filled in.
    """
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    init = _load_init(args.init)
    config = _config_from_args(args, init)
    model = _initial_model(config, init, args.init)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        is_norm_or_bias = param.ndim <= 1 or name.endswith(("pos_embed", "cls_token"))
        (no_decay if is_norm_or_bias else decay).append(param)
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": args.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=args.lr,
    )
    steps_per_epoch = math.ceil(args.train_size / args.batch_size)
    total = steps_per_epoch * args.epochs
    warmup = max(1, int(round(args.warmup_epochs * steps_per_epoch)))
    floor = args.min_lr / args.lr
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _lr_factor(s, warmup, total, floor)
    )
    start_epoch, history, elapsed = 0, [], 0.0
    ckpt_path = out / "checkpoint.pt"
    if args.resume:
        if not ckpt_path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if _comparable(ckpt["config"]) != _comparable(config):
            raise ValueError(
                "--resume: the checkpoint was made with different settings; "
                f"checkpoint config {json.dumps(ckpt['config'])}"
            )
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start_epoch = int(ckpt["epoch"]) + 1
        history = list(json.loads(ckpt["history"]))
        elapsed = float(ckpt["elapsed_s"])
        print(f"resumed from {ckpt_path} after epoch {start_epoch}", flush=True)

    test = make_scenes(
        args.eval_size,
        split="test",
        seed=args.eval_seed,
        image_size=args.image_size,
        root=args.data_root,
    )
    n_epoch_eval = min(args.epoch_eval_size, args.eval_size)
    model.train()
    stop = args.epochs if args.stop_after is None else min(args.epochs, args.stop_after)
    for epoch in range(start_epoch, stop):
        t0 = time.time()
        stream = _SceneStream(args, epoch)
        if args.workers > 0:
            stream = torch.utils.data.DataLoader(
                stream, batch_size=None, num_workers=1, prefetch_factor=4
            )
        bar = progress_bar(
            stream,
            total=steps_per_epoch,
            desc=f"epoch {epoch + 1}/{args.epochs}",
            file=sys.stdout,
        )
        loss_sum, correct, seen = 0.0, 0, 0
        for x, y in bar:
            bs = int(y.shape[0])
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=args.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if args.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * bs
            correct += int((logits.argmax(1) == y).sum())
            seen += bs
            bar.set_postfix(
                loss=f"{loss_sum / seen:.3f}",
                acc=f"{correct / seen:.3f}",
                lr=f"{scheduler.get_last_lr()[0]:.2e}",
                refresh=False,
            )
        bar.close()
        elapsed += time.time() - t0
        acc = evaluate(model, test.images[:n_epoch_eval], test.labels[:n_epoch_eval])
        record = {
            "epoch": epoch + 1,
            "train_loss": round(loss_sum / max(1, seen), 4),
            "train_acc": round(correct / max(1, seen), 4),
            "test_acc": round(acc, 4),
            "test_n": n_epoch_eval,
            "elapsed_s": round(elapsed, 1),
        }
        history.append(record)
        print(json.dumps(record), flush=True)
        torch.save(
            {
                "config": config,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch,
                "history": json.dumps(history),
                "elapsed_s": elapsed,
            },
            out / "checkpoint.tmp",
        )
        (out / "checkpoint.tmp").replace(ckpt_path)
        _export(out / "default_vit.pt", model, config)

    if stop < args.epochs:
        print(f"stopped after epoch {stop}; continue with --resume", flush=True)
        return config
    t0 = time.time()
    acc = evaluate(model, test.images, test.labels)
    config["results"] = {
        "test_accuracy": round(acc, 4),
        "test_scenes": int(args.eval_size),
        "test_seed": int(args.eval_seed),
        "train_time_s": round(elapsed, 1),
        "history": history,
    }
    _export(out / "default_vit.pt", model, config)
    print(
        json.dumps({"final_test_acc": acc, "n": args.eval_size, "train_s": elapsed}),
        f"(eval {time.time() - t0:.1f}s)",
        flush=True,
    )
    return config


def _evaluate_only(args: argparse.Namespace) -> Dict[str, Any]:
    torch.set_num_threads(args.threads)
    weights = args.weights or DEFAULT_WEIGHTS
    model = load_default_model(weights=weights)
    size = int(load_default_config(weights=weights)["image_size"])
    test = make_scenes(
        args.eval_size,
        "test",
        seed=args.eval_seed,
        image_size=size,
        root=args.data_root,
    )
    report: Dict[str, Any] = {
        "weights": str(weights),
        "test_scenes": args.eval_size,
        "test_seed": args.eval_seed,
        "accuracy": round(evaluate(model, test.images, test.labels), 4),
    }
    try:
        dropped = evaluate_dropped_tokens(
            model, test.images, test.labels, seed=args.seed
        )
    except ImportError as err:
        report["dropped_tokens"] = f"unavailable: {err}"
    else:
        report["dropped_tokens"] = {
            f"{int(f * 100)}%": round(a, 4) for f, a in dropped.items()
        }
    print(json.dumps(report, indent=2), flush=True)
    return report


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry point.

    Args:
        argv: arguments without the program name; ``sys.argv[1:]`` when None.

    Returns:
        The process exit status (0 on success).
    """
    args = parse_args(argv)
    try:
        if args.evaluate_only:
            _evaluate_only(args)
        else:
            train(args)
    except (FileNotFoundError, ValueError) as err:
        if not str(err).startswith("--"):  # not a flag's setup error: a real failure
            raise
        print(f"python -m captum_vit.zoo.train: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
