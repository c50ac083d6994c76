"""The ``captum-vit`` command (also ``python -m captum_vit``, also under torchrun).

``captum-vit explain`` explains images (given files, the embedded Fashion-MNIST scenes,
or with ``--data`` a whole folder, saved as arrays plus a manifest);
``captum-vit evaluate`` scores every method with every metric on the embedded scenes or
on the user's images; ``captum-vit train-shapley`` trains ViT Shapley's surrogate and
explainer for a model (:mod:`captum_vit.train_shapley`), which ``explain`` and
``evaluate`` then use with ``--shapley RUN``. All load any model the same way
(:mod:`captum_vit.models`),
read data through :mod:`captum_vit.data`, and run on one CPU, one GPU or, launched as
``torchrun --nproc_per_node=N -m captum_vit -- evaluate ...``, on many
(:mod:`captum_vit.distributed`).

Every flag is checked when the command line is read: a bad value ends the command
with exit status 2 and one line, ``captum-vit <command>: error: --flag ...``; so do
unreadable files, unknown models and unavailable weights. Progress bars are on by
default (``--quiet`` turns them off; written to a file or a pipe they are a few plain
lines). Ctrl-C ends a command with one line saying what is kept and how to resume,
exit status 130.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

COMMANDS = ("explain", "evaluate", "train-shapley", "report")


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


class _UsageError(Exception):
    """A command-line error found by the parser."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog


def _tidy(message: str) -> str:
    """argparse's ``argument --a/--b: msg`` as ``--a: msg``, on one line."""
    m = re.match(r"argument ([^:]+): (.*)", message, re.S)
    if m:
        flag = m.group(1).split("/")[0]
        message = f"{flag}: {m.group(2)}"
    return " ".join(message.split())


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (raised, printed by :func:`main`)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(self.prog, _tidy(message))


# ------------------------------------------------------------------ flag types
def _int_at_least(low: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {v}")
        return v

    parse.__name__ = what
    return parse


_positive = _int_at_least(1, "a positive integer")
_two_or_more = _int_at_least(2, "an integer >= 2")
_non_negative = _int_at_least(0, "an integer >= 0")


def _pixels(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of pixels >= 0, got {text!r}"
        ) from None
    if not v >= 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(
            f"expected a number of pixels >= 0, got {text}"
        )
    return v


def _device(text: str) -> str:
    from .distributed import env_world, parse_device

    try:
        parse_device(text, env_world()[2])
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).split(": ", 1)[-1]) from None
    return text


def _target(choices: Sequence[str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text in choices:
            return text
        try:
            v = int(text)
        except ValueError:
            v = -1
        if "N" in choices and v >= 0:
            return str(v)
        raise argparse.ArgumentTypeError(
            f"expected {' or '.join(repr(c) for c in choices if c != 'N')}"
            + (" or a class index >= 0" if "N" in choices else "")
            + f", got {text!r}"
        )

    return parse


def _existing_file(text: str) -> str:
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"{text!r}: no such file")
    return text


def _existing_dir(text: str) -> str:
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text!r}: no such folder")
    return text


def _checkpoint(text: str) -> str:
    return _existing_file(text)


def _shapley_run(text: str) -> str:
    from .train_shapley import EXPLAINER_FILE, SURROGATE_FILE

    _existing_dir(text)
    missing = [
        f for f in (SURROGATE_FILE, EXPLAINER_FILE) if not (Path(text) / f).is_file()
    ]
    if missing:
        raise argparse.ArgumentTypeError(
            f"{text!r} has no {' or '.join(missing)} (a captum-vit train-shapley run "
            "folder holds both)"
        )
    return text


def _float_in(low: float, high: Optional[float], what: str, open_low: bool = False):
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        bad = v != v or v < low or (open_low and v == low)
        if bad or (high is not None and v > high):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return v

    parse.__name__ = what
    return parse


