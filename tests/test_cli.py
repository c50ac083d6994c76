"""The captum-vit command, run as a user would: in a subprocess on the install."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from captum_vit import zoo


def run_cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    exe = shutil.which("captum-vit")
    assert exe is not None, "the captum-vit console script is not installed"
    return subprocess.run(
        [exe, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_explain_default_writes_grid_and_prints_model_predictions(tmp_path: Path):
    res = run_cli(
        "explain",
        "--n",
        "3",
        "--method",
        "rollout",
        "genatt",
        "ixg",
        "random",
        "--out",
        str(tmp_path),
    )
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "explain_grid.png").stat().st_size > 10_000
    printed = re.findall(r"top: ([^,;]+?) [0-9.]+", res.stdout)
    default = zoo.load_default_model()
    scenes = zoo.make_scenes(3, split="test", seed=0)
    with torch.no_grad():
        pred = default.model(default.preprocess(scenes.images)).argmax(1)
    assert printed == [default.class_names[int(i)] for i in pred]
    for name in ("rollout", "genatt", "ixg", "random"):
        assert re.search(rf"^{name}: [0-9.]+ s", res.stdout, re.M)


def test_explain_image_file_of_another_size(tmp_path: Path):
    from PIL import Image

    img = Image.fromarray((torch.rand(50, 70, 3) * 255).byte().numpy())
    path = tmp_path / "photo.png"
    img.save(path)
    res = run_cli("explain", str(path), "--method", "genatt", "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert "resized to the model's input 64x64" in res.stdout
    assert (tmp_path / "explain_grid.png").exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--method", "nosuch"], "unknown method(s) ['nosuch']"),
        (["--model", "not_a_timm_model"], "unknown model 'not_a_timm_model'"),
        (["--target", "99"], "--target: class 99 out of range"),
    ],
)
def test_explain_bad_input(tmp_path: Path, args, message):
    res = run_cli("explain", "--n", "1", *args, "--out", str(tmp_path))
    assert res.returncode == 2
    assert message in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_explain_unreadable_image(tmp_path: Path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"this is not an image")
    res = run_cli("explain", str(bad), "--out", str(tmp_path))
    assert res.returncode == 2
    assert "cannot read image" in res.stderr and "broken.png" in res.stderr


def test_module_entry_point(tmp_path: Path):
    res = subprocess.run(
        [sys.executable, "-m", "captum_vit", "explain", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0 and "--method" in res.stdout
