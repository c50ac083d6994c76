"""captum-vit evaluate's infidelity, energy pointing, segmentation F1 and grid
pointing columns (issue 28): each equal to its metric function called directly on
the same maps; the grids seeded per image (the same in any chunk, after a resume,
under torchrun); the grid data checked; bad input is one line."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
import torch
import torch.nn.functional as F
from helpers import FAST_EVALUATE, cli, make_model, write_scene_folder

from captum_vit import metrics
from captum_vit._jobs import image_seed
from captum_vit.data import DataError, GridDataset, Preprocessing, SceneDataset
from captum_vit.evaluate import EvalConfig, forward_passes, run_evaluation
from captum_vit.methods import METHODS
from captum_vit.models import LoadedModel

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
CLASSES = 10
QUICK = dict(
    curve_steps=2,
    faith_samples=4,
    sensitivity_sizes=1,
    sensitivity_samples=2,
    road="off",
    non_target="off",
    infidelity_samples=4,
    grid_pointing=2,
    seed=7,
)


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    """A 2-block ViT on 32 px inputs (4 x 4 patches) with the scenes' classes."""
    model = make_model("cls", num_classes=CLASSES)
    pre = Preprocessing.resize_crop(32, (32, 32), (0.5,) * 3, (0.5,) * 3)
    return LoadedModel(
        model=model,
        name="tiny",
        source="timm",
        class_names=[str(i) for i in range(CLASSES)],
        preprocessing=pre,
    )


def scenes(loaded: LoadedModel, n: int = 6) -> SceneDataset:
    return SceneDataset(n, loaded.preprocessing, seed=7)  # labels 2 3 9 3 4 0


def records(out: Path) -> List[dict]:
    return [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]


def column(out: Path, key: str, keys: List[str], method: str = "random"):
    got: Dict[str, float] = {
        k: v
        for r in records(out)
        if r["method"] == method
        for k, v in zip(r["keys"], r[key])
    }
    return torch.tensor([got[k] for k in keys])


def explain_random(loaded, x, t, keys, seed):
    """The 'random' method's maps as evaluate computes them (per-image seeds)."""
    explain = METHODS["random"].build(loaded.model, {})
    return explain(x, t, seeds=[image_seed(seed, k) for k in keys]).float()


def test_grid_dataset_makes_seeded_grids_of_distinct_classes(tiny):
    ds = scenes(tiny)
    grids = GridDataset(ds, 2, seed=7)
    labels = ds.labels()
    cells = []
    for i in range(len(ds)):
        item = grids[i]
        members = item["members"].tolist()
        assert item["ok"] and item["label"] == labels[i] and item["key"] == ds[i]["key"]
        assert members[item["cell"]] == i
        assert len({labels[j] for j in members}) == 4  # distinct classes
        # each cell is its image shrunk by 2 (2 x 2 means), in row-major order
        for k, j in enumerate(members):
            r, c = divmod(k, 2)
            want = F.avg_pool2d(ds[j]["image"][None], 2)[0]
            got = item["image"][:, 16 * r : 16 * r + 16, 16 * c : 16 * c + 16]
            torch.testing.assert_close(got, want)
        assert item["gt"].sum() == 256 and bool(item["has_gt"])
        cells.append(item["cell"])
        # the same grid again, and from a dataset built anew
        again = GridDataset(scenes(tiny), 2, seed=7)[i]
        assert torch.equal(again["image"], item["image"])
    assert len(set(cells)) > 1  # the explained cell is drawn, not fixed
    other = GridDataset(ds, 2, seed=8)
    assert any(
        not torch.equal(other[i]["members"], grids[i]["members"])
        for i in range(len(ds))
    )


def test_grid_dataset_from_an_image_folder(tiny, tmp_path):
    from captum_vit.data import ImageDataset

    write_scene_folder(tmp_path / "tree", n=5, classes=("a", "b", "c", "d"))
    data = ImageDataset.from_folder(tmp_path / "tree", tiny.preprocessing)
    grids = GridDataset(data, 2, seed=1)
    for i in range(len(data)):
        item = grids[i]
        members = item["members"].tolist()
        assert item["image"].shape == (3, 32, 32) and members[item["cell"]] == i
        assert sorted(data.labels()[j] for j in members) == [0, 1, 2, 3]
    assert "grids" == grids.describe()["source"]
    # a class whose only image is unreadable: never a partner; its own item fails
    (tmp_path / "tree" / "e").mkdir()
    (tmp_path / "tree" / "e" / "broken.png").write_bytes(b"\x89PNG broken")
    data = ImageDataset.from_folder(tmp_path / "tree", tiny.preprocessing)
    grids = GridDataset(data, 2, seed=1)
    broken = data.keys().index("e/broken.png")
    for i in range(len(data)):
        item = grids[i]
        assert item["ok"] == (i != broken)
        if i != broken:
            assert broken not in item["members"].tolist()
    assert not grids[broken]["has_gt"]