# ------------------------------------------------------------------ parser
def package_version() -> str:
    """The installed distribution's version, else :data:`captum_vit.__version__`
    (a source tree that was never installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("captum-vit")
    except PackageNotFoundError:
        from . import __version__

        return __version__


def _add_common(
    p: argparse.ArgumentParser, default_out: str, batch: int, preview: bool = False
) -> None:
    """The flags explain and evaluate share; with ``preview``, no --method means
    explain's quick preview (None) rather than every method."""
    from .methods import DEFAULT_OPTIONS as knobs
    from .methods import PREVIEW_SKIPPED

    p.add_argument(
        "--method",
        "--methods",
        dest="methods",
        nargs="+",
        default=None if preview else ["all"],
        metavar="NAME",
        help=(
            "method name(s), or 'all'; default: a quick preview, every method but "
            f"{', '.join(PREVIEW_SKIPPED)} ({knobs.rise_masks} masks per image)"
            if preview
            else "method name(s), or 'all' (default)"
        ),
    )
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        default="default",
        help="'default' (embedded), a timm name, hf:ID_OR_DIR or torchvision:NAME",
    )
    g.add_argument(
        "--checkpoint",
        type=_checkpoint,
        default=None,
        help="weights: a state_dict, a timm training checkpoint or .safetensors",
    )
    g.add_argument(
        "--use-ema", action="store_true", help="use a checkpoint's EMA weights"
    )
    g.add_argument(
        "--random-weights",
        action="store_true",
        help="random weights (seeded; no download)",
    )
    g.add_argument(
        "--shapley",
        type=_shapley_run,
        default=None,
        metavar="RUN",
        help="vit-shapley with the surrogate and explainer of a train-shapley run",
    )
    g = p.add_argument_group("image-text models (zero-shot)")
    g.add_argument(
        "--classes",
        default=None,
        metavar="NAMES",
        help="comma-separated class names, e.g. 'cat,dog' (with --template)",
    )
    g.add_argument(
        "--prompts",
        nargs="+",
        default=None,
        metavar="PROMPT",
        help="whole prompts, or one file with a prompt per line",
    )
    g.add_argument(
        "--template",
        default=None,
        help="template of class names with one {} (default for --classes and "
        "folder names: 'a photo of a {}.')",
    )
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        type=_existing_dir,
        default=None,
        help="an ImageFolder tree, or a folder of images (with --labels)",
    )
    g.add_argument(
        "--labels", type=_existing_file, default=None, help="CSV file,label for --data"
    )
    g.add_argument(
        "--class-map",
        type=_existing_file,
        default=None,
        help="JSON {folder: class index} for an ImageFolder tree",
    )
    g.add_argument(
        "--n",
        type=_positive,
        default=None,
        help="number of images (embedded scenes to generate, or a seeded subset of "
        "--data; default: all of --data)",
    )
    g.add_argument(
        "--batch-size",
        "--chunk",
        dest="batch_size",
        type=_positive,
        default=batch,
        help=f"images per batch and per resumable record (default {batch})",
    )
    g.add_argument(
        "--workers",
        type=_non_negative,
        default=None,
        help="DataLoader worker processes (default: up to 4 per process)",
    )
    g = p.add_argument_group("run")
    g.add_argument(
        "--device",
        type=_device,
        default=None,
        help="cpu, cuda or cuda:K (default: the process's GPU if any, else cpu)",
    )
    g.add_argument(
        "--amp",
        choices=["bf16", "fp16"],
        default=None,
        help="autocast the forward passes of perturbation methods (and metrics)",
    )
    g.add_argument(
        "--tis-masks", type=_positive, default=knobs.tis_masks, help="TIS n_masks"
    )
    g.add_argument(
        "--rise-masks",
        type=_positive,
        default=knobs.rise_masks,
        help=f"RISE n_masks (paper: {knobs.rise_masks})",
    )
    g.add_argument(
        "--ig-steps", type=_positive, default=knobs.n_steps, help="IG n_steps"
    )
    g.add_argument(
        "--seed", type=_non_negative, default=1234, help="seed of per-image choices"
    )
    g.add_argument(
        "--quiet", action="store_true", help="no progress bars or per-image lines"
    )
    g.add_argument("--out", default=default_out, help="output folder")


