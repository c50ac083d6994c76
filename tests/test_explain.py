"""captum-vit explain --data: maps as arrays plus a manifest, resumable, skips."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from captum_vit.explain import read_maps
from captum_vit.models import load_model
from helpers import cli, write_scene_folder


def _manifest(out: Path):
    with (out / "manifest.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_explain_folder_maps_manifest_skip_and_resume(tmp_path: Path, capsys):
    data = tmp_path / "data"
    write_scene_folder(data, n=3)
    (data / "left" / "zz_broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    base = ["explain", "--data", data, "--batch-size", "2", "--workers", "0"]
    rc, stdout, err = cli(capsys, *base, "--method", "genatt", "--quiet", "--out", out)
    assert rc == 0, err
    assert "warning: skipped left/zz_broken.png: cannot read image" in err
    rows = _manifest(out)
    assert [r["file"] for r in rows] == [
        "left/scene1.png",
        "left/zz_broken.png",
        "right/scene0.png",
        "right/scene2.png",
    ]
    broken = rows[1]
    assert broken["status"].startswith("skipped: cannot read image")
    assert broken["target"] == "" and broken["seconds"] == ""
    assert not (out / "maps" / "left" / "zz_broken.png.npz").exists()

    # the saved map is GenAtt's, computed directly with the library
    from captum_vit import GenAtt
    from captum_vit.data import ImageDataset

    loaded = load_model("default")
    ds = ImageDataset.from_folder(data, loaded.preprocessing)
    x = ds[ds.keys().index("right/scene2.png")]["image"][None]
    with torch.no_grad():
        pred = loaded.model(x).argmax(-1)
    expected = GenAtt(loaded.model).attribute(x, target=pred).sum(1)[0]
    saved = read_maps(out / "maps" / "right" / "scene2.png.npz")
    assert set(saved) == {"genatt"}
    assert torch.allclose(torch.from_numpy(saved["genatt"]), expected, atol=1e-6)
    assert rows[3]["target"] == str(int(pred))

    # resume with one more method: genatt is kept, rollout added, nothing twice
    rc, stdout, err = cli(
        capsys, *base, "--method", "genatt", "rollout", "--png", "--out", out
    )
    assert rc == 0, err
    assert "resuming: 4 of 8 (method, image) maps already done" in stdout
    again = read_maps(out / "maps" / "right" / "scene2.png.npz")
    assert set(again) == {"genatt", "rollout"}
    assert (again["genatt"] == saved["genatt"]).all()
    assert len(_manifest(out)) == 8
    records = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    keys = [(r["method"], r["start"]) for r in records]
    assert len(keys) == len(set(keys)) == 4
    assert (out / "png" / "right" / "scene2.png.png").stat().st_size > 5000


def test_explain_folder_settings_mismatch_and_targets(tmp_path: Path, capsys):
    data = tmp_path / "data"
    write_scene_folder(data, n=2)
    out = tmp_path / "out"
    base = ["explain", "--data", data, "--method", "random", "--quiet"]
    assert cli(capsys, *base, "--target", "3", "--out", out)[0] == 0
    assert {r["target"] for r in _manifest(out)} == {"3"}
    rc, _, err = cli(capsys, *base, "--target", "label", "--out", out)
    assert rc == 2 and err.count("\n") == 1
    assert "holds records made with other settings (target: 3 then, label now)" in err
    rc, _, err = cli(capsys, *base, "--target", "12", "--out", tmp_path / "o2")
    assert rc == 2 and "--target: class 12 out of range [0, 10)" in err


def test_more_processes_than_images_is_refused(tmp_path: Path):
    from captum_vit.data import ImageDataset
    from captum_vit.distributed import DistContext
    from captum_vit.evaluate import EvalConfig, run_evaluation
    from captum_vit.explain import run_explain

    write_scene_folder(tmp_path / "data", n=2)
    loaded = load_model("default")
    ds = ImageDataset.from_folder(tmp_path / "data", loaded.preprocessing)
    ctx = DistContext(rank=0, world_size=3)  # no group: fails before any collective
    with pytest.raises(ValueError, match="more processes \\(3\\) than images \\(2\\)"):
        run_explain(str(tmp_path / "a"), ["random"], model=loaded, dataset=ds, ctx=ctx)
    with pytest.raises(ValueError, match="more processes \\(3\\) than images \\(2\\)"):
        run_evaluation(
            str(tmp_path / "b"),
            ["random"],
            EvalConfig(),
            model=loaded,
            dataset=ds,
            ctx=ctx,
        )
