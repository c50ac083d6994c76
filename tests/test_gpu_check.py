"""benchmarks/gpu_check.py: its whole code path, run on the CPU (no GPU needed).

``--device cpu`` compares the CPU with itself, so the maps must agree exactly; what
this guards is that every line of the script (placement checks, every method, the
evaluate and train-shapley smoke runs through the CLI, the tables and the JSON) still
runs against the current package, so that the script works the day a GPU is lent.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest
import torch

from captum_vit.methods import METHODS

ROOT = Path(__file__).resolve().parents[1]


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gpu_check", ROOT / "benchmarks" / "gpu_check.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_whole_check_runs_on_cpu(tmp_path: Path, capsys) -> None:
    gpu_check = _module()
    out = tmp_path / "gpu_check.json"
    argv = ["--device", "cpu", "--n", "1", "--quick", "--smoke-n", "2"]
    argv += ["--threads", "1", "--work", str(tmp_path / "work"), "--out", str(out)]
    assert gpu_check.main(argv) == 0
    report = json.loads(out.read_text())
    assert report["ok"] is True
    assert report["environment"]["device"] == "cpu"

    # every registered method ran on both sides and agreed exactly (cpu vs cpu)
    rows = {r["method"]: r for r in report["methods"]}
    assert list(rows) == list(METHODS)
    for name, row in rows.items():
        assert row["ok"] and "skipped" not in row and "error" not in row, row
        assert row["pearson"] == pytest.approx(1.0) and row["max_abs_diff"] == 0.0
        assert row["map_device"] == "cpu" and row["same_shape"] and row["finite"]

    checks = {r["check"]: r for r in report["placement"]}
    assert all(r["ok"] for r in checks.values())
    assert "gloo process group (1 rank)" in checks
    assert checks["autocast fp16 forward"]["detail"].startswith("skipped")
    assert checks["pinned loader batch -> device"]["detail"].startswith("skipped")

    # fp16 needs CUDA: skipped on the CPU, with a note
    runs = [r["run"] for r in report["smoke"]]
    assert runs == [
        "evaluate cpu fp32",
        "evaluate cpu bf16",
        "train-shapley cpu fp32",
        "train-shapley cpu bf16",
    ]
    for row in report["smoke"]:
        assert row["ok"] and row["rc"] == 0, row
    evaluated = report["smoke"][1]["results"]
    assert sorted(evaluated) == sorted(gpu_check.SMOKE_METHODS)
    assert report["smoke"][3]["explainer_map_device"] == "cpu"

    printed = capsys.readouterr().out
    assert "fp16 runs skipped: fp16 autocast needs CUDA" in printed
    assert "| method | cpu s | cpu s | pearson | max\\|diff\\| | ok |" in printed
    assert "all ok: True" in printed


def test_a_disagreeing_method_fails_the_check(tmp_path: Path, monkeypatch) -> None:
    gpu_check = _module()
    real = gpu_check.compare_maps

    def off(ref, got):  # as if the device's map were another map
        return real(ref, torch.rand_like(got.double()))

    monkeypatch.setattr(gpu_check, "compare_maps", off)
    out = tmp_path / "r.json"
    argv = ["--device", "cpu", "--n", "2", "--methods", "genatt", "--no-smoke"]
    argv += ["--out", str(out), "--work", str(tmp_path)]
    assert gpu_check.main(argv) == 1
    report = json.loads(out.read_text())
    assert report["ok"] is False
    assert [r["ok"] for r in report["methods"]] == [False]


def test_compare_maps() -> None:
    gpu_check = _module()
    a = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    same = gpu_check.compare_maps(a, a.clone())
    assert same["pearson"] == pytest.approx(1.0) and same["max_abs_diff"] == 0.0
    flipped = gpu_check.compare_maps(a, -a)
    assert flipped["pearson"] == pytest.approx(-1.0)
    assert flipped["max_abs_diff"] == pytest.approx(2 * float(a.abs().max()))
    noisy = gpu_check.compare_maps(a, a + 1e-6)
    assert noisy["pearson"] > 0.999999 and noisy["max_abs_diff"] < 2e-6
    assert not gpu_check.compare_maps(a, a[:1])["same_shape"]
    nan = a.clone()
    nan[0, 0, 0, 0] = float("nan")
    assert not gpu_check.compare_maps(a, nan)["finite"]
    const = torch.ones(1, 3, 4, 4)
    assert gpu_check.compare_maps(const, const.clone())["pearson"] == 1.0
    assert gpu_check.compare_maps(const, a[:1, :, :4, :4])["pearson"] == 0.0


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--device", "cpu", "--n", "0"], "--n"),
        (["--device", "cpu", "--min-r", "1.5"], "--min-r"),
        (["--device", "tpu"], "--device"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv, flag, capsys) -> None:
    assert _module().main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gpu_check.py: error: ") and flag in err
    assert len(err.splitlines()) == 1