def build_parser() -> argparse.ArgumentParser:
    """The ``captum-vit`` argument parser (errors raise instead of exiting)."""
    from .evaluate import PROTOCOLS

    ap = _Parser(
        prog="captum-vit",
        description="Explain Vision Transformers with Captum.",
        epilog="Under torchrun put '--' before the command: torchrun "
        "--nproc_per_node=2 -m captum_vit -- evaluate ...",
    )
    ap.add_argument(
        "--version", action="version", version=f"captum-vit {package_version()}"
    )
    sub = ap.add_subparsers(
        dest="command",
        required=True,
        parser_class=_Parser,
        title="commands",
        metavar="COMMAND",
    )
    ex = sub.add_parser(
        "explain",
        help="explain images with one or all methods",
        description="Explain image files, the embedded scenes, or with --data a "
        "whole folder (maps saved as .npz plus manifest.csv; resumable).",
    )
    ex.add_argument(
        "images", nargs="*", help="image files (default: embedded scenes or --data)"
    )
    ex.add_argument(
        "--target",
        type=_target(["pred", "label", "N"]),
        default="pred",
        help="'pred' (default), 'label' or a class index",
    )
    ex.add_argument(
        "--png",
        action="store_true",
        help="with --data: also draw one PNG per image",
    )
    _add_common(ex, "out", 8, preview=True)
    ex.set_defaults(func=cmd_explain, parser=ex)
    ev = sub.add_parser(
        "evaluate",
        help="score every method with every metric",
        description="Score methods on the embedded held-out scenes or on --data. "
        "--protocol picks the metrics' settings: 'quick' (default: 8-step curves, "
        "16 faithfulness subsets, sensitivity-n 3 sizes x 8 subsets, one non-target "
        "class, no ROAD; about 100 perturbed forward passes per image and method, "
        "seconds for a ViT-S/16 image and method on a CPU), 'standard' (the "
        "former defaults: 16 steps, 64 subsets, 9 x 32, ROAD on patches; about 470 "
        "passes), 'paper-cpu' and 'paper' (the papers' settings, e.g. ViT Shapley "
        "(Covert et al. 2023): --evaluator surrogate --faith-samples 1000 "
        "--sensitivity-sizes 13 --sensitivity-samples 1000 --curve-steps <patches> "
        "--non-target all; about 15 000 passes per image and method on 64 patches, "
        "meant for a GPU). Options given with it override the preset. Other "
        "papers: ViT-CX / Zhang et al.: --pointing first [--pointing-tolerance 15]; "
        "SkipPLUS: the AOPC acc. columns with --target label; TIS: --removal "
        "black|mean|blur|uniform and the Insertion - Deletion column. The estimated "
        "cost is printed before the run; results.md defines every column and lists "
        "the run's protocol next to the papers'.",
    )
    ev.add_argument(
        "--protocol",
        choices=list(PROTOCOLS),
        default="quick",
        help="preset of the metrics' settings (default quick; see above)",
    )
    ev.add_argument(
        "--target",
        type=_target(["label", "pred"]),
        default=None,
        help="explain the 'label' (default when the data has labels) or the 'pred'",
    )
    ev.add_argument(
        "--boxes",
        type=_existing_file,
        default=None,
        help="CSV file,x0,y0,x1,y1 (pixels of the original images) for pointing",
    )
    ev.add_argument(
        "--masks",
        type=_existing_dir,
        default=None,
        help="folder of PNG masks named like the images, for pointing",
    )
    ev.add_argument(
        "--removal",
        default="tokens",
        choices=["tokens", "black", "mean", "blur", "uniform"],
        help="how metrics remove patches",
    )
    ev.add_argument(
        "--curve-steps",
        type=_positive,
        default=None,
        help="points per insertion/deletion curve - 1 (quick 8, standard 16; ViT "
        "Shapley: one patch per step, i.e. the number of patches; TIS: 224)",
    )
    ev.add_argument(
        "--faith-samples",
        type=_two_or_more,
        default=None,
        help="random subsets for the faithfulness correlation (quick 16, standard "
        "64; ViT Shapley: 1000)",
    )
    pg = ev.add_argument_group(
        "protocol",
        "How the metrics are measured; results.md lists this run's settings next to "
        "the papers'.",
    )
    pg.add_argument(
        "--evaluator",
        choices=["classifier", "surrogate"],
        default=None,
        help="model that scores the perturbed images of the removal metrics "
        "(insertion, deletion, AOPC, faithfulness, sensitivity-n, non-target): the "
        "classifier (default) or its ViT Shapley surrogate fine-tuned to missing "
        "patches, as ViT Shapley §6.2 does for every method (needs a surrogate: "
        "shipped for the embedded default model; the paper presets use it with "
        "token removal)",
    )
    pg.add_argument(
        "--pointing",
        choices=["first", "random", "any"],
        default=None,
        help="pointing game: 'first' (default; the papers' rule: the single "
        "highest pixel of the map at the input's resolution, ties to the first in "
        "row-major order), 'random' (ties drawn per image) or 'any' (patch-level: "
        "any pixel of the maximum)",
    )
    pg.add_argument(
        "--pointing-tolerance",
        type=_pixels,
        default=0.0,
        metavar="PX",
        help="hit radius in pixels of the model input around the ground truth "
        "(default 0; Zhang et al. 2018: 15)",
    )
    pg.add_argument(
        "--sensitivity-sizes",
        type=_positive,
        default=None,
        metavar="K",
        help="sensitivity-n sweep: K sizes n = i/(K+1) of the patches, i = 1..K, "
        "reported as the mean, curve in sensitivity_n.npz (quick 3: 25 %%..75 %%; "
        "standard 9: 10 %%..90 %%; 13 on 196 patches is ViT Shapley's n = 14..182)",
    )
    pg.add_argument(
        "--sensitivity-samples",
        type=_two_or_more,
        default=None,
        help="random subsets per sensitivity-n size (quick 8, standard 32; ViT "
        "Shapley: 1000)",
    )
    pg.add_argument(
        "--non-target",
        choices=["auto", "distractor", "random", "all", "off"],
        default=None,
        help="class explained for the non-target insertion/deletion columns: 'auto' "
        "(default: the distractor's on the embedded scenes, else 'random'), "
        "'random' (another class drawn per image), 'all' (every other class "
        "averaged, ViT Shapley Table 2; C-1 explanations per image) or 'off'",
    )
    pg.add_argument(
        "--road",
        choices=["patches", "pixels", "off"],
        default=None,
        help="ROAD MoRF/LeRF columns with noisy linear imputation, removing "
        "'patches' (the standard and paper presets) or 'pixels' (Rong et al.); one "
        "sparse solve per perturbed image (18 per image and method); 'off' (quick)",
    )
    pg.add_argument(
        "--randomization",
        type=_non_negative,
        default=None,
        metavar="N",
        help="model-parameter randomisation check (Adebayo et al. 2018) on N images "
        "spread over the data: re-explains each image once per parameter group of "
        "the model (quick, standard: 0, off; paper presets: 20)",
    )
    pg.add_argument(
        "--infidelity",
        choices=["square", "noise", "off"],
        default=None,
        help="infidelity column (Yeh et al. 2019, Captum's infidelity): 'square' "
        "(default: random squares of patches removed), 'noise' (Gaussian noise per "
        "patch) or 'off'",
    )
    pg.add_argument(
        "--infidelity-samples",
        type=_positive,
        default=None,
        metavar="N",
        help="perturbations per image of the infidelity column (quick 8, standard "
        "64, paper-cpu 100, paper 1000; Captum's default 10)",
    )
    pg.add_argument(
        "--grid-pointing",
        type=_int_at_least(2, "a grid side >= 2"),
        nargs="?",
        const=2,
        default=0,
        metavar="N",
        help="add the grid pointing column (Böhle et al. 2021): every image is also "
        "explained in an N x N grid (default 2) of images of distinct classes drawn "
        "from the data; needs labels and at least N*N classes",
    )
    pg.add_argument(
        "--metric-batch",
        type=_positive,
        default=None,
        help="perturbed images per forward pass in the metrics (default 64; paper: "
        "1024, for a GPU)",
    )
    ev.add_argument(
        "--gallery",
        type=_non_negative,
        default=8,
        metavar="N",
        help="images (a seeded sample) whose maps report.html shows (default 8; 0: "
        "none)",
    )
    _add_common(ev, "out/evaluate", 10)
    ev.set_defaults(func=cmd_evaluate, parser=ev)
    _add_train_shapley(sub)
    rp = sub.add_parser(
        "report",
        help="rebuild report.html from an evaluate run's records",
        description="Write RESULTS_DIR/report.html again from the records of a "
        "finished (or resumed) evaluate run, without recomputing anything.",
    )
    rp.add_argument("results_dir", metavar="RESULTS_DIR", help="an evaluate --out")
    rp.set_defaults(
        func=cmd_report, parser=rp, check=lambda args, parser: None, device="cpu"
    )
    return ap


