"""Train a ViT Shapley surrogate and explainer for a Fashion-MNIST-scenes classifier.

The classifier is a weights file in the zoo's format (``{"config", "state_dict"}``,
as written by ``python -m captum_vit.zoo.train``); by default the shipped default
model. Training images are train-split scenes (``make_scenes(split="train")``) at the
classifier's image size; validation images are other train-split scenes (the test
split is kept for the benchmarks).

Usage::

    python -m captum_vit.shapley.train --out runs/shapley_default --threads 2
    python -m captum_vit.shapley.train --out runs/shapley_default --ship  # resume+ship
    python -m captum_vit.shapley.train --classifier runs/c16/default_vit.pt \\
        --out runs/shapley_d16 --n-train 12000

Both stages write resumable checkpoints to ``<out>`` (rerunning the same command
continues), then ``<out>/surrogate.pt`` / ``<out>/explainer.pt`` (float16 weights,
``torch.load(weights_only=True)``) and ``<out>/record.json`` (settings, loss
histories, wall-clock times). ``--ship`` copies the two weight files into
``captum_vit/zoo/shapley_weights/``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch

from .explainer import (
    ShapleyExplainer,
    load_surrogate,
    save_explainer,
    save_surrogate,
)
from .training import train_explainer, train_surrogate

__all__ = ["ScenesImages", "classifier_digest", "main", "parse_args"]

SHIP_DIR = Path(__file__).resolve().parents[1] / "zoo" / "shapley_weights"


class ScenesImages(torch.utils.data.Dataset):
    """Fashion-MNIST scenes stored as uint8, preprocessed on access (saves memory).

    Args:
        n: Number of scenes.
        split: ``"train"`` or ``"test"`` Fashion-MNIST items.
        seed: Scene generator seed.
        image_size: Image side in pixels.
    """

    def __init__(self, n: int, split: str, seed: int, image_size: int) -> None:
        from ..zoo import make_scenes

        chunks, labels = [], []
        for lo in range(0, n, 2000):
            sc = make_scenes(
                min(2000, n - lo),
                split=split,
                seed=seed * 1000 + lo // 2000,
                image_size=image_size,
            )
            chunks.append(np.round(np.asarray(sc.images) * 255).astype(np.uint8))
            labels.append(np.asarray(sc.labels))
        self.images = torch.from_numpy(np.concatenate(chunks))
        self.labels = torch.from_numpy(np.concatenate(labels))

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int):
        from ..zoo import preprocess

        return preprocess(self.images[i].float() / 255.0), int(self.labels[i])

    def tensor(self, index: Optional[Sequence[int]] = None) -> torch.Tensor:
        """Preprocessed images (all, or ``index``) as one float tensor."""
        from ..zoo import preprocess

        x = self.images if index is None else self.images[torch.as_tensor(index)]
        return preprocess(x.float() / 255.0)


def classifier_digest(model: torch.nn.Module) -> str:
    """Short SHA-256 of a model's weights, to tie a surrogate to its classifier."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().float().numpy().tobytes())
    return h.hexdigest()[:16]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv: Arguments without the program name (``sys.argv[1:]`` when None).

    Returns:
        The parsed arguments.
    """
    p = argparse.ArgumentParser(
        prog="python -m captum_vit.shapley.train",
        description="Train a ViT Shapley surrogate and explainer.",
    )
    p.add_argument("--out", type=Path, default=Path("runs/shapley_default"))
    p.add_argument("--classifier", type=Path, default=None, help="zoo-format weights")
    p.add_argument("--stage", choices=["surrogate", "explainer", "all"], default="all")
    p.add_argument("--n-train", type=int, default=8000)
    p.add_argument("--n-val", type=int, default=256)
    p.add_argument("--data-seed", type=int, default=7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sur-epochs", type=int, default=3)
    p.add_argument("--sur-batch", type=int, default=64)
    p.add_argument("--sur-subsets", type=int, default=2)
    p.add_argument("--sur-lr", type=float, default=1e-4)
    p.add_argument("--sur-mode", choices=["attention", "drop"], default="attention")
    p.add_argument("--exp-epochs", type=int, default=4)
    p.add_argument("--exp-batch", type=int, default=32)
    p.add_argument("--exp-subsets", type=int, default=32)
    p.add_argument("--exp-lr", type=float, default=2e-4)
    p.add_argument("--exp-warmup", type=float, default=0.05)
    p.add_argument("--exp-max-steps", type=int, default=None)
    p.add_argument(
        "--exp-shared-blocks",
        type=int,
        default=0,
        help="leading backbone blocks kept frozen and shared with the surrogate",
    )
    p.add_argument("--ship", action="store_true", help="copy weights into the package")
    return p.parse_args(argv)


def _load_classifier(path: Optional[Path]):
    from ..zoo import build_model, load_default_model

    if path is None:
        default = load_default_model()
        return default.model, dict(default.config)
    payload = torch.load(path, map_location="cpu", weights_only=True)
    config = dict(payload["config"])
    model = build_model(config)
    model.load_state_dict(payload["state_dict"])
    return model.eval(), config


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run the training stages; return the record written to ``record.json``."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    classifier, config = _load_classifier(args.classifier)
    size = int(config["image_size"])
    record_path = out / "record.json"
    record: Dict[str, Any] = (
        json.loads(record_path.read_text()) if record_path.is_file() else {}
    )
    record["classifier"] = {
        "path": str(args.classifier or "captum_vit.zoo default"),
        "config": {k: v for k, v in config.items() if k != "training"},
        "digest": classifier_digest(classifier),
    }
    settings = {k: str(v) for k, v in vars(args).items()}
    t0 = time.perf_counter()
    train = ScenesImages(args.n_train, "train", args.data_seed, size)
    val = ScenesImages(args.n_val, "train", args.data_seed + 1, size).tensor()
    print(
        f"data: {len(train)} train / {len(val)} val scenes at {size}px "
        f"({time.perf_counter() - t0:.0f}s)",
        flush=True,
    )

    sur_path = out / "surrogate.pt"
    if args.stage in ("surrogate", "all"):
        t0 = time.perf_counter()
        res = train_surrogate(
            classifier,
            train,
            val,
            epochs=args.sur_epochs,
            batch_size=args.sur_batch,
            subsets_per_image=args.sur_subsets,
            lr=args.sur_lr,
            mode=args.sur_mode,
            seed=args.seed,
            checkpoint=out / "surrogate_ckpt.pt",
            show_progress=True,
        )
        record["surrogate"] = {
            "settings": settings,
            "history": res.history,
            "wall_s": time.perf_counter() - t0,
            "train_s": res.history["seconds"][-1],
        }
        save_surrogate(
            res.model,
            sur_path,
            half=True,
            metadata={
                "classifier_digest": record["classifier"]["digest"],
                "classifier_config": record["classifier"]["config"],
                "history": res.history,
            },
        )
        record_path.write_text(json.dumps(record, indent=1))
    if args.stage in ("explainer", "all"):
        surrogate = load_surrogate(sur_path, classifier)
        t0 = time.perf_counter()
        explainer = ShapleyExplainer.from_surrogate(
            surrogate, shared_blocks=args.exp_shared_blocks
        )
        res = train_explainer(
            explainer,
            surrogate,
            train,
            val,
            epochs=args.exp_epochs,
            batch_size=args.exp_batch,
            num_subsets=args.exp_subsets,
            lr=args.exp_lr,
            warmup=args.exp_warmup,
            max_steps=args.exp_max_steps,
            seed=args.seed,
            checkpoint=out / "explainer_ckpt.pt",
            show_progress=True,
        )
        record["explainer"] = {
            "settings": settings,
            "history": res.history,
            "wall_s": time.perf_counter() - t0,
            "train_s": res.history["seconds"][-1],
        }
        save_explainer(
            res.model,
            out / "explainer.pt",
            half=True,
            metadata={
                "classifier_digest": record["classifier"]["digest"],
                "history": res.history,
            },
        )
        record_path.write_text(json.dumps(record, indent=1))
    if args.ship:
        SHIP_DIR.mkdir(parents=True, exist_ok=True)
        for name in ("surrogate.pt", "explainer.pt"):
            shutil.copyfile(out / name, SHIP_DIR / name)
        print(f"shipped to {SHIP_DIR}", flush=True)
    return record


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
    sys.exit(0)
