"""captum-vit evaluate: the full table on a fresh install, resuming, bad input."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from captum_vit.evaluate import METRICS, EvalConfig, mean_ci, run_evaluation
from captum_vit.methods import method_names

SMALL = [
    "--tis-masks",
    "8",
    "--ig-steps",
    "2",
    "--curve-steps",
    "2",
    "--faith-samples",
    "4",
]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("captum-vit")
    assert exe is not None, "the captum-vit console script is not installed"
    return subprocess.run(
        [exe, *args], capture_output=True, text=True, timeout=1200, check=False
    )


def test_evaluate_n20_every_method_and_metric(tmp_path: Path):
    out = tmp_path / "eval"
    res = run_cli("evaluate", "--n", "20", "--chunk", "20", *SMALL, "--out", str(out))
    assert res.returncode == 0, res.stderr[-2000:]
    with (out / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    by_method = {r["method"]: r for r in rows}
    ran = set(by_method)
    skipped = {m for m in method_names() if f"{m}: skipped" in res.stdout}
    assert ran | skipped == set(method_names())
    assert skipped <= {"vit-shapley"}  # the only method that needs trained parts
    for row in rows:
        assert row["n"] == "20"
        for key, _, _ in METRICS:
            assert row[key] not in ("", "nan"), (row["method"], key)
    table = (out / "results.md").read_text()
    for _, header, _ in METRICS:
        assert header in table
    assert (out / "curves.png").stat().st_size > 5_000


def test_interrupted_run_resumes(tmp_path: Path):
    cfg = EvalConfig(n=6, chunk=2, tis_masks=8, curve_steps=2, faith_samples=4)
    cfg.sensitivity_samples = 4
    calls = []

    def interrupt_after_first(line: str) -> None:
        calls.append(line)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_evaluation(
            str(tmp_path), ["random", "genatt"], cfg, log=interrupt_after_first
        )
    records = [
        json.loads(x) for x in (tmp_path / "records.jsonl").read_text().splitlines()
    ]
    assert [(r["method"], r["start"]) for r in records] == [("random", 0)]
    first = records[0]

    done = []
    table = run_evaluation(str(tmp_path), ["random", "genatt"], cfg, log=done.append)
    records = [
        json.loads(x) for x in (tmp_path / "records.jsonl").read_text().splitlines()
    ]
    keys = [(r["method"], r["start"]) for r in records]
    assert len(keys) == len(set(keys)) == 6  # nothing recomputed, nothing missing
    assert records[0] == first
    assert not any("random: scenes 0-1" in line for line in done)
    assert table["random"]["n"][0] == 6 and table["genatt"]["n"][0] == 6


def test_mean_ci_matches_t_interval():
    m, h = mean_ci([1.0, 2.0, 3.0, float("nan")])
    assert m == pytest.approx(2.0)
    assert h == pytest.approx(4.302653 * 1.0 / 3**0.5, rel=1e-5)


def test_evaluate_bad_input(tmp_path: Path):
    res = run_cli("evaluate", "--methods", "rollout", "bogus", "--out", str(tmp_path))
    assert res.returncode == 2 and "unknown method(s) ['bogus']" in res.stderr
    res = run_cli("evaluate", "--n", "0", "--out", str(tmp_path))
    assert res.returncode == 2 and "--n: expected a positive number" in res.stderr
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    res = run_cli("evaluate", "--n", "2", "--out", str(blocked / "sub"))
    assert res.returncode == 2 and "--out: cannot write" in res.stderr
    if os.geteuid() != 0:  # root can write anywhere; the file case covers it
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        res = run_cli("evaluate", "--n", "2", "--out", str(ro))
        assert res.returncode == 2


def test_black_removal_means_black_pixels():
    """``--removal black`` fills removed patches with black *pixels*: deleting every
    patch must give the model's output on an all-black image (not on the zero input,
    which is mid-grey after this model's normalisation)."""
    import torch

    from captum_vit import metrics, zoo
    from captum_vit.evaluate import _removal

    model = zoo.load_default_model().model
    inputs, scenes = zoo.load_default_scenes(n=2)
    target = torch.as_tensor(scenes.labels).long()
    attr = torch.rand(inputs.shape, generator=torch.Generator().manual_seed(0))
    curves = metrics.insertion_deletion_curves(
        model, inputs, attr, target, fractions=[0.0, 1.0], removal=_removal("black")
    )
    with torch.no_grad():
        black = zoo.preprocess(torch.zeros(2, 3, 64, 64))
        expected = model(black).softmax(-1)[torch.arange(2), target]
        grey = model(torch.zeros_like(inputs)).softmax(-1)[torch.arange(2), target]
    assert torch.allclose(curves.deletion[:, -1], expected, atol=1e-5)
    assert not torch.allclose(expected, grey, atol=1e-3)