def _add_train_shapley(sub: Any) -> None:
    """The ``train-shapley`` subcommand's options."""
    from .train_shapley import DEFAULT_SCENES, DEFAULT_VAL

    tr = sub.add_parser(
        "train-shapley",
        help="train a ViT Shapley surrogate and explainer for a model",
        description="Fine-tune the surrogate, then train the explainer, for any "
        "supported model on a folder of images (default: embedded training scenes). "
        "Writes OUT/surrogate.pt and OUT/explainer.pt (use them with explain/evaluate "
        "--shapley OUT); the same command resumes from the step checkpoints, also "
        "under torchrun with another number of processes. --epochs, --lr and "
        "--subsets apply to every stage run: run the stages one by one (--stage) to "
        "give each its own.",
    )
    g = tr.add_argument_group("model")
    g.add_argument("--model", default="default", help="as for explain/evaluate")
    g.add_argument("--checkpoint", type=_checkpoint, default=None, help="weights")
    g.add_argument("--use-ema", action="store_true", help="a checkpoint's EMA weights")
    g.add_argument(
        "--random-weights", action="store_true", help="random weights (seeded)"
    )
    g = tr.add_argument_group("data")
    g.add_argument(
        "--data",
        type=_existing_dir,
        default=None,
        help="a folder of images, flat or in sub-folders (labels are not needed); "
        "default: the embedded Fashion-MNIST training scenes",
    )
    g.add_argument(
        "--n",
        type=_positive,
        default=None,
        help=f"scenes to generate (default {DEFAULT_SCENES}) or a seeded subset of "
        "--data (default: all)",
    )
    g.add_argument(
        "--val-n",
        type=_non_negative,
        default=None,
        help=f"held-out validation images (default {DEFAULT_VAL} other scenes, or "
        "min(256, a tenth) of --data; 0: none)",
    )
    g.add_argument(
        "--no-augment",
        action="store_true",
        help="no random resized crops, flips or colour jitter on training images",
    )
    g.add_argument(
        "--workers",
        type=_non_negative,
        default=None,
        help="DataLoader worker processes (default: up to 4 per process)",
    )
    g = tr.add_argument_group("training")
    g.add_argument("--out", required=True, metavar="RUN", help="run folder")
    g.add_argument("--stage", choices=["surrogate", "explainer", "all"], default="all")
    g.add_argument(
        "--batch-size",
        type=_positive,
        default=64,
        help="images per step over all processes (default 64, the paper's)",
    )
    g.add_argument(
        "--micro-batch",
        type=_positive,
        default=None,
        help="images per forward/backward pass per process (gradient accumulation)",
    )
    g.add_argument(
        "--epochs",
        type=_float_in(0.0, None, "a positive number", open_low=True),
        default=None,
        help="passes over the data (default 5 surrogate, 10 explainer)",
    )
    g.add_argument("--max-steps", type=_positive, default=None, help="step cap")
    g.add_argument(
        "--lr",
        type=_float_in(0.0, None, "a positive number", open_low=True),
        default=None,
        help="peak learning rate (default 1e-5 surrogate, 1e-4 explainer)",
    )
    g.add_argument(
        "--subsets",
        type=_positive,
        default=None,
        help="coalitions per image and step (default 1 surrogate, 32 explainer)",
    )
    g.add_argument(
        "--weight-decay", type=_float_in(0.0, None, "a number >= 0"), default=0.01
    )
    g.add_argument(
        "--warmup",
        type=_float_in(0.0, 1.0, "a fraction in [0, 1]"),
        default=0.05,
        help="fraction of steps of linear warm-up",
    )
    g.add_argument(
        "--grad-clip",
        type=_float_in(0.0, None, "a number >= 0"),
        default=1.0,
        help="gradient-norm clipping (0: none)",
    )
    g.add_argument(
        "--mask-mode",
        choices=["attention", "drop"],
        default="attention",
        help="how the surrogate holds patches out while fine-tuned",
    )
    g.add_argument(
        "--shared-blocks",
        type=_non_negative,
        default=0,
        help="leading blocks the explainer keeps frozen, shared with the surrogate",
    )
    g.add_argument(
        "--save-every",
        type=_positive,
        default=None,
        help="steps between validation and checkpoints (default: one pass)",
    )
    g.add_argument(
        "--keep-checkpoints",
        type=_non_negative,
        default=1,
        metavar="N",
        help="step checkpoints kept per stage: the newest N (default 1; it holds "
        "the best-validation weights too); when a stage ends the newest is cut "
        "down to its final weights (a rerun then skips it); 0 removes them then",
    )
    g.add_argument("--seed", type=_non_negative, default=0, help="seed of everything")
    g.add_argument(
        "--half", action="store_true", help="store the final weights as float16"
    )
    g = tr.add_argument_group("run")
    g.add_argument(
        "--device",
        type=_device,
        default=None,
        help="cpu, cuda or cuda:K (default: the process's GPU if any, else cpu)",
    )
    g.add_argument(
        "--amp", choices=["bf16", "fp16"], default=None, help="mixed precision"
    )
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    tr.set_defaults(func=cmd_train_shapley, parser=tr, check=_check_train_args)


