"""``captum-vit train-shapley`` and ``--shapley RUN``: a folder of images in, files that
``load_surrogate``/``load_explainer`` read out, exact resumes, and one-line errors.

The classifier is a tiny random-weight timm ViT in the zoo's format (``--model default
--checkpoint``: 32 px, patch 8, one block); the images are embedded scenes saved as PNG
files by the test.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Dict, List

import pytest
import torch
from helpers import ZOO_CONFIG, cli, save_zoo_classifier, write_scene_pngs

from captum_vit import zoo
from captum_vit.cli import main
from captum_vit.shapley import (
    ShapleyExplainer,
    load_explainer,
    load_surrogate,
    save_explainer,
)
from captum_vit.shapley import _checkpoints

SMALL = [
    "--batch-size",
    "4",
    "--subsets",
    "2",
    "--quiet",
]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Dict[str, Path]:
    d = tmp_path_factory.mktemp("train_shapley")
    (d / "empty" / "sub").mkdir(parents=True)
    return {
        "dir": d,
        "images": write_scene_pngs(d / "images"),
        "model": save_zoo_classifier(d / "tiny.pt", 0),
        "other": save_zoo_classifier(d / "other.pt", 1),
        "small": save_zoo_classifier(d / "small.pt", 0, image_size=16),
    }


def _train_args(files, out: Path, *extra: str) -> List[str]:
    return [
        "train-shapley",
        "--checkpoint",
        str(files["model"]),
        "--data",
        str(files["images"]),
        "--val-n",
        "2",
        "--epochs",
        "1",
        "--out",
        str(out),
        *SMALL,
        *extra,
    ]


@pytest.fixture(scope="module")
def run(files) -> Path:
    """One run on the folder: 8 training images, 2 held out, augmented."""
    out = files["dir"] / "run"
    assert main(_train_args(files, out, "--workers", "0")) == 0
    return out


def test_run_files_load_and_are_tied_to_their_models(run, files):
    from captum_vit.models import load_model

    loaded = load_model("default", files["model"])
    surrogate = load_surrogate(run / "surrogate.pt", loaded.model)
    explainer = load_explainer(run / "explainer.pt", surrogate)
    assert explainer.num_patches == 16 and explainer.num_classes == 10
    record = json.loads((run / "record.json").read_text())
    assert record["augment"] is True
    assert "RandomResizedCrop" in record["data"]["preprocessing"]
    assert "RandomVerticalFlip" in record["data"]["preprocessing"]
    assert record["data"]["images"] == 8 and record["validation"]["images"] == 2
    for stage in ("surrogate", "explainer"):
        assert record[stage]["history"]["step"] == [2]  # ceil(8 / 4)
        assert record[stage]["processes"] == 1
    assert record["explainer"]["settings"]["subsets"] == 2
    # the surrogate moved away from the classifier
    moved = [
        (a - b).abs().max()
        for a, b in zip(surrogate.parameters(), loaded.model.parameters())
    ]
    assert max(moved) > 0
    with pytest.raises(ValueError, match="another classifier"):
        load_surrogate(
            run / "surrogate.pt", load_model("default", files["other"]).model
        )
    with pytest.raises(ValueError, match="another surrogate"):
        load_explainer(run / "explainer.pt", loaded.model)  # the classifier itself


def test_explain_and_evaluate_use_the_run(run, files, capsys, tmp_path):
    from captum_vit.attr import ViTShapley
    from captum_vit.methods import METHODS
    from captum_vit.models import load_model
    from captum_vit.train_shapley import attach_shapley

    loaded = load_model("default", files["model"])
    assert "shapley_explainer" not in loaded.extras  # never the shipped ones
    attach_shapley(loaded, run)
    explainer = loaded.extras["shapley_explainer"]
    surrogate = loaded.extras["shapley_surrogate"]
    assert explainer.surrogate is surrogate and "shapley" in loaded.describe()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    built = METHODS["vit-shapley"].build(loaded.model, loaded.extras)
    direct = ViTShapley(explainer, surrogate).attribute(x, target=[1, 2])
    assert torch.allclose(built(x, torch.tensor([1, 2])), direct)

    common = ["--checkpoint", files["model"], "--shapley", run, "--quiet"]
    rc, out, err = cli(
        capsys,
        "explain",
        *common,
        "--n",
        "2",
        "--method",
        "vit-shapley",
        "--out",
        tmp_path / "ex",
    )
    assert rc == 0, err
    assert "vit-shapley: skipped" not in out and "vit-shapley:" in out
    rc, out, err = cli(
        capsys,
        "evaluate",
        *common,
        "--data",
        files["images"],
        "--target",
        "pred",
        "--methods",
        "vit-shapley",
        "random",
        "--curve-steps",
        "2",
        "--faith-samples",
        "4",
        "--batch-size",
        "5",
        "--workers",
        "0",
        "--out",
        tmp_path / "ev",
    )
    assert rc == 0, err
    with (tmp_path / "ev" / "results.csv").open() as fh:
        methods = [r["method"] for r in csv.DictReader(fh)]
    assert methods == ["vit-shapley", "random"]


def test_killed_run_resumes_exactly(files, monkeypatch, tmp_path):
    """Killed right after the explainer's step-2 checkpoint, resumed with another
    number of DataLoader workers: the same weights as the uninterrupted run."""
    steps = ["--save-every", "2", "--epochs", "2"]  # 4 steps per stage
    straight = tmp_path / "straight"
    assert main(_train_args(files, straight, "--workers", "1", *steps)) == 0
    save = _checkpoints.save

    def save_then_die(path, payload):
        save(path, payload)
        if payload["kind"] == "explainer" and payload["step"] == 2:
            raise KeyboardInterrupt("killed")

    killed = tmp_path / "killed"
    monkeypatch.setattr(_checkpoints, "save", save_then_die)
    assert main(_train_args(files, killed, "--workers", "0", *steps)) == 130
    assert not (killed / "explainer.pt").exists()
    monkeypatch.setattr(_checkpoints, "save", save)
    assert main(_train_args(files, killed, "--workers", "0", *steps)) == 0
    for name in ("surrogate.pt", "explainer.pt"):
        a = torch.load(straight / name)["state_dict"]
        b = torch.load(killed / name)["state_dict"]
        assert a.keys() == b.keys()
        assert all(torch.allclose(a[k], b[k], atol=1e-6, rtol=0) for k in a), name
    record = json.loads((killed / "record.json").read_text())
    assert record["explainer"]["history"]["step"] == [2, 4]


def test_embedded_training_scenes_are_the_default_source(files, tmp_path):
    out = tmp_path / "scenes"
    args = [
        "train-shapley",
        "--checkpoint",
        files["model"],
        "--n",
        "8",
        "--val-n",
        "4",
        "--max-steps",
        "1",
        "--no-augment",
        "--stage",
        "surrogate",
        "--workers",
        "0",
        "--out",
        out,
        *SMALL,
    ]
    assert main([str(a) for a in args]) == 0
    record = json.loads((out / "record.json").read_text())
    assert record["data"]["source"] == "embedded scenes"
    assert record["data"]["split"] == "train" and record["data"]["image_size"] == 32
    assert record["augment"] is False and "explainer" not in record
    assert (out / "surrogate.pt").is_file() and not (out / "explainer.pt").exists()


def _one_line_error(rc: int, err: str, prog: str, text: str) -> None:
    assert rc == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"captum-vit {prog}: error: "), err
    assert text in err, err


def test_bad_input_one_line_each(run, files, capsys, tmp_path):
    d = files["dir"]
    rc, _, err = cli(
        capsys,
        "train-shapley",
        "--checkpoint",
        files["model"],
        "--data",
        d / "empty",
        "--out",
        tmp_path / "a",
    )
    _one_line_error(rc, err, "train-shapley", "no images found")
    # a surrogate made for another classifier
    rc, _, err = cli(
        capsys,
        "explain",
        "--checkpoint",
        files["other"],
        "--shapley",
        run,
        "--n",
        "1",
        "--method",
        "vit-shapley",
        "--out",
        tmp_path / "b",
    )
    _one_line_error(rc, err, "explain", "fine-tuned from another classifier")
    # an explainer trained for another patch grid (2 x 2) next to the right surrogate
    grid = tmp_path / "grid"
    grid.mkdir()
    shutil.copy(run / "surrogate.pt", grid / "surrogate.pt")
    small = zoo.build_model(dict(ZOO_CONFIG, image_size=16))
    save_explainer(ShapleyExplainer.from_surrogate(small), grid / "explainer.pt")
    rc, _, err = cli(
        capsys,
        "evaluate",
        "--checkpoint",
        files["model"],
        "--shapley",
        grid,
        "--n",
        "2",
        "--methods",
        "vit-shapley",
        "--out",
        tmp_path / "c",
    )
    _one_line_error(rc, err, "evaluate", "2x2 patch grid, the surrogate's is 4x4")
    # resuming with other settings
    rc, _, err = cli(capsys, *_train_args(files, run, "--lr", "0.5"))
    _one_line_error(rc, err, "train-shapley", "other settings (lr: 1e-05 then, 0.5 now")
    rc, _, err = cli(capsys, "train-shapley", "--amp", "fp16", "--out", tmp_path / "d")
    _one_line_error(rc, err, "train-shapley", "--amp: fp16 needs a CUDA device")
    rc, _, err = cli(capsys, "train-shapley", "--subsets", "3", "--out", tmp_path / "e")
    _one_line_error(rc, err, "train-shapley", "--subsets: the explainer pairs")
    rc, _, err = cli(
        capsys, *_train_args(files, tmp_path / "f", "--stage", "explainer")
    )
    _one_line_error(rc, err, "train-shapley", "run --stage surrogate first")
    rc, _, err = cli(
        capsys, "explain", "--shapley", files["images"], "--out", tmp_path / "g"
    )
    _one_line_error(rc, err, "explain", "has no surrogate.pt or explainer.pt")
    rc, _, err = cli(capsys, *_train_args(files, tmp_path / "h", "--batch-size", "0"))
    _one_line_error(rc, err, "train-shapley", "--batch-size: expected a positive")


def test_unreadable_image_is_skipped_not_fatal(files, capsys, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(files["images"], images)
    (images / "broken.png").write_bytes(b"not a png")
    rc, _, err = cli(
        capsys,
        "train-shapley",
        "--checkpoint",
        files["model"],
        "--data",
        images,
        "--val-n",
        "0",
        "--stage",
        "surrogate",
        "--epochs",
        "1",
        "--workers",
        "0",
        "--out",
        tmp_path / "run",
        *SMALL,
    )
    assert rc == 0, err
    assert "surrogate: skipped an unreadable image (cannot read image" in err
    record = json.loads((tmp_path / "run" / "record.json").read_text())
    assert record["surrogate"]["history"]["skipped_images"] == 1  # 11 images, 3 steps


def test_readme_and_card_commands_use_existing_options():
    """Every option of the documented train-shapley / --shapley commands exists."""
    import re

    from captum_vit.cli import build_parser

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    section = readme.split("## ViT Shapley for your model", 1)[1].split("\n## ", 1)[0]
    card = (root / "captum_vit" / "zoo" / "SHAPLEY_CARD.md").read_text()
    blocks = [b.split("```", 1)[0] for b in (section + card).split("```bash")[1:]]
    commands = [
        c for b in blocks for c in b.replace("\\\n", " ").splitlines() if "--" in c
    ]
    subparsers = build_parser()._subparsers._group_actions[0].choices
    checked = 0
    for command in commands:
        words = command.split("#")[0].split()
        name = next((w for w in words if w in subparsers), None)
        if name is None:
            continue
        known = subparsers[name]._option_string_actions
        flags = [w for w in words[words.index(name) :] if re.match(r"--[a-z]", w)]
        assert all(f in known for f in flags), (command, flags)
        checked += 1
    assert checked >= 8
