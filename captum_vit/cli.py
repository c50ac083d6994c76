"""The ``captum-vit`` command (also ``python -m captum_vit``).

``captum-vit explain`` explains images (or, with none given, a few embedded
Fashion-MNIST scenes) with every method and writes a comparison grid PNG.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch import Tensor


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


# --------------------------------------------------------------------------- models
class LoadedModel:
    """A model with what the command needs around it."""

    def __init__(
        self,
        model: nn.Module,
        name: str,
        class_names: Sequence[str],
        mean: Sequence[float],
        std: Sequence[float],
        extras: Optional[Dict[str, Any]] = None,
    ) -> None:
        self.model, self.name = model, name
        self.class_names = list(class_names)
        self.mean, self.std = tuple(mean), tuple(std)
        self.extras = extras or {}

    @property
    def input_size(self) -> Tuple[int, int]:
        from .vit import ViTAdapter

        return ViTAdapter.of(self.model).image_size

    def normalise(self, images01: Tensor) -> Tensor:
        m = torch.tensor(self.mean).view(1, -1, 1, 1)
        s = torch.tensor(self.std).view(1, -1, 1, 1)
        return (images01 - m) / s


def load_model(
    name: str, checkpoint: Optional[str], random_weights: bool
) -> LoadedModel:
    """Build the default model or a timm model (pretrained, checkpoint or random)."""
    if name == "default":
        from . import zoo

        from .methods import default_model_extras

        default = zoo.load_default_model(weights=checkpoint)
        extras = default_model_extras()
        return LoadedModel(
            default.model, "default", default.class_names, zoo.MEAN, zoo.STD, extras
        )
    import timm

    if not timm.is_model(name):
        raise CLIError(
            f"unknown model {name!r}: use 'default' or a timm model name "
            "(see timm.list_models())"
        )
    pretrained = not random_weights and checkpoint is None
    try:
        model = timm.create_model(name, pretrained=pretrained)
    except Exception as exc:  # no network / no cached weights
        raise CLIError(
            f"could not load pretrained weights for {name!r} ({type(exc).__name__}); "
            "pass --checkpoint PATH or --random-weights"
        ) from exc
    if checkpoint is not None:
        try:
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state) if isinstance(state, dict) else state
            model.load_state_dict(state)
        except Exception as exc:
            raise CLIError(f"cannot load checkpoint {checkpoint!r}: {exc}") from exc
    model.eval()
    cfg = timm.data.resolve_model_data_config(model)
    names = [f"class {i}" for i in range(model.num_classes)]
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(model)
        if subset is not None:
            info = ImageNetInfo(subset)
            names = [info.index_to_description(i) for i in range(model.num_classes)]
    except Exception:  # class names are a nicety: keep "class i" on any failure
        names = [f"class {i}" for i in range(model.num_classes)]
    return LoadedModel(model, name, names, cfg["mean"], cfg["std"])


# --------------------------------------------------------------------------- images
def read_images(paths: Sequence[str], size: Tuple[int, int]) -> Tensor:
    """Read image files as a (B, 3, H, W) batch in [0, 1], resized with a note."""
    from PIL import Image, UnidentifiedImageError

    out = []
    for p in paths:
        try:
            with Image.open(p) as im:
                im = im.convert("RGB")
                if (im.height, im.width) != size:
                    print(
                        f"note: {p} is {im.width}x{im.height}; resized to the model's "
                        f"input {size[1]}x{size[0]}"
                    )
                    im = im.resize((size[1], size[0]), Image.BILINEAR)
                t = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
        except (OSError, UnidentifiedImageError) as exc:
            raise CLIError(f"cannot read image {p!r}: {exc}") from exc
        out.append(t.view(size[0], size[1], 3).permute(2, 0, 1).float() / 255.0)
    return torch.stack(out)


def default_images(n: int, size: Tuple[int, int]) -> Tuple[Tensor, List[str]]:
    """Embedded held-out scenes (resized for non-default models)."""
    from . import zoo

    scenes = zoo.make_scenes(n, split="test", seed=0)
    images = torch.as_tensor(scenes.images)
    if tuple(images.shape[-2:]) != size:
        print(f"note: embedded scenes resized to the model's input {size[1]}x{size[0]}")
        images = torch.nn.functional.interpolate(
            images, size=size, mode="bilinear", align_corners=False
        )
    labels = [zoo.CLASS_NAMES[int(i)] for i in scenes.labels]
    return images, [f"scene {i} ({lab})" for i, lab in enumerate(labels)]


# --------------------------------------------------------------------------- explain
def cmd_explain(args: argparse.Namespace) -> int:
    from .methods import MethodUnavailable, resolve_methods
    from .viz import comparison_grid

    try:
        methods = resolve_methods(args.method)
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    loaded = load_model(args.model, args.checkpoint, args.random_weights)
    size = loaded.input_size
    if args.images:
        images01 = read_images(args.images, size)
        labels = [Path(p).name for p in args.images]
    else:
        images01, labels = default_images(args.n, size)
    inputs = loaded.normalise(images01)
    with torch.no_grad():
        probs = loaded.model(inputs).softmax(-1)
    pred = probs.argmax(-1)
    if args.target == "pred":
        target = pred
    else:
        try:
            t = int(args.target)
        except ValueError:
            raise CLIError(
                f"--target: expected an integer or 'pred', got {args.target!r}"
            )
        if not 0 <= t < len(loaded.class_names):
            raise CLIError(
                f"--target: class {t} out of range [0, {len(loaded.class_names)})"
            )
        target = torch.full_like(pred, t)
    names = loaded.class_names
    for i, label in enumerate(labels):
        top = probs[i].topk(min(3, probs.shape[1]))
        tops = ", ".join(
            f"{names[int(c)]} {float(p):.2f}" for p, c in zip(top.values, top.indices)
        )
        print(f"{label}: top: {tops}; explaining '{names[int(target[i])]}'")
    maps: Dict[str, Tensor] = {}
    signed: Dict[str, bool] = {}
    extras = dict(loaded.extras, tis_masks=args.tis_masks)
    for method in methods:
        try:
            explain = method.build(loaded.model, extras)
        except MethodUnavailable as exc:
            print(f"{method.name}: skipped ({exc})")
            continue
        t0 = time.perf_counter()
        attr = explain(inputs, target)
        dt = time.perf_counter() - t0
        maps[method.name] = attr.detach()
        signed[method.name] = method.signed
        print(f"{method.name}: {dt:.2f} s ({dt / len(inputs):.2f} s/image)")
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CLIError(f"--out: cannot create {out}: {exc}") from exc
    path = out / "explain_grid.png"
    titles = [f"{lab}\n→ {names[int(target[i])]}" for i, lab in enumerate(labels)]
    comparison_grid(images01, maps, path=str(path), row_titles=titles, signed=signed)
    print(f"wrote {path}")
    return 0


# -------------------------------------------------------------------------- evaluate
def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import EvalConfig, run_evaluation, writable_dir
    from .methods import resolve_methods

    if args.n <= 0:
        raise CLIError(f"--n: expected a positive number of scenes, got {args.n}")
    try:
        resolve_methods(args.methods)
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    cfg = EvalConfig(
        n=args.n,
        removal=args.removal,
        chunk=args.chunk,
        tis_masks=args.tis_masks,
        curve_steps=args.curve_steps,
        faith_samples=args.faith_samples,
        sensitivity_samples=args.faith_samples,
        n_steps=args.ig_steps,
    )
    try:
        out = writable_dir(args.out)
    except OSError as exc:
        raise CLIError(f"--out: cannot write to {args.out}: {exc}") from exc
    run_evaluation(str(out), args.methods, cfg)
    print((out / "results.md").read_text(), end="")
    print(f"wrote {out / 'results.md'}, {out / 'results.csv'}, {out / 'curves.png'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="captum-vit", description="Explain Vision Transformers with Captum."
    )
    sub = ap.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("explain", help="explain images with one or all methods")
    ex.add_argument("images", nargs="*", help="image files (default: embedded scenes)")
    ex.add_argument(
        "--method", nargs="+", default=["all"], help="method name(s) or 'all'"
    )
    ex.add_argument("--target", default="pred", help="class index or 'pred'")
    ex.add_argument("--model", default="default", help="'default' or a timm name")
    ex.add_argument("--checkpoint", default=None, help="state_dict file for --model")
    ex.add_argument(
        "--random-weights",
        action="store_true",
        help="timm model with random weights (no download)",
    )
    ex.add_argument("--n", type=int, default=4, help="embedded scenes to explain")
    ex.add_argument("--tis-masks", type=int, default=1024, help="TIS n_masks")
    ex.add_argument("--out", default="out", help="output directory for PNGs")
    ex.set_defaults(func=cmd_explain)
    ev = sub.add_parser(
        "evaluate", help="score every method on held-out embedded scenes"
    )
    ev.add_argument("--methods", nargs="+", default=["all"], help="names or 'all'")
    ev.add_argument("--n", type=int, default=200, help="number of held-out scenes")
    ev.add_argument(
        "--removal",
        default="tokens",
        choices=["tokens", "black", "mean", "blur", "uniform"],
        help="how metrics remove patches",
    )
    ev.add_argument("--chunk", type=int, default=10, help="scenes per resumable chunk")
    ev.add_argument("--tis-masks", type=int, default=1024, help="TIS n_masks")
    ev.add_argument("--ig-steps", type=int, default=20, help="IG n_steps")
    ev.add_argument("--curve-steps", type=int, default=16, help="points per curve - 1")
    ev.add_argument(
        "--faith-samples", type=int, default=64, help="subsets for correlations"
    )
    ev.add_argument("--out", default="out/evaluate", help="output directory")
    ev.set_defaults(func=cmd_evaluate)
    return ap


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except CLIError as exc:
        print(f"captum-vit: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