def _check_weights(args: argparse.Namespace, parser: argparse.ArgumentParser):
    """--checkpoint, --random-weights and --use-ema together (every command)."""
    if args.checkpoint is not None and args.random_weights:
        parser.error("--random-weights: cannot be combined with --checkpoint")
    if args.use_ema and args.checkpoint is None:
        parser.error("--use-ema: needs --checkpoint")


def _check_run(args: argparse.Namespace, parser: argparse.ArgumentParser):
    """--amp against --device, then --out (every command's last checks)."""
    from .evaluate import writable_dir

    if args.amp == "fp16":
        from .distributed import env_world, parse_device

        if parse_device(args.device, env_world()[2]).type != "cuda":
            parser.error(
                "--amp: fp16 needs a CUDA device (CPU autocast runs bf16); use --amp "
                "bf16 or --device cuda"
            )
    try:
        writable_dir(args.out)
    except OSError as exc:
        parser.error(f"--out: cannot write to {args.out}: {exc}")


def _check_train_args(args: argparse.Namespace, parser: argparse.ArgumentParser):
    """train-shapley's cross-flag checks, before any work."""
    _check_weights(args, parser)
    explainer = args.stage in ("explainer", "all")
    if explainer and args.subsets is not None and args.subsets % 2:
        parser.error(
            f"--subsets: the explainer pairs each coalition with its complement; "
            f"expected an even number, got {args.subsets}"
        )
    if args.shared_blocks and not explainer:
        parser.error("--shared-blocks: applies to the explainer stage")
    _check_run(args, parser)


