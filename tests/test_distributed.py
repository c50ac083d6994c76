"""Your model, your images, many processes: the README's commands on a tiny
ImageFolder, one process against ``torchrun --nproc_per_node=2`` (gloo, one thread
each), and a rank killed mid-run that resumes with another number of processes.

The data is written here: embedded scenes saved as PNGs in two class folders, a
boxes CSV, and a random-weight timm ``test_vit`` with 7 classes saved as a plain
state_dict.
"""

from __future__ import annotations

import csv
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from captum_vit import zoo
from captum_vit.cli import main
from captum_vit.explain import read_maps

ROOT = Path(__file__).resolve().parents[1]
TIMING = ("seconds", "seconds_ci95")
# the README's sizes, scaled down for a 2-core test machine
SMALL = {
    "evaluate": (
        "--tis-masks 8 --rise-masks 8 --curve-steps 2 --faith-samples 4 --batch-size 2"
        " --sensitivity-sizes 2 --sensitivity-samples 4 --road off --randomization 2"
    ),
    "explain": "--tis-masks 8 --rise-masks 8 --batch-size 2",
}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Dict[str, Path]:
    d = tmp_path_factory.mktemp("scale")
    sc = zoo.make_scenes(5, split="test", seed=21)
    rows = []
    for i in range(5):
        cls = "left" if i % 2 else "right"
        (d / "my_images" / cls).mkdir(parents=True, exist_ok=True)
        key = f"{cls}/scene{i}.png"
        img = (sc.images[i].transpose(1, 2, 0) * 255).round().astype(np.uint8)
        Image.fromarray(img).save(d / "my_images" / key)
        rows.append([key, *sc.boxes[i, 0].tolist()])
    with (d / "my_boxes.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([["file", "x0", "y0", "x1", "y1"]] + rows)
    torch.manual_seed(0)
    model = timm.create_model("test_vit", num_classes=7)
    torch.save(model.state_dict(), d / "my_vit.pth")
    return {"dir": d}


def _readme_commands() -> List[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Your model and your images", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    return [c.strip() for c in block.replace("\\\n", " ").splitlines() if c.strip()]


def _adapt(command: str, d: Path, out: str) -> List[str]:
    """A README command on the test's files and sizes."""
    words = shlex.split(command)
    sub = {
        "vit_base_patch16_224": "test_vit",
        "my_vit.pth": str(d / "my_vit.pth"),
        "my_images/": str(d / "my_images"),
        "my_boxes.csv": str(d / "my_boxes.csv"),
        "1000": "4",
        "eval/": str(d / out),
        "maps/": str(d / out),
    }
    words = [sub.get(w, w) for w in words]
    cmd = "evaluate" if "evaluate" in words else "explain"
    return words + shlex.split(SMALL[cmd]) + ["--quiet", "--workers", "0"]


def _torchrun(words: List[str], nproc: int = 2) -> subprocess.CompletedProcess:
    """Run ``torchrun --standalone`` with gloo, one thread per process, bounded."""
    assert words[0] == "torchrun"
    words = [w for w in words if not w.startswith("--nproc_per_node")]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        *words[1:],
    ]
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        CAPTUM_VIT_DIST_TIMEOUT="120",
        MASTER_ADDR="127.0.0.1",
    )
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=400, env=env, cwd=ROOT
    )


def _table(path: Path) -> Dict[str, Dict[str, str]]:
    with path.open() as fh:
        return {
            r["method"]: {k: v for k, v in r.items() if k not in TIMING}
            for r in csv.DictReader(fh)
        }


@pytest.fixture(scope="module")
def one_process(files) -> Path:
    """The README's two one-process commands, run once for the module."""
    d = files["dir"]
    commands = _readme_commands()
    assert [c.split()[:2] for c in commands] == [
        ["captum-vit", "evaluate"],
        ["captum-vit", "explain"],
        ["torchrun", "--nproc_per_node=4"],
    ]
    assert main(_adapt(commands[0], d, "eval_single")[1:]) == 0
    assert main(_adapt(commands[1], d, "maps_single")[1:]) == 0
    return d