def test_grid_dataset_refuses_unusable_sources(tiny, tmp_path):
    from captum_vit.data import ImageDataset

    with pytest.raises(DataError, match="needs 9 distinct classes, the data has 5"):
        GridDataset(scenes(tiny), 3)
    with pytest.raises(DataError, match="grid side >= 2"):
        GridDataset(scenes(tiny), 1)
    write_scene_folder(tmp_path / "flat_src", n=2)
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in (tmp_path / "flat_src").rglob("*.png"):
        (flat / p.name).write_bytes(p.read_bytes())
    unlabelled = ImageDataset.from_folder(flat, tiny.preprocessing)
    with pytest.raises(DataError, match="^--grid-pointing: the data has no labels"):
        GridDataset(unlabelled, 2)


def test_new_columns_equal_the_metric_functions(tiny, tmp_path):
    ds = scenes(tiny)
    cfg = EvalConfig(**QUICK, chunk=3, metric_batch=5)
    out = tmp_path / "cols"
    table = run_evaluation(str(out), ["random"], cfg, model=tiny, dataset=ds)
    items = [ds[i] for i in range(len(ds))]
    x = torch.stack([it["image"] for it in items])
    t = torch.tensor([it["label"] for it in items])
    gt = torch.stack([it["gt"] for it in items])
    keys = [it["key"] for it in items]
    attr = explain_random(tiny, x, t, keys, cfg.seed)
    infid = metrics.infidelity(tiny.model, x, attr, t, n_perturb_samples=4, seed=7)
    torch.testing.assert_close(column(out, "infidelity", keys), infid)
    energy = metrics.energy_pointing_game(attr, masks=gt)
    torch.testing.assert_close(column(out, "energy_pointing", keys), energy)
    f1 = metrics.segmentation_f1(attr, masks=gt)
    torch.testing.assert_close(column(out, "segmentation_f1", keys), f1)
    # the grids, explained for each image's label with the image's seed
    grids = [GridDataset(ds, 2, seed=7)[i] for i in range(len(ds))]
    gx = torch.stack([g["image"] for g in grids])
    g_attr = explain_random(tiny, gx, t, keys, cfg.seed)
    cells = torch.tensor([g["cell"] for g in grids])
    want = metrics.grid_pointing_game(g_attr, cells, 2, image_size=(32, 32))
    torch.testing.assert_close(column(out, "grid_pointing", keys), want)
    assert not torch.allclose(want, energy)
    assert table["random"]["grid_pointing"][0] == pytest.approx(float(want.mean()))
    report = (out / "results.md").read_text()
    for header in ("Infidelity", "Energy pointing", "Segmentation F1", "Grid pointing"):
        assert f"- **{header}**: " in report and f" {header} " in report
    assert "| grid pointing | 2 x 2 grids |" in report
    # infidelity (here ~1e-8) is shown with significant digits, not as 0.000000
    head = next(line for line in report.splitlines() if line.startswith("| method"))
    row = next(line for line in report.splitlines() if line.startswith("| random"))
    cell = row.split("|")[head.split("|").index(" Infidelity ↓ ")]
    mean = float(infid.mean())
    assert float(cell.split("±")[0]) == pytest.approx(mean, rel=0.01), cell
    with (out / "results.csv").open() as fh:
        row = next(csv.DictReader(fh))
    assert float(row["grid_pointing"]) == pytest.approx(float(want.mean()), rel=1e-5)

    # Gaussian noise instead of squares
    cfg = EvalConfig(**{**QUICK, "grid_pointing": 0}, infidelity="noise", n=2)
    out = tmp_path / "noise"
    run_evaluation(str(out), ["random"], cfg, model=tiny, dataset=scenes(tiny, 2))
    noise = metrics.infidelity(
        tiny.model, x[:2], attr[:2], t[:2], perturbation="noise", n_perturb_samples=4
    )
    noise_seeded = metrics.infidelity(
        tiny.model,
        x[:2],
        attr[:2],
        t[:2],
        perturbation="noise",
        n_perturb_samples=4,
        seed=7,
    )
    got = column(out, "infidelity", keys[:2])
    torch.testing.assert_close(got, noise_seeded)
    assert not torch.allclose(got, noise)
    assert not any("grid_pointing" in r for r in records(out))


