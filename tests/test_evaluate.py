"""captum-vit evaluate: the full table on a fresh install, resuming, bad input."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
from helpers import FAST_EVALUATE, cli, run_cli, write_scene_folder

from captum_vit.evaluate import METRICS, EvalConfig, mean_ci, run_evaluation
from captum_vit.methods import method_names

SMALL = [
    "--tis-masks",
    "8",
    "--rise-masks",
    "8",
    "--ig-steps",
    "2",
    "--curve-steps",
    "2",
    "--faith-samples",
    "4",
    "--sensitivity-sizes",
    "1",
    "--sensitivity-samples",
    "2",
    "--road",
    "off",  # ROAD and the randomisation check: tests/test_evaluate_protocol.py
    "--infidelity-samples",
    "2",
]
#: Columns this module's quick runs leave out (opt-in or switched off above).
OPT_IN = (
    "road_morf",
    "road_lerf",
    "randomization_spearman",
    "randomization_ssim",
    "grid_pointing",  # tests/test_evaluate_new_columns.py
)


def test_evaluate_n20_every_method_and_metric(tmp_path: Path):
    out = tmp_path / "eval"
    args = ["evaluate", "--n", "20", "--chunk", "20", *SMALL, "--out", str(out)]
    res = run_cli(*args, timeout=1200)
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
            if key not in OPT_IN:
                assert row[key] not in ("", "nan"), (row["method"], key)
    table = (out / "results.md").read_text()
    for key, header, _ in METRICS:
        assert (header in table) == (key not in OPT_IN), header
    assert (out / "curves.png").stat().st_size > 5_000


def test_interrupted_run_resumes(tmp_path: Path):
    cfg = EvalConfig(n=6, chunk=2, tis_masks=8, curve_steps=2, faith_samples=4)
    cfg.sensitivity_samples, cfg.sensitivity_sizes, cfg.road = 4, 2, "off"
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
    assert any("genatt: images 0-1 done" in line for line in done)
    assert not any("random: images 0-1" in line for line in done)
    assert table["random"]["n"][0] == 6 and table["genatt"]["n"][0] == 6
    report = (tmp_path / "results.md").read_text()
    assert "Resumed: 2 of 12 (method, image) results were reused" in report


def test_report_numbers_read_well():
    from captum_vit.evaluate import format_mean_ci, format_seconds

    # seconds: two significant digits, the CI with as many decimals as it needs
    assert format_mean_ci(0.004213, 0.00031, significant=2) == "0.0042 ± 0.0003"
    assert format_mean_ci(12.34, 0.5, significant=2) == "12.3 ± 0.5"
    assert format_mean_ci(8.12e-5, 1.3e-6, significant=2) == "0.000081 ± 0.000001"
    # metrics: 3 decimals, more when the CI is narrower; never "-0.000" or "± 0"
    assert format_mean_ci(0.51234, 0.031) == "0.512 ± 0.031"
    assert format_mean_ci(0.51234, 0.00004) == "0.51234 ± 0.00004"
    assert format_mean_ci(-0.0001, 0.012) == "0.000 ± 0.012"
    assert format_mean_ci(1.0, 0.0) == "1.000 (all equal)"
    assert format_mean_ci(0.5, 1e-12, max_decimals=6) == "0.500000 ± <0.000001"
    assert format_mean_ci(float("nan"), float("nan")) == "n/a"
    assert format_seconds(0.00345) == "0.0034" and format_seconds(-0.0) == "0"


def test_results_md_defines_every_column_and_the_interval(tmp_path: Path):
    cfg = EvalConfig(n=3, chunk=3, tis_masks=8, curve_steps=2, faith_samples=4)
    cfg.sensitivity_samples, cfg.sensitivity_sizes = 4, 2
    cfg.randomization, cfg.road = 1, "patches"  # every column, the opt-in ones too
    cfg.infidelity_samples = 2
    run_evaluation(str(tmp_path), ["random"], cfg)
    report = (tmp_path / "results.md").read_text()
    assert "95 % confidence interval" in report and "Student t" in report
    for key, header, _ in METRICS:
        if key == "grid_pointing":  # needs 4 classes: tests/test_evaluate_new_columns
            continue
        assert f"- **{header}**: " in report
    assert "- **n**: " in report
    assert "-0.000" not in report and "± 0.000 " not in report
    assert "Resumed" not in report  # a fresh run reuses nothing


def test_mean_ci_matches_t_interval():
    m, h = mean_ci([1.0, 2.0, 3.0, float("nan")])
    assert m == pytest.approx(2.0)
    assert h == pytest.approx(4.302653 * 1.0 / 3**0.5, rel=1e-5)


def test_evaluate_bad_input(tmp_path: Path):
    res = run_cli("evaluate", "--methods", "rollout", "bogus", "--out", str(tmp_path))
    assert res.returncode == 2 and "unknown method(s) ['bogus']" in res.stderr
    res = run_cli("evaluate", "--n", "0", "--out", str(tmp_path))
    assert res.returncode == 2
    assert (
        res.stderr
        == "captum-vit evaluate: error: --n: expected a positive integer, got 0\n"
    )
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

    model = zoo.load_default_model()
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


# ------------------------------------------------------------- user folders
def test_evaluate_folder_skips_a_corrupt_image_and_reports_it(tmp_path, capsys):
    rows = write_scene_folder(tmp_path / "data", n=3)
    (tmp_path / "data" / "left" / "broken.png").write_bytes(b"\x89PNG broken")
    boxes = tmp_path / "boxes.csv"
    with boxes.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)  # no header line: also accepted
    out = tmp_path / "out"
    rc, stdout, err = cli(
        capsys,
        "evaluate",
        "--data",
        tmp_path / "data",
        "--boxes",
        boxes,
        "--methods",
        "rollout",
        "random",
        *FAST_EVALUATE,
        "--out",
        out,
    )
    assert rc == 0, err
    assert "warning: skipped left/broken.png: cannot read image" in err
    table = {r["method"]: r for r in csv.DictReader((out / "results.csv").open())}
    assert table["rollout"]["n"] == "3" and "pointing" in table["rollout"]
    report = (out / "results.md").read_text()
    assert "Skipped: 1 unreadable image(s)" in report and "left/broken.png" in report
    records = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    assert any("left/broken.png" in r["skipped"] for r in records)


@pytest.mark.parametrize(
    "setup,args,message",
    [
        ("empty", [], "no images found"),
        (
            "tree",
            ["--class-map", "{map}"],
            "labels outside the model's 10 classes: [12]",
        ),
        (
            "tree",
            ["--boxes", "{ghost}"],
            "--boxes '{ghost}': 1 file name(s) match no image",
        ),
        ("tree", ["--n", "9"], "--n 9: the data has only 2 image(s)"),
        ("flat", ["--target", "label"], "--target label: the data has no labels"),
    ],
)
def test_evaluate_folder_bad_input_one_line(tmp_path, capsys, setup, args, message):
    data = tmp_path / "data"
    data.mkdir()
    if setup == "tree":
        write_scene_folder(data, n=2)
    elif setup == "flat":
        from PIL import Image

        Image.new("RGB", (64, 64)).save(data / "a.png")
    (tmp_path / "map.json").write_text(json.dumps({"left": 3, "right": 12}))
    (tmp_path / "ghost.csv").write_text("file,x0,y0,x1,y1\nghost.png,0,0,9,9\n")
    sub = {"{map}": str(tmp_path / "map.json"), "{ghost}": str(tmp_path / "ghost.csv")}
    args = [sub.get(a, a) for a in args]
    message = message.replace("{ghost}", sub["{ghost}"])
    rc, _, err = cli(
        capsys,
        "evaluate",
        "--data",
        data,
        "--methods",
        "random",
        *args,
        *FAST_EVALUATE,
        "--out",
        tmp_path / "out",
    )
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("captum-vit evaluate: error: ") and message in err


def test_evaluate_resume_with_other_settings_is_one_line(tmp_path, capsys):
    base = ["evaluate", "--n", "2", "--methods", "random", *FAST_EVALUATE]
    assert cli(capsys, *base, "--out", tmp_path)[0] == 0
    rc, _, err = cli(capsys, *base, "--removal", "blur", "--out", tmp_path)
    assert rc == 2 and err.count("\n") == 1
    assert (
        "holds records made with other settings (removal: tokens then, blur now)" in err
    )


@pytest.mark.parametrize("changed", ["DEFAULT_WEIGHTS", "DEFAULT_EXPLAINER"])
def test_records_of_another_default_model_are_not_resumed(
    tmp_path, capsys, monkeypatch, changed
):
    """The embedded default's weights are "shipped" in every version: a folder of
    records made with an earlier default classifier, or an earlier ViT Shapley
    pair, must refuse to resume rather than mix that model's numbers into this
    one's table."""
    import warnings

    import torch

    from captum_vit import zoo

    path = getattr(zoo, changed)
    if not path.is_file():
        pytest.skip(f"{path.name} not shipped")
    out = tmp_path / "run"
    base = ["evaluate", "--n", "2", "--methods", "random", *FAST_EVALUATE, "--out", out]
    assert cli(capsys, *base)[0] == 0
    payload = torch.load(path, weights_only=True)
    state = dict(payload["state_dict"])
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = state[name] + 0.01
    payload["state_dict"] = state
    torch.save(payload, tmp_path / path.name)
    monkeypatch.setattr(zoo, changed, tmp_path / path.name)
    with warnings.catch_warnings():  # the shipped pair's own digest check
        warnings.simplefilter("ignore")
        rc, _, err = cli(capsys, *base)
    assert rc == 2 and err.count("\n") == 1
    assert "holds records made with other settings (model:" in err


def test_amp_bf16_runs_perturbation_methods_and_metrics_on_cpu(tmp_path, capsys):
    """bf16 autocast is a precision change, not another method: the table stays
    close to the float32 one (the differences are measured by benchmarks/scale.py)."""
    base = [
        "evaluate",
        "--n",
        "2",
        "--methods",
        "tis",
        "--tis-masks",
        "8",
        *FAST_EVALUATE,
    ]
    assert cli(capsys, *base, "--out", tmp_path / "f32")[0] == 0
    rc, _, err = cli(capsys, *base, "--amp", "bf16", "--out", tmp_path / "bf16")
    assert rc == 0, err
    a = next(csv.DictReader((tmp_path / "f32" / "results.csv").open()))
    b = next(csv.DictReader((tmp_path / "bf16" / "results.csv").open()))
    for key in ("insertion", "deletion", "aopc"):
        assert abs(float(a[key]) - float(b[key])) < 0.05, key
    assert "AMP bf16" in (tmp_path / "bf16" / "results.md").read_text()
