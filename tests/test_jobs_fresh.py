"""The long jobs as a new user meets them (issue 26): progress written to a log file,
Ctrl-C, the evaluate protocol presets and their cost, the bare command and
``--version``, and what a train-shapley run folder keeps."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List

import pytest
import torch
from helpers import (
    FAST_EVALUATE,
    cli,
    save_zoo_classifier,
    write_scene_folder,
    write_scene_pngs,
)

from captum_vit import __version__
from captum_vit._jobs import RecordStore
from captum_vit._utils import progress_bar
from captum_vit.cli import build_parser, main
from captum_vit.evaluate import (
    PROTOCOLS,
    EvalConfig,
    forward_passes,
    protocol_settings,
    run_evaluation,
)


def _table(path: Path) -> Dict[str, Dict[str, str]]:
    """results.csv without the timing columns (the only ones a rerun changes)."""
    with (path / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    return {
        r["method"]: {k: v for k, v in r.items() if not k.startswith("seconds")}
        for r in rows
    }


# ------------------------------------------------------------------ 17: the command
def test_bare_command_lists_the_commands(capsys):
    rc, out, err = cli(capsys)
    assert rc == 2 and out == ""
    assert err.startswith("usage: captum-vit")
    for name, text in (
        ("explain", "explain images with one or all methods"),
        ("evaluate", "score every method with every metric"),
        ("train-shapley", "train a ViT Shapley surrogate and explainer"),
    ):
        assert any(line.split()[:1] == [name] for line in err.splitlines()), name
        assert text in " ".join(err.split()), text


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"captum-vit {__version__}"
    assert __version__ == "0.1.0"


# ------------------------------------------------------------------ 5: progress bars
def test_bar_on_a_non_terminal_is_a_few_plain_lines():
    buf = io.StringIO()
    bar = progress_bar(total=5000, desc="RISE", unit="fwd", file=buf)
    for _ in range(5000):
        bar.update(1)
    bar.close()
    text = buf.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert 1 <= len(lines) <= 3 and all(len(line) <= 100 for line in lines)
    assert "RISE: 100%" in lines[-1] and "5000/5000" in lines[-1]
    quiet = io.StringIO()
    bar = progress_bar(range(3), desc="off", enabled=False, file=quiet)
    assert list(bar) == [0, 1, 2] and quiet.getvalue() == ""


def test_progress_piped_to_a_file_has_no_carriage_returns(tmp_path):
    """The README's first command with stderr to a file, as in a log: RISE and TIS
    bars (thousands of updates) become a few short lines each."""
    exe = shutil.which("captum-vit")
    assert exe is not None
    log = tmp_path / "log.txt"
    with log.open("w") as fh:
        res = subprocess.run(
            [exe, "explain", "--n", "2", "--method", "rise", "tis"]
            + ["--rise-masks", "600", "--tis-masks", "64", "--out", str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=fh,
            text=True,
            timeout=600,
            check=False,
        )
    err = log.read_text()
    assert res.returncode == 0, err[-2000:]
    assert "\r" not in err
    assert max(len(line) for line in err.splitlines()) < 200
    assert "RISE: 100%" in err and "TIS: 100%" in err
    assert len(err.splitlines()) <= 12


# ------------------------------------------------------------------ 13: Ctrl-C
def _interrupt_second_explain(monkeypatch, module) -> None:
    """Ctrl-C in the middle of the second chunk's explanation."""
    real = module.timed_explain
    calls = []

    def explain(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(module, "timed_explain", explain)


def test_ctrl_c_in_evaluate_is_one_line_and_the_rerun_resumes(
    capsys, monkeypatch, tmp_path
):
    import captum_vit.evaluate._job as evaluate  # where the job runs

    args = [
        "evaluate",
        "--n",
        "4",
        "--chunk",
        "2",
        "--methods",
        "rollout",
        *FAST_EVALUATE,
    ]
    assert cli(capsys, *args, "--out", tmp_path / "straight")[0] == 0
    _interrupt_second_explain(monkeypatch, evaluate)
    out = tmp_path / "stopped"
    rc, _, err = cli(capsys, *args, "--out", out)
    assert rc == 130
    assert err == (
        "captum-vit evaluate: interrupted after 2 of 4 images; every finished "
        "record is kept: run the same command again to resume\n"
    )
    lines = (out / "records.jsonl").read_text().splitlines()
    assert [json.loads(x)["start"] for x in lines] == [0]
    monkeypatch.undo()
    rc, stdout, _ = cli(capsys, *args, "--out", out)
    assert rc == 0
    assert "Resumed: 2 of 4 (method, image) results were reused" in stdout
    assert _table(out) == _table(tmp_path / "straight")


def test_ctrl_c_in_explain_data_is_one_line_and_the_rerun_resumes(
    capsys, monkeypatch, tmp_path
):
    import captum_vit.explain as explain

    write_scene_folder(tmp_path / "data", n=4)
    args = ["explain", "--data", tmp_path / "data", "--method", "rollout"]
    args += ["--batch-size", "2", "--workers", "0", "--quiet"]
    _interrupt_second_explain(monkeypatch, explain)
    rc, _, err = cli(capsys, *args, "--out", tmp_path / "maps")
    assert rc == 130 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("captum-vit explain: interrupted after 2 of 4 images;")
    monkeypatch.undo()
    rc, out, _ = cli(capsys, *args, "--out", tmp_path / "maps")
    assert rc == 0 and "4 maps written" in out


def test_a_record_cut_by_a_killed_process_does_not_swallow_the_next(tmp_path):
    store = RecordStore(tmp_path)
    store.append({"method": "a", "start": 0})
    with store.path().open("a") as fh:
        fh.write('{"method": "b", "sta')  # killed in the middle of a line
    store.append({"method": "c", "start": 2})
    assert [r["method"] for r in store.read()] == ["a", "c"]


def test_ranks_that_disagree_name_a_setting_only_one_of_them_has(tmp_path):
    # the one settings-diff (captum_vit._settings.differing): a key that only the
    # other rank has is named too
    from captum_vit._jobs import SettingsMismatch, plan
    from captum_vit.distributed import DistContext

    class TwoRanks(DistContext):
        def all_gather(self, obj):
            return [obj, {**obj, "labels": "labels.csv"}]

    with pytest.raises(SettingsMismatch, match=r"\(labels differ between rank 0"):
        plan(TwoRanks(), RecordStore(tmp_path), {"data": "x"}, ["m"], [[0]])


# ------------------------------------------------------------------ 15: protocols
def test_evaluate_help_names_the_presets_honestly(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "The defaults are quick" not in text
    assert "--protocol {quick,standard,paper-cpu,paper}" in text
    assert "seconds for a ViT-S/16 image and method" in text


def test_quick_is_the_default_and_cheap():
    assert list(PROTOCOLS) == ["quick", "standard", "paper-cpu", "paper"]
    cfg = EvalConfig()
    quick = protocol_settings("quick", 196, "tokens", 200)
    assert {k: getattr(cfg, k) for k in quick} == quick
    # ViT-S/16: 196 patches, 1000 classes, no distractor (a user's folder)
    passes = forward_passes(cfg, 1000, False)
    assert sum(v for k, v in passes.items() if k != "explanations") <= 100
    assert passes["ROAD"] == 0
    old = EvalConfig(**protocol_settings("standard", 196, "tokens", 200))
    old_passes = forward_passes(old, 1000, False)
    assert old_passes["sensitivity-n"] == 288 and old_passes["faithfulness"] == 64
    paper = protocol_settings("paper", 196, "tokens", 10)
    assert paper["curve_steps"] == 196 and paper["evaluator"] == "surrogate"
    assert paper["randomization"] == 10  # capped at the images
    assert protocol_settings("paper", 196, "black")["evaluator"] == "classifier"


def test_the_estimate_counts_the_forward_passes(tmp_path):
    """The printed cost is the metrics' real number of perturbed passes."""
    from captum_vit.models import load_model

    loaded = load_model("default")
    rows: List[int] = []
    hook = loaded.model.register_forward_hook(
        lambda m, i, o: rows.append(i[0].shape[0])
    )
    try:
        for name in ("quick", "standard"):
            cfg = EvalConfig(n=1, chunk=1, **protocol_settings(name, 64, "tokens", 1))
            rows.clear()
            run_evaluation(str(tmp_path / name), ["random"], cfg, model=loaded)
            cost = forward_passes(cfg, loaded.num_classes, True)
            estimate = sum(v for k, v in cost.items() if k != "explanations")
            assert abs(sum(rows) - estimate) <= 0.05 * estimate, (name, rows)
    finally:
        hook.remove()


def test_protocol_presets_options_override_and_the_folder_records_it(capsys, tmp_path):
    base = ["evaluate", "--n", "2", "--methods", "random", "--workers", "0"]
    rc, out, err = cli(capsys, *base, "--out", tmp_path / "q")
    assert rc == 0
    assert err.startswith(
        "evaluate: protocol quick: about 100 perturbed forward passes per image and "
        "method"
    )
    assert "2 (method, image) pair(s) to do: about 200 passes" in err
    assert "Protocol: the `quick` preset (`--protocol quick`)" in out
    settings = json.loads((tmp_path / "q" / "records.jsonl").read_text())["settings"]
    assert settings["curve_steps"] == 8 and settings["road"] == "off"
    rc, out, err = cli(
        capsys,
        *base,
        "--protocol",
        "paper",
        "--faith-samples",
        "5",  # given: overrides the preset
        "--sensitivity-samples",
        "2",
        "--non-target",
        "off",
        "--road",
        "off",
        "--quiet",
        "--out",
        tmp_path / "p",
    )
    assert rc == 0, err
    settings = json.loads((tmp_path / "p" / "records.jsonl").read_text())["settings"]
    assert settings["curve_steps"] == 64  # the default model's patches
    assert settings["evaluator"] == "surrogate" and settings["randomization"] == 2
    assert settings["faith_samples"] == 5 and settings["sensitivity_sizes"] == 13
    assert settings["metric_batch"] == 1024
    assert "Protocol: no preset" in out


def test_a_folder_of_the_former_defaults_resumes_with_protocol_standard(
    capsys, tmp_path
):
    """A results folder made before the presets (then the defaults: 16 steps, 64
    and 9 x 32 subsets, ROAD on patches) resumes with --protocol standard, and
    refuses the new defaults with a hint that says so."""
    base = ["evaluate", "--n", "2", "--methods", "random", "--workers", "0", "--quiet"]
    old = ["--curve-steps", "16", "--faith-samples", "64", "--sensitivity-sizes", "9"]
    old += ["--sensitivity-samples", "32", "--road", "patches"]
    old += ["--infidelity", "off"]  # folders from before the infidelity column
    out = tmp_path / "old"
    assert cli(capsys, *base, *old, "--out", out)[0] == 0
    rc, _, err = cli(capsys, *base, "--out", out)
    assert rc == 2 and err.count("\n") == 1
    assert "add --protocol standard --infidelity off to resume it" in err
    again = ["--protocol", "standard", "--infidelity", "off"]
    rc, stdout, _ = cli(capsys, *base, *again, "--out", out)
    assert rc == 0 and "Resumed: 2 of 2" in stdout
    assert "Protocol: the `standard` preset" in stdout


def test_build_parser_defaults_leave_the_preset_to_decide():
    ns = build_parser().parse_args(["evaluate"])
    assert ns.protocol == "quick"
    for key in PROTOCOLS["quick"]:
        assert getattr(ns, key) is None, key


# ------------------------------------------- 13 and 17: train-shapley run folders
@pytest.fixture(scope="module")
def train_files(tmp_path_factory) -> Dict[str, Path]:
    """A tiny random-weight classifier in the zoo's format (32 px, patch 8, one
    block) and 10 scene images as PNG files (8 for training, 2 held out)."""
    d = tmp_path_factory.mktemp("keep")
    return {
        "images": write_scene_pngs(d / "images"),
        "model": save_zoo_classifier(d / "tiny.pt"),
    }


def _surrogate_args(files: Dict[str, Path], out: Path, *extra: str) -> List[str]:
    """A surrogate stage of 6 steps (3 passes over 8 images, 4 per step), with a
    checkpoint and a validation after every step."""
    return [
        "train-shapley",
        "--checkpoint",
        str(files["model"]),
        "--data",
        str(files["images"]),
        "--val-n",
        "2",
        "--stage",
        "surrogate",
        "--epochs",
        "3",
        "--save-every",
        "1",
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--quiet",
        "--out",
        str(out),
        *extra,
    ]


def _weights(path: Path) -> Dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def _same(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(
        torch.allclose(a[k], b[k], atol=1e-6, rtol=0) for k in a
    )


def test_a_finished_run_keeps_one_small_checkpoint_and_reruns_at_once(
    train_files, capsys, tmp_path
):
    out = tmp_path / "run"
    rc, _, err = cli(capsys, *_surrogate_args(train_files, out))
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == [
        "record.json",
        "surrogate.pt",
        "surrogate_ckpt.pt",
    ]
    ckpt = torch.load(out / "surrogate_ckpt.pt", weights_only=True)
    assert ckpt["finished"] and ckpt["optimizer"] is None and ckpt["best"] is None
    # the final weights and the history only: about the size of surrogate.pt, not
    # weights + AdamW's two moments + a copy of the best weights
    size = (out / "surrogate_ckpt.pt").stat().st_size
    assert size < 1.3 * (out / "surrogate.pt").stat().st_size
    final = _weights(out / "surrogate.pt")
    assert _same(ckpt["model"], final)
    # the same command again: nothing to train, the same weights
    from captum_vit.shapley import training

    def no_training(*args, **kw):
        raise AssertionError("a finished stage was trained again")

    real = training.cosine_factor
    training.cosine_factor = no_training
    try:
        assert cli(capsys, *_surrogate_args(train_files, out))[0] == 0
    finally:
        training.cosine_factor = real
    assert _same(_weights(out / "surrogate.pt"), final)


def test_ctrl_c_in_train_shapley_and_keep_checkpoints(
    train_files, capsys, monkeypatch, tmp_path
):
    """--keep-checkpoints 3, Ctrl-C at step 4 of 6: one line saying what is kept,
    exit 130, the newest three checkpoints on disk; the rerun resumes from step 4
    and gives the weights of an uninterrupted run."""
    from captum_vit.shapley import training

    straight = tmp_path / "straight"
    assert cli(capsys, *_surrogate_args(train_files, straight))[0] == 0
    real = training.cosine_factor

    def stop_at_step_4(step, total, warmup):
        if step == 4:
            raise KeyboardInterrupt
        return real(step, total, warmup)

    monkeypatch.setattr(training, "cosine_factor", stop_at_step_4)
    out = tmp_path / "run"
    args = _surrogate_args(train_files, out, "--keep-checkpoints", "3")
    rc, _, err = cli(capsys, *args)
    assert rc == 130
    assert err == (
        "captum-vit train-shapley: interrupted at surrogate step 4 of 6; kept: the "
        f"checkpoint of step 4 ({out / 'surrogate_ckpt.pt'}); run the same command "
        "again to resume from it\n"
    )
    names = sorted(p.name for p in out.glob("surrogate_ckpt*"))
    assert names == [
        "surrogate_ckpt.pt",
        "surrogate_ckpt.step00000002.pt",
        "surrogate_ckpt.step00000003.pt",
    ]
    assert torch.load(out / "surrogate_ckpt.pt", weights_only=True)["step"] == 4
    monkeypatch.undo()
    steps = []
    monkeypatch.setattr(
        training, "cosine_factor", lambda s, t, w: steps.append(s) or real(s, t, w)
    )
    assert cli(capsys, *args)[0] == 0
    assert min(steps) == 4  # resumed: steps 0-3 are not trained again
    names = sorted(p.name for p in out.glob("surrogate_ckpt*"))
    assert names == [
        "surrogate_ckpt.pt",
        "surrogate_ckpt.step00000004.pt",
        "surrogate_ckpt.step00000005.pt",
    ]
    assert _same(_weights(out / "surrogate.pt"), _weights(straight / "surrogate.pt"))


def test_keep_checkpoints_0_leaves_only_the_weights(train_files, capsys, tmp_path):
    out = tmp_path / "run"
    rc, _, err = cli(
        capsys, *_surrogate_args(train_files, out, "--keep-checkpoints", "0")
    )
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["record.json", "surrogate.pt"]
    rc, _, err = cli(
        capsys, *_surrogate_args(train_files, out, "--keep-checkpoints", "-1")
    )
    assert rc == 2 and err.startswith(
        "captum-vit train-shapley: error: --keep-checkpoints: expected an integer >= 0"
    )