def test_readme_examples_and_torchrun_tables_equal_one_process(one_process):
    d = one_process
    commands = _readme_commands()
    res = _torchrun(_adapt(commands[2], d, "eval_dist"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert (d / "eval_dist" / "records.rank1.jsonl").stat().st_size > 0
    one, two = _table(d / "eval_single" / "results.csv"), _table(
        d / "eval_dist" / "results.csv"
    )
    assert set(one) == {"rollout", "genatt", "tis"} and one == two
    # per-image random choices: the seeded non-target class, the checked subset
    for key in ("insertion_nontarget", "randomization_spearman", "sensitivity_n"):
        assert one["genatt"][key] not in ("", "nan"), key
    assert one["genatt"]["n"] == "4" and "pointing" in one["genatt"]
    report = (d / "eval_dist" / "results.md").read_text()
    assert "on 4 images of `my_images`" in report
    assert "Pointing (distractor)" not in report  # only the embedded scenes have one
    # report.html: written once, by rank 0, with the gallery images that both ranks
    # kept, and the one-process run's values
    assert _page(d / "eval_dist") == _page(d / "eval_single")
    assert _page(d / "eval_dist")[1] == 4
    assert not list((d / "eval_dist").glob("report.html.tmp*"))


def _page(out: Path):
    """report.html's table cells (but the timings) and its number of gallery rows."""
    import re

    text = (out / "report.html").read_text()
    cells = {
        (method, col): mean
        for method, row in re.findall(
            r'<tr data-method="([^"]+)">(.*?)</tr>', text, re.S
        )
        for col, mean in re.findall(r'data-column="([^"]+)" data-mean="([^"]+)"', row)
        if col != "seconds"
    }
    return cells, text.count('class="gallery-row"')


def test_explain_folder_under_torchrun_equals_one_process(one_process):
    d = one_process
    words = ["torchrun", "-m", "captum_vit", "--"] + _adapt(
        _readme_commands()[1], d, "maps_dist"
    )[1:]
    res = _torchrun(words)
    assert res.returncode == 0, res.stderr[-3000:]
    ref, dist = d / "maps_single", d / "maps_dist"
    names = sorted(p.relative_to(ref / "maps") for p in (ref / "maps").rglob("*.npz"))
    assert len(names) == 5 and names == sorted(
        p.relative_to(dist / "maps") for p in (dist / "maps").rglob("*.npz")
    )
    for name in names:
        a, b = read_maps(ref / "maps" / name), read_maps(dist / "maps" / name)
        assert set(a) == set(b) == {"genatt", "tis"}
        for m in a:
            assert a[m].shape == (160, 160) and np.array_equal(a[m], b[m])

    def rows(p):
        with (p / "manifest.csv").open() as fh:
            return [
                (r["file"], r["target"], r["method"], r["status"])
                for r in csv.DictReader(fh)
            ]

    assert rows(ref) == rows(dist) and len(rows(ref)) == 10


KILL_RANK_1 = """
import os, sys
from captum_vit import _jobs

_append = _jobs.RecordStore.append


def append(self, record):
    _append(self, record)
    if self.rank == 1:  # rank 1 dies right after its first finished chunk
        os._exit(17)


_jobs.RecordStore.append = append
from captum_vit.cli import main

sys.exit(main())
"""


def test_killed_rank_resumes_with_another_process_count(files, capsys, tmp_path):
    d = files["dir"]
    args = [
        "evaluate",
        "--model",
        "test_vit",
        "--checkpoint",
        str(d / "my_vit.pth"),
        "--data",
        str(d / "my_images"),
        "--boxes",
        str(d / "my_boxes.csv"),
        "--methods",
        "rollout",
        "random",
        "--batch-size",
        "1",
        "--curve-steps",
        "2",
        "--faith-samples",
        "4",
        "--sensitivity-sizes",
        "2",
        "--sensitivity-samples",
        "4",
        "--road",
        "off",
        "--quiet",
        "--workers",
        "0",
    ]
    script = tmp_path / "kill_rank_1.py"
    script.write_text(KILL_RANK_1)
    out = tmp_path / "killed"
    res = _torchrun(["torchrun", str(script), "--", *args, "--out", str(out)])
    assert res.returncode != 0  # torchrun reports the dead rank
    before = {p.name: p.read_text() for p in out.glob("records*.jsonl")}
    done_before = _keys(before)
    assert len(before["records.rank1.jsonl"].splitlines()) == 1
    assert 1 <= len(done_before) < 10  # some work done, some left

    assert main([*args, "--out", str(out)]) == 0  # one process now
    after = {p.name: p.read_text() for p in out.glob("records*.jsonl")}
    for name, text in before.items():  # what was written stays, byte for byte
        complete = text[: text.rfind("\n") + 1]
        assert after[name].startswith(complete)
    keys_after = [k for text in after.values() for k in _key_list(text)]
    assert len(keys_after) == len(set(keys_after)) == 10  # nothing twice, none lost
    report = (out / "results.md").read_text()
    m = re.search(r"Resumed: (\d+) of 10 \(method, image\)", report)
    assert m and int(m.group(1)) == len(done_before)
    capsys.readouterr()
    fresh = tmp_path / "fresh"
    assert main([*args, "--out", str(fresh)]) == 0
    assert _table(out / "results.csv") == _table(fresh / "results.csv")


def _key_list(text: str) -> List[tuple]:
    import json

    out = []
    for line in text.splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        out.append((r["method"], r["start"]))
    return out


def _keys(files: Dict[str, str]) -> set:
    return {k for text in files.values() for k in _key_list(text)}


def test_plan_splits_what_is_left_over_any_number_of_ranks(tmp_path):
    """The work left after some records is split by position: for every process
    count, the ranks' shares are disjoint and cover exactly what is not done."""
    from captum_vit._jobs import RecordStore, chunks_of, plan
    from captum_vit.distributed import DistContext

    settings = {"command": "evaluate", "seed": 1}
    store = RecordStore(tmp_path, rank=0)
    for method, start in [("a", 0), ("b", 0), ("a", 6)]:
        store.append({"method": method, "start": start, "settings": settings})
    chunks = chunks_of(10, 3)  # starts 0, 3, 6, 9
    expected = {(m, c[0]) for c in chunks for m in "ab"} - {
        ("a", 0),
        ("b", 0),
        ("a", 6),
    }
    for world in (1, 2, 3, 5):
        got = []
        for rank in range(world):
            ctx = DistContext(rank=rank, world_size=world)
            work, reused, total = plan(ctx, store, settings, ["a", "b"], chunks)
            got += [(m, start) for start, _, left in work for m in left]
            assert (reused, total) == (3 + 3 + 3, 20)
        assert sorted(got) == sorted(expected) and len(got) == len(set(got))


def test_ranks_that_disagree_on_settings_are_refused(tmp_path):
    from captum_vit._jobs import RecordStore, SettingsMismatch, plan
    from captum_vit.distributed import DistContext

    class TwoRanks(DistContext):
        def all_gather(self, obj):
            return [obj, {**obj, "data": "another folder"}]

    with pytest.raises(SettingsMismatch, match="processes disagree on the settings"):
        plan(TwoRanks(), RecordStore(tmp_path), {"data": "x"}, ["m"], [[0]])