def _check_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Cross-flag checks, then the output folder: all before any work."""
    from .methods import resolve_methods

    try:
        resolve_methods(args.methods)
    except ValueError as exc:
        parser.error(f"--method: {exc}")
    _check_weights(args, parser)
    if args.data is None:
        for flag in ("labels", "class_map", "boxes", "masks", "png"):
            if getattr(args, flag, None):
                parser.error(f"--{flag.replace('_', '-')}: needs --data")
    if getattr(args, "boxes", None) and getattr(args, "masks", None):
        parser.error("--masks: give --boxes or --masks, not both")
    if getattr(args, "non_target", None) == "distractor" and args.data is not None:
        parser.error(
            "--non-target: 'distractor' needs the embedded scenes (--data has no "
            "distractor); use random or all"
        )
    if getattr(args, "randomization", 0) and args.n is not None:
        if args.randomization > args.n:
            parser.error(
                f"--randomization: {args.randomization} images, more than --n "
                f"{args.n}"
            )
    if args.labels and args.class_map:
        parser.error("--class-map: applies to ImageFolder trees, not to --labels")
    _check_prompts(args, parser)
    if args.command == "explain" and args.images:
        if args.data is not None:
            parser.error("--data: give image files or --data, not both")
        if args.n is not None:
            parser.error("--n: applies to the embedded scenes or --data, not to files")
    _check_run(args, parser)


def _check_prompts(args: argparse.Namespace, parser: argparse.ArgumentParser):
    """--classes / --prompts / --template of image-text models, into
    ``args.prompt_spec`` (a :class:`~captum_vit.models.PromptSpec` or None)."""
    from .models import DEFAULT_TEMPLATE, PromptSpec
    from .vit.zero_shot import check_prompts, check_template

    args.prompt_spec = None
    classes, prompts = getattr(args, "classes", None), getattr(args, "prompts", None)
    template = getattr(args, "template", None)
    if classes is None and prompts is None and template is None:
        return
    if template is not None:
        try:
            check_template(template)
        except (TypeError, ValueError) as exc:
            parser.error(f"--{exc}")
    if classes is not None and prompts is not None:
        parser.error("--prompts: give --classes or --prompts, not both")
    if classes is not None:
        names = [c.strip() for c in classes.split(",")]
        if not any(names):
            parser.error("--classes: expected comma-separated class names, got none")
        args.prompt_spec = PromptSpec(names, template or DEFAULT_TEMPLATE)
    elif prompts is not None:
        if len(prompts) == 1 and Path(prompts[0]).is_file():
            lines = Path(prompts[0]).read_text(encoding="utf-8").splitlines()
            prompts = [ln.strip() for ln in lines if ln.strip()]
            if not prompts:
                parser.error(f"--prompts {args.prompts[0]!r}: the file has no prompt")
        args.prompt_spec = PromptSpec(list(prompts), template)
    elif args.data is None or args.labels is not None:
        parser.error(
            "--template: applies to --classes, or to the folder names of an "
            "ImageFolder --data"
        )
    if args.prompt_spec is not None:
        flag = "--classes" if classes is not None else "--prompts"
        spec = args.prompt_spec
        try:
            check_prompts(spec.names, spec.template)
        except (TypeError, ValueError) as exc:
            parser.error(flag + str(exc)[len("prompts") :])


def _folder_classes(args: argparse.Namespace) -> Optional[List[str]]:
    """The class names of an ImageFolder --data (for an image-text model)."""
    if args.data is None or args.labels is not None:
        return None
    from .data import DataError, image_folder_classes

    try:
        return image_folder_classes(args.data, args.class_map)
    except DataError:
        return None  # a flat folder of images: the dataset says what is wrong


# ------------------------------------------------------------------ shared setup
def _load(args: argparse.Namespace, device: torch.device):
    """Load the model and check that the methods can serve it."""
    from .models import load_model
    from .vit import ViTAdapter

    loaded = load_model(
        args.model,
        args.checkpoint,
        random_weights=args.random_weights,
        use_ema=args.use_ema,
        device=device,
        quiet=getattr(args, "quiet", False),
        **_prompt_kwargs(args),
    )
    try:
        ViTAdapter(loaded.model)
    except TypeError as exc:
        raise CLIError(f"--model {args.model}: not supported ({exc})") from exc
    if getattr(args, "shapley", None):
        from .train_shapley import attach_shapley

        attach_shapley(loaded, args.shapley, device)
    return loaded


def _prompt_kwargs(args: argparse.Namespace) -> Dict[str, Any]:
    """load_model's image-text arguments: the prompts given, else an ImageFolder's
    folder names (templated by --template when given)."""
    if not hasattr(args, "prompt_spec"):
        return {}
    if args.prompt_spec is not None:
        return {"prompts": args.prompt_spec}
    folder = _folder_classes(args)
    if folder and getattr(args, "template", None):
        from .models import PromptSpec

        return {"prompts": PromptSpec(folder, args.template)}
    return {"folder_classes": folder}


def _dataset(args: argparse.Namespace, loaded: Any, default_n: int):
    """The data source of a command: --data (with its annotations) or the scenes."""
    from .data import ImageDataset, SceneDataset

    if args.data is None:
        return SceneDataset(
            args.n or default_n,
            loaded.preprocessing,
            seed=args.seed,
            default_model=loaded.takes_scenes,
        )
    data = ImageDataset.from_folder(
        args.data,
        loaded.preprocessing,
        labels=args.labels,
        class_map=args.class_map,
        boxes=getattr(args, "boxes", None),
        masks=getattr(args, "masks", None),
    )
    return data.subset(args.n, args.seed) if args.n is not None else data


def _method_options(args: argparse.Namespace) -> Any:
    """The methods' knobs given on the command line (progress bars unless
    --quiet)."""
    from .methods import MethodOptions

    return MethodOptions(
        tis_masks=args.tis_masks,
        rise_masks=args.rise_masks,
        n_steps=args.ig_steps,
        show_progress=not args.quiet,
    )


def _workers(args: argparse.Namespace, world: int) -> int:
    if args.workers is not None:
        return args.workers
    return max(0, min(4, (os.cpu_count() or 1) // max(1, world) - 1))


# --------------------------------------------------------------------------- explain
def _explain_methods(args: argparse.Namespace, announce: bool = True) -> List[Any]:
    """The methods explain runs: --method's, or the preview (said on screen when
    ``announce``)."""
    from .methods import (
        DEFAULT_OPTIONS,
        PREVIEW_SKIPPED,
        preview_methods,
        resolve_methods,
    )

    if args.methods is not None:
        return resolve_methods(args.methods)
    if announce:
        print(
            f"preview: {', '.join(PREVIEW_SKIPPED)} skipped "
            f"({DEFAULT_OPTIONS.rise_masks} masks per image, ten times any other "
            "method); --method rise runs it, --method all runs every method with the "
            "paper's settings"
        )
    return preview_methods()


def cmd_explain(args: argparse.Namespace, ctx: Any) -> int:
    if args.data is not None:
        return _explain_folder(args, ctx)
    if ctx.world_size > 1:
        exc = CLIError(
            "explain without --data runs in one process; use --data DIR under torchrun"
        )
        exc.all_ranks = True  # type: ignore[attr-defined]
        raise exc
    return _explain_few(args, ctx)


def _explain_folder(args: argparse.Namespace, ctx: Any) -> int:
    from ._jobs import check_job
    from .data import DataError
    from .explain import display_names, folder_class_names, run_explain
    from .models import ModelError

    def setup():
        loaded = _load(args, ctx.device)
        data = _dataset(args, loaded, 0)
        check_job(data, loaded.num_classes, _explain_target(args), ctx.world_size)
        return loaded, data

    loaded, data = ctx.agree(setup, (CLIError, ModelError, DataError, ValueError))
    methods = [m.name for m in _explain_methods(args, ctx.is_main)]
    names = loaded.class_names
    if args.labels is None and data.has_labels:  # an ImageFolder tree
        names = display_names(names, folder_class_names(data))
    rows = run_explain(
        args.out,
        methods,
        model=loaded,
        dataset=data,
        ctx=ctx,
        target=_explain_target(args),
        batch_size=args.batch_size,
        options=_method_options(args),
        amp=args.amp,
        seed=args.seed,
        png=args.png,
        workers=_workers(args, ctx.world_size),
        show_progress=not args.quiet,
        class_names=names,
    )
    if ctx.is_main and rows is not None:
        n_ok = sum(r["status"] == "ok" for r in rows)
        n_skip = len(rows) - n_ok
        print(
            f"{len(data)} images: {n_ok} maps written to {Path(args.out) / 'maps'}"
            + (f", {n_skip} (method, image) skipped" if n_skip else "")
        )
        print(f"wrote {Path(args.out) / 'manifest.csv'}")
        print(f"wrote {Path(args.out) / 'index.html'} (open it in a browser)")
    return 0


def _explain_target(args: argparse.Namespace) -> Any:
    return args.target if args.target in ("pred", "label") else int(args.target)


def _explain_few(args: argparse.Namespace, ctx: Any) -> int:
    """Explain given files or a few embedded scenes into one comparison grid."""
    from ._guard import check_amp
    from .explain import explain_few

    methods = _explain_methods(args)
    check_amp(ctx.device, args.amp)
    explain_few(
        args.out,
        methods,
        model=_load(args, ctx.device),
        images=args.images,
        n=args.n,
        target=_explain_target(args),
        options=_method_options(args),
        amp=args.amp,
        seed=args.seed,
    )
    return 0


# -------------------------------------------------------------------------- evaluate
def cmd_evaluate(args: argparse.Namespace, ctx: Any) -> int:
    from ._jobs import check_job
    from .data import DataError
    from .evaluate import (
        EvalConfig,
        _patches,
        check_protocol,
        protocol_settings,
        run_evaluation,
    )
    from .models import ModelError

    def setup():
        loaded = _load(args, ctx.device)
        data = _dataset(args, loaded, 200)
        target = args.target or ("label" if data.has_labels else "pred")
        check_job(data, loaded.num_classes, target, ctx.world_size)
        preset = protocol_settings(
            args.protocol, _patches(loaded), args.removal, len(data)
        )
        for key, value in preset.items():  # options given override the preset
            if getattr(args, key) is None:
                setattr(args, key, value)
        if args.randomization > len(data):
            raise CLIError(
                f"--randomization: {args.randomization} images, more than the "
                f"{len(data)} image(s) of the data"
            )
        cfg = EvalConfig(
            n=len(data),
            seed=args.seed,
            removal=args.removal,
            chunk=args.batch_size,
            tis_masks=args.tis_masks,
            rise_masks=args.rise_masks,
            curve_steps=args.curve_steps,
            faith_samples=args.faith_samples,
            sensitivity_sizes=args.sensitivity_sizes,
            sensitivity_samples=args.sensitivity_samples,
            n_steps=args.ig_steps,
            target=target,
            amp=args.amp,
            evaluator=args.evaluator,
            pointing=args.pointing,
            pointing_tolerance=args.pointing_tolerance,
            non_target=args.non_target,
            road=args.road,
            randomization=args.randomization,
            metric_batch=args.metric_batch,
            infidelity=args.infidelity,
            infidelity_samples=args.infidelity_samples,
            grid_pointing=args.grid_pointing,
            gallery=args.gallery,
        )
        cfg.validate()
        check_protocol(cfg, loaded, data)
        return loaded, data, cfg

    loaded, data, cfg = ctx.agree(setup, (CLIError, ModelError, DataError, ValueError))
    names = loaded.class_names
    if args.data is not None and args.labels is None and data.has_labels:
        from .explain import display_names, folder_class_names  # an ImageFolder tree

        names = display_names(names, folder_class_names(data))
    run_evaluation(
        args.out,
        args.methods,
        cfg,
        show_progress=not args.quiet,
        model=loaded,
        dataset=data,
        ctx=ctx,
        workers=_workers(args, ctx.world_size),
        class_names=names,
    )
    if ctx.is_main:
        out = Path(args.out)
        print((out / "results.md").read_text(), end="")
        print(
            f"wrote {out / 'results.md'}, {out / 'results.csv'}, {out / 'curves.png'}"
        )
        print(f"wrote {out / 'report.html'} (open it in a browser)")
    return 0


# ---------------------------------------------------------------------------- report
def cmd_report(args: argparse.Namespace, ctx: Any) -> int:
    """Rebuild report.html from a run folder's records (rank 0 only)."""
    from .evaluate import rebuild_report

    if ctx.is_main:
        print(f"wrote {rebuild_report(args.results_dir)}")
    return 0


