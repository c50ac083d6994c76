"""The captum-vit command, run as a user would: in a subprocess on the install."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import cli, run_cli

from captum_vit import zoo


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
    model = zoo.load_default_model()
    scenes = zoo.make_scenes(3, split="test", seed=0)
    with torch.no_grad():
        pred = model(zoo.preprocess(scenes.images)).argmax(1)
    assert printed == [zoo.CLASS_NAMES[int(i)] for i in pred]
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


# ------------------------------------------------------------ flags, in process
BAD_FLAGS = [
    (["--n", "0"], "--n: expected a positive integer, got 0"),
    (["--n", "-2"], "--n: expected a positive integer, got -2"),
    (["--n", "many"], "--n: expected a positive integer, got 'many'"),
    (["--tis-masks", "0"], "--tis-masks: expected a positive integer"),
    (["--rise-masks", "0"], "--rise-masks: expected a positive integer"),
    (["--ig-steps", "0"], "--ig-steps: expected a positive integer"),
    (["--batch-size", "0"], "--batch-size: expected a positive integer"),
    (["--workers", "-1"], "--workers: expected an integer >= 0"),
    (["--seed", "-1"], "--seed: expected an integer >= 0"),
    (["--device", "gpu0"], "--device: expected cpu, cuda or cuda:K, got 'gpu0'"),
    (["--amp", "int8"], "--amp: invalid choice: 'int8'"),
    (["--amp", "fp16", "--device", "cpu"], "--amp: fp16 needs a CUDA device"),
    (["--checkpoint", "missing.pth"], "--checkpoint: 'missing.pth': no such file"),
    (["--data", "no/such/dir"], "--data: 'no/such/dir': no such folder"),
    (["--method", "all", "nosuch"], "--method: unknown method(s) ['nosuch']"),
    (["--use-ema"], "--use-ema: needs --checkpoint"),
    (["--bogus"], "unrecognized arguments: --bogus"),
]
EVALUATE_ONLY = [
    (["--chunk", "0"], "--batch-size: expected a positive integer"),
    (["--curve-steps", "0"], "--curve-steps: expected a positive integer"),
    (["--faith-samples", "0"], "--faith-samples: expected an integer >= 2"),
    (["--faith-samples", "1"], "--faith-samples: expected an integer >= 2"),
    (["--removal", "smudge"], "--removal: invalid choice: 'smudge'"),
    (["--target", "7"], "--target: expected 'label' or 'pred', got '7'"),
]
EXPLAIN_ONLY = [
    (["--target", "cat"], "--target: expected 'pred' or 'label' or a class index"),
    (["--png"], "--png: needs --data"),
]


@pytest.mark.parametrize(
    "command,args,message",
    [(c, a, m) for c in ("explain", "evaluate") for a, m in BAD_FLAGS]
    + [("evaluate", a, m) for a, m in EVALUATE_ONLY]
    + [("explain", a, m) for a, m in EXPLAIN_ONLY],
)
def test_every_flag_is_checked_at_parse_time(capsys, tmp_path, command, args, message):
    if "--device" in args and "cuda" in args and torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    rc, out, err = cli(capsys, command, *args, "--out", str(tmp_path / "o"))
    assert rc == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"captum-vit {command}: error: ")
    assert message in err
    assert not (tmp_path / "o").exists() or message.startswith("--out")


def test_cuda_device_without_cuda(capsys, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    rc, _, err = cli(capsys, "evaluate", "--device", "cuda:1", "--out", str(tmp_path))
    assert rc == 2 and err.startswith("captum-vit evaluate: error: --device: CUDA is")


def test_out_is_checked_before_any_work(capsys, tmp_path, monkeypatch):
    import captum_vit.models

    def no_work(*a, **k):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(captum_vit.models, "load_model", no_work)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for command in ("explain", "evaluate"):
        rc, _, err = cli(capsys, command, "--out", str(blocker))
        assert rc == 2 and err.count("\n") == 1
        assert err.startswith(f"captum-vit {command}: error: --out: cannot write")


def test_method_and_methods_on_both_commands_and_all_with_names():
    from captum_vit.cli import build_parser
    from captum_vit.methods import method_names, resolve_methods

    parser = build_parser()
    for command in ("explain", "evaluate"):
        for flag in ("--method", "--methods"):
            args = parser.parse_args([command, flag, "rollout", "genatt"])
            assert args.methods == ["rollout", "genatt"]
    args = parser.parse_args(["explain", "--method", "all", "genatt"])
    assert [m.name for m in resolve_methods(args.methods)] == method_names()
    dup = [m.name for m in resolve_methods(["genatt", "rollout", "genatt"])]
    assert dup == ["genatt", "rollout"]


def test_unsupported_model_and_offline_pretrained_are_one_line(
    capsys, tmp_path, monkeypatch
):
    from captum_vit import models

    rc, _, err = cli(
        capsys,
        "explain",
        "--model",
        "test_resnet",
        "--random-weights",
        "--n",
        "1",
        "--out",
        str(tmp_path),
    )
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith(
        "captum-vit explain: error: --model test_resnet: not supported"
    )
    monkeypatch.setattr(models, "_reachable", lambda *a, **k: False)
    rc, _, err = cli(capsys, "evaluate", "--model", "test_vit", "--out", str(tmp_path))
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "could not be fetched" in err and "--checkpoint PATH" in err


def test_vit_shapley_is_never_swapped_in_for_another_checkpoint(capsys, tmp_path):
    from captum_vit import zoo

    rc, out, err = cli(
        capsys,
        "explain",
        "--checkpoint",
        str(zoo.DEFAULT_WEIGHTS),
        "--n",
        "1",
        "--method",
        "vit-shapley",
        "rollout",
        "--quiet",
        "--out",
        str(tmp_path),
    )
    assert rc == 0, err
    assert "vit-shapley: skipped (vit-shapley needs a ViT Shapley explainer" in out
    assert re.search(r"^rollout: [0-9.]+ s", out, re.M)


def test_progress_bars_by_default_quiet_turns_them_off(capsys, tmp_path):
    args = ["explain", "--n", "1", "--method", "tis", "--tis-masks", "4"]
    rc, _, err = cli(capsys, *args, "--out", str(tmp_path))
    assert rc == 0 and "TIS: 100%" in err
    rc, _, err = cli(capsys, *args, "--quiet", "--out", str(tmp_path))
    assert rc == 0 and "TIS" not in err and "%" not in err


def test_leading_double_dash_is_ignored(capsys):
    """torchrun ... -m captum_vit -- evaluate ...: the command sees a leading --."""
    rc, out, err = cli(capsys, "--", "evaluate", "--n", "0")
    assert rc == 2 and err.startswith("captum-vit evaluate: error: --n:")