def test_grid_column_is_seeded_per_image_and_resumes(tiny, tmp_path):
    ds = scenes(tiny)
    cfg = EvalConfig(**QUICK, chunk=2)
    whole = tmp_path / "whole"
    run_evaluation(str(whole), ["random"], cfg, model=tiny, dataset=ds)
    keys = ds.keys()
    # another chunking: the same grids, the same values
    cfg1 = EvalConfig(**QUICK, chunk=1)
    run_evaluation(str(tmp_path / "one"), ["random"], cfg1, model=tiny, dataset=ds)
    one = tmp_path / "one"
    assert torch.equal(
        column(whole, "grid_pointing", keys), column(one, "grid_pointing", keys)
    )
    # (infidelity: the model's float rounding depends on the batch's size)
    torch.testing.assert_close(
        column(whole, "infidelity", keys),
        column(one, "infidelity", keys),
        rtol=1e-3,
        atol=0,
    )

    # interrupted after the first chunk, then resumed
    def interrupt(line: str) -> None:
        raise KeyboardInterrupt

    part = tmp_path / "part"
    with pytest.raises(KeyboardInterrupt):
        run_evaluation(
            str(part), ["random"], cfg, model=tiny, dataset=ds, log=interrupt
        )
    assert len(records(part)) == 1
    done: List[str] = []
    run_evaluation(str(part), ["random"], cfg, model=tiny, dataset=ds, log=done.append)
    assert len(records(part)) == 3 and len(done) == 2
    assert torch.equal(
        column(whole, "grid_pointing", keys), column(part, "grid_pointing", keys)
    )
    # another grid size is another run
    with pytest.raises(ValueError, match="grid_pointing: 2 then, null now"):
        other = EvalConfig(**{**QUICK, "grid_pointing": 0}, chunk=2)
        run_evaluation(str(part), ["random"], other, model=tiny, dataset=ds)


def test_cost_and_settings():
    from captum_vit.evaluate._config import stored_settings

    # records of versions before these settings resume with --infidelity off
    off = stored_settings(EvalConfig(infidelity="off"))
    assert not {"infidelity", "infidelity_samples", "grid_pointing"} & set(off)
    assert {"infidelity", "infidelity_samples"} <= set(stored_settings(EvalConfig()))
    assert "grid_pointing" not in stored_settings(EvalConfig())
    assert stored_settings(EvalConfig(grid_pointing=3))["grid_pointing"] == 3
    cfg = EvalConfig(**QUICK)
    cost = forward_passes(cfg, CLASSES, distractor=False)
    assert cost["infidelity"] == 4 and cost["explanations"] == 2  # map + grid
    cfg.infidelity, cfg.grid_pointing = "off", 0
    cost = forward_passes(cfg, CLASSES, distractor=False)
    assert cost["infidelity"] == 0 and cost["explanations"] == 1
    for field, value, message in (
        ("infidelity", "squares", "infidelity: expected one of"),
        ("infidelity_samples", 0, "infidelity_samples"),
        ("grid_pointing", 1, "grid_pointing: expected 0"),
        ("grid_pointing", True, "grid_pointing: expected 0"),
    ):
        bad = EvalConfig(**{**QUICK, field: value})
        with pytest.raises(ValueError, match=message):
            bad.validate()


@pytest.mark.parametrize(
    "setup,args,message",
    [
        ("flat", ["--target", "pred"], "--grid-pointing: the data has no labels"),
        ("tree", [], "--grid-pointing: a 2 x 2 grid needs 4 distinct classes, the "),
        ("scenes", ["--grid-pointing", "1"], "--grid-pointing: expected a grid side"),
        ("scenes", ["--infidelity", "x"], "--infidelity: invalid choice: 'x'"),
        ("scenes", ["--infidelity-samples", "0"], "--infidelity-samples: expected a"),
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, setup, args, message):
    data = tmp_path / "data"
    where: List[str] = []
    if setup == "tree":
        write_scene_folder(data, n=2)  # two classes
        where = ["--data", str(data)]
    elif setup == "flat":
        from PIL import Image

        data.mkdir()
        Image.new("RGB", (64, 64)).save(data / "a.png")
        where = ["--data", str(data)]
    rc, _, err = cli(
        capsys,
        "evaluate",
        *where,
        "--methods",
        "random",
        "--grid-pointing",
        *args,
        *FAST_EVALUATE,
        "--n",
        "2" if setup == "scenes" else "1",
        "--out",
        tmp_path / "out",
    )
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("captum-vit evaluate: error: ") and message in err, err
    assert not (tmp_path / "out" / "records.jsonl").exists()


def test_torchrun_grid_column_equals_one_process(tmp_path, capsys):
    """The grid pointing column (and the others) under ``torchrun
    --nproc_per_node=2`` (gloo) equal a one-process run on the embedded scenes."""
    base = [
        "evaluate",
        "--n",
        "6",
        "--seed",
        "7",
        "--batch-size",
        "2",
        "--methods",
        "random",
        "--grid-pointing",
        *FAST_EVALUATE,
    ]
    rc, _, err = cli(capsys, *base, "--out", tmp_path / "one")
    assert rc == 0, err
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        CAPTUM_VIT_DIST_TIMEOUT="120",
        MASTER_ADDR="127.0.0.1",
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "captum_vit",
        "--",
        *base,
        "--out",
        str(tmp_path / "two"),
    ]
    res = subprocess.run(
        cmd, capture_output=True, text=True, timeout=400, env=env, cwd=ROOT
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "two" / "records.rank1.jsonl").stat().st_size > 0

    def table(path: Path) -> Dict[str, str]:
        with (path / "results.csv").open() as fh:
            row = next(csv.DictReader(fh))
        return {k: v for k, v in row.items() if not k.startswith("seconds")}

    one, two = table(tmp_path / "one"), table(tmp_path / "two")
    assert one == two
    assert one["grid_pointing"] not in ("", "nan")