# --------------------------------------------------------------------- train-shapley
def cmd_train_shapley(args: argparse.Namespace, ctx: Any) -> int:
    from .data import DataError
    from .models import ModelError
    from .train_shapley import (
        StageOptions,
        check_trainable,
        run_train_shapley,
        training_data,
    )

    def setup():
        loaded = _load(args, ctx.device)
        check_trainable(loaded)
        train, val = training_data(
            loaded,
            args.data,
            n=args.n,
            n_val=args.val_n,
            seed=args.seed,
            augment=not args.no_augment,
        )
        if args.batch_size < ctx.world_size:
            raise CLIError(
                f"--batch-size {args.batch_size}: the global batch needs at least one "
                f"image per process ({ctx.world_size} processes)"
            )
        return loaded, train, val

    loaded, train, val = ctx.agree(
        setup, (CLIError, ModelError, DataError, ValueError, OSError)
    )
    options = StageOptions(
        stage=args.stage,
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        micro_batch_size=args.micro_batch,
        lr=args.lr,
        subsets=args.subsets,
        weight_decay=args.weight_decay,
        warmup=args.warmup,
        grad_clip=args.grad_clip,
        mask_mode=args.mask_mode,
        shared_blocks=args.shared_blocks,
        seed=args.seed,
        save_every=args.save_every,
        amp=args.amp,
        workers=_workers(args, ctx.world_size),
        half=args.half,
        show_progress=not args.quiet,
        keep_checkpoints=args.keep_checkpoints,
    )
    record = run_train_shapley(
        args.out, loaded, train, val, options, ctx, augment=not args.no_augment
    )
    if ctx.is_main:
        out = Path(args.out)
        for stage in options.stages():
            r = record[stage]
            val_loss = r["history"]["best_val"]
            speed = r["images_per_s"]
            print(
                f"{stage}: {r['history']['step'][-1]} steps on {r['processes']} "
                f"process(es)"
                + (f", {speed:.1f} images/s" if speed else "")
                + (f", best validation loss {val_loss:.5g}" if val_loss else "")
                + f"; wrote {out / (stage + '.pt')}"
            )
    return 0


# ------------------------------------------------------------------------------ main
def _command_of(argv: Sequence[str]) -> Optional[str]:
    return next((a for a in argv if a in COMMANDS), None)


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line; returns the exit status (2 for user errors, printed as
    one line ``captum-vit <command>: error: ...``; 130 for Ctrl-C, printed as one
    line that says what was kept and how to resume). Without arguments it prints the
    usage and the list of commands (exit status 2).

    A leading ``--`` is ignored, so ``torchrun ... -m captum_vit -- evaluate ...``
    keeps torchrun's own parser away from the command's options.
    """
    from .data import DataError
    from .distributed import init_distributed
    from .models import ModelError

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    parser = build_parser()
    if not argv:  # the usage and the list of commands, as for a missing command
        parser.print_help(sys.stderr)
        return 2
    command = _command_of(argv)
    prog = f"captum-vit {command}" if command else "captum-vit"
    try:
        args = parser.parse_args(argv)
        getattr(args, "check", _check_args)(args, args.parser)
    except _UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    func: Callable[[argparse.Namespace, Any], int] = args.func
    ctx = None
    try:
        ctx = init_distributed(args.device)
        return func(args, ctx)
    except (CLIError, ModelError, DataError, ValueError, OSError) as exc:
        if os.environ.get("CAPTUM_VIT_TRACEBACK"):
            raise
        quiet_rank = (
            ctx is not None and ctx.rank != 0 and getattr(exc, "all_ranks", False)
        )
        if not quiet_rank:
            rank = f" (rank {ctx.rank})" if ctx is not None and ctx.rank else ""
            text = " ".join(str(exc).split()) or type(exc).__name__
            print(f"{prog}: error{rank}: {text}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C: one line, what is kept, exit 130
        if os.environ.get("CAPTUM_VIT_TRACEBACK"):
            raise
        if ctx is None or ctx.rank == 0:
            print(f"{prog}: {str(exc) or 'interrupted'}", file=sys.stderr)
        return 130
    finally:
        if ctx is not None:
            ctx.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
