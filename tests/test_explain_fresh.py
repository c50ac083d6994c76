"""captum-vit explain as a new user meets it (issue 26): a fast first picture,
unavailable methods, one output per input file, constant maps, class names."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import List

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import captum_vit.cli as cli_module
from captum_vit.cli import build_parser
from captum_vit.explain import (
    constant_map_warnings,
    display_names,
    map_path,
    read_maps,
)
from captum_vit.methods import METHODS, method_names, resolve_methods
from helpers import cli, write_scene_folder


def _manifest(out: Path) -> List[dict]:
    with (out / "manifest.csv").open() as fh:
        return list(csv.DictReader(fh))


def _test_vit_checkpoint(path: Path, num_classes: int, zero_head: bool = False):
    """A random-weight timm ``test_vit`` (160 px, 6 blocks) saved as a state_dict."""
    torch.manual_seed(0)
    model = timm.create_model("test_vit", pretrained=False, num_classes=num_classes)
    if zero_head:  # as torchvision's random-weight vit_b_16
        torch.nn.init.zeros_(model.head.weight)
        torch.nn.init.zeros_(model.head.bias)
    torch.save(model.state_dict(), path)
    return path


def _image_folder(root: Path, files: dict) -> Path:
    """Write ``{relative path: seed}`` as small random RGB images."""
    for rel, seed in files.items():
        g = np.random.default_rng(seed)
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(g.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(p)
    return root


# ----------------------------------------------------------------- 4: preview
def test_explain_without_method_is_a_preview_without_rise(
    capsys, tmp_path, monkeypatch
):
    """The first command's default methods: counted forward passes stay far below
    RISE's 4000 masks per image, every other method runs, and the screen says so."""
    seen = {"images": 0}
    load = cli_module._load

    def counting_load(args, device):
        loaded = load(args, device)

        def count(module, inputs):
            seen["images"] += int(inputs[0].shape[0])

        loaded.model.blocks[0].register_forward_pre_hook(count)
        return loaded

    monkeypatch.setattr(cli_module, "_load", counting_load)
    rc, out, err = cli(capsys, "explain", "--n", "1", "--quiet", "--out", tmp_path)
    assert rc == 0, err
    assert "preview: rise skipped" in out and "--method all runs every method" in out
    ran = [n for n in method_names() if f"\n{n}: " in "\n" + out]
    assert "rise" not in ran
    assert set(ran) == set(method_names()) - {"rise"}
    # TIS (1024 masks) is the dearest method left; RISE alone would add 4000
    assert 0 < seen["images"] < 2000, seen
    assert (tmp_path / "explain_grid.png").is_file()


def test_method_all_and_rise_still_mean_every_method_and_evaluate_is_unchanged():
    parser = build_parser()
    args = parser.parse_args(["explain", "--method", "all"])
    assert [m.name for m in resolve_methods(args.methods)] == method_names()
    assert parser.parse_args(["explain", "--method", "rise"]).methods == ["rise"]
    assert parser.parse_args(["explain"]).methods is None  # the preview
    assert parser.parse_args(["evaluate"]).methods == ["all"]
    assert METHODS["rise"].build  # rise still registered with its 4000 masks


# ----------------------------------------------------------------- 7: unavailable
def test_every_requested_method_unavailable_exits_2(capsys, tmp_path):
    ck = _test_vit_checkpoint(tmp_path / "vit.pt", 3)
    common = ["--model", "test_vit", "--checkpoint", ck, "--method", "vit-shapley"]
    rc, out, err = cli(
        capsys, "explain", *common, "--n", "1", "--quiet", "--out", tmp_path / "a"
    )
    assert rc == 2 and err.count("\n") == 1, err
    assert err.startswith("captum-vit explain: error: --method: no requested method")
    assert "vit-shapley needs" in err and "--shapley RUN" in err
    assert not (tmp_path / "a" / "explain_grid.png").exists()

    data = tmp_path / "data"
    write_scene_folder(data, n=2)
    rc, out, err = cli(
        capsys, "explain", *common, "--data", data, "--quiet", "--out", tmp_path / "b"
    )
    assert rc == 2 and err.count("\n") == 1, err
    assert "vit-shapley needs" in err and "--shapley RUN" in err
    assert not (tmp_path / "b" / "manifest.csv").exists()


def test_some_methods_unavailable_warn_and_leave_skipped_rows(capsys, tmp_path):
    ck = _test_vit_checkpoint(tmp_path / "vit.pt", 3)
    write_scene_folder(tmp_path / "data", n=2)
    rc, out, err = cli(
        capsys,
        "explain",
        "--model",
        "test_vit",
        "--checkpoint",
        ck,
        "--method",
        "vit-shapley",
        "random",
        "--data",
        tmp_path / "data",
        "--quiet",
        "--out",
        tmp_path / "o",
    )
    assert rc == 0, err
    assert "vit-shapley: skipped (vit-shapley needs" in out
    rows = _manifest(tmp_path / "o")
    assert [(r["method"], r["status"][:8]) for r in rows] == [
        ("vit-shapley", "skipped:"),
        ("random", "ok"),
    ] * 2
    assert "--shapley RUN" in rows[0]["status"]


# ----------------------------------------------------------------- 9: names
def test_files_sharing_a_stem_get_their_own_maps_and_pictures(capsys, tmp_path):
    data = _image_folder(
        tmp_path / "data", {"c0/x.jpg": 1, "c0/x.png": 2, "c1/y.png": 3}
    )
    out = tmp_path / "out"
    args = ["explain", "--data", data, "--method", "random", "genatt", "--png"]
    rc, stdout, err = cli(capsys, *args, "--quiet", "--out", out)
    assert rc == 0, err
    jpg, png = out / "maps" / "c0" / "x.jpg.npz", out / "maps" / "c0" / "x.png.npz"
    assert jpg.is_file() and png.is_file()
    assert not (out / "maps" / "c0" / "x.npz").exists()
    a, b = read_maps(jpg), read_maps(png)
    assert set(a) == set(b) == {"random", "genatt"}
    assert not np.array_equal(a["genatt"], b["genatt"])  # two images, two maps
    for key in ("c0/x.jpg", "c0/x.png", "c1/y.png"):
        assert map_path(out, key, ".png", "png").stat().st_size > 5000
    assert sorted(p.name for p in (out / "png" / "c0").iterdir()) == [
        "x.jpg.png",
        "x.png.png",
    ]
    rows = _manifest(out)
    assert sorted({r["file"] for r in rows}) == ["c0/x.jpg", "c0/x.png", "c1/y.png"]
    assert all(r["status"] == "ok" for r in rows) and len(rows) == 6


def test_a_folder_with_the_older_names_is_refused_not_mixed(capsys, tmp_path):
    data = _image_folder(tmp_path / "data", {"c0/x.png": 1, "c1/y.png": 2})
    out = tmp_path / "out"
    args = ["explain", "--data", data, "--method", "random", "--quiet", "--out", out]
    assert cli(capsys, *args)[0] == 0
    # what an older captum-vit left: records without the naming setting
    lines = (out / "records.jsonl").read_text().splitlines()
    old = []
    for line in lines:
        rec = json.loads(line)
        del rec["settings"]["output_names"]
        old.append(json.dumps(rec))
    (out / "records.jsonl").write_text("\n".join(old) + "\n")
    rc, _, err = cli(capsys, *args)
    assert rc == 2 and err.count("\n") == 1, err
    assert "holds maps of an older captum-vit, named without the image's" in err
    assert "use another --out" in err


def test_map_path_keeps_the_extension_and_stays_inside_out(tmp_path):
    assert map_path(tmp_path, "c0/x.jpg") == tmp_path / "maps" / "c0" / "x.jpg.npz"
    assert map_path(tmp_path, "x.tar.png", ".png", "png") == (
        tmp_path / "png" / "x.tar.png.png"
    )
    assert map_path(tmp_path, "../up/x.jpg") == tmp_path / "maps" / "x.jpg.npz"


# ----------------------------------------------------------------- 12: constant
def test_constant_maps_of_a_zero_head_are_a_warning_naming_the_cause(capsys, tmp_path):
    ck = _test_vit_checkpoint(tmp_path / "zero.pt", 3, zero_head=True)
    common = ["--model", "test_vit", "--checkpoint", ck, "--method", "genatt"]
    rc, out, err = cli(
        capsys, "explain", *common, "random", "--n", "2", "--quiet", "--out", tmp_path
    )
    assert rc == 0, err
    lines = [x for x in err.splitlines() if "is constant" in x]
    assert len(lines) == 1, err  # genatt only: random maps vary
    assert lines[0].startswith("warning: genatt: the map of image 'scene 0 (")
    assert "is constant (all 0)" in lines[0]
    assert "(and 1 more of 2)" in lines[0]
    assert "the model's output does not depend on the input" in lines[0]
    assert "zero-initialised head" in lines[0]

    data = _image_folder(tmp_path / "data", {"a/p.png": 1, "b/q.png": 2})
    rc, out, err = cli(
        capsys, "explain", *common, "--data", data, "--quiet", "--out", tmp_path / "o"
    )
    assert rc == 0, err
    lines = [x for x in err.splitlines() if "is constant" in x]
    assert len(lines) == 1 and "genatt: the map of image 'a/p.png'" in lines[0]
    assert "does not depend on the input" in lines[0]


def test_constant_map_warning_without_an_input_blind_model():
    maps = {
        "rollout": np.ones((2, 4, 4), np.float32),
        "random": np.random.default_rng(0).random((2, 4, 4)),
    }
    maps["rollout"][1, 0, 0] = 2.0  # only image 0 is constant
    warned: set = set()
    lines = constant_map_warnings(maps, ["a", "b"], lambda i: False, warned)
    assert lines == [
        "warning: rollout: the map of image 'a' is constant (all 1): the explained "
        "class's score may not depend on what this method reads or perturbs (e.g. "
        "uniform attention in random weights)"
    ]
    # a long run warns once per method
    assert constant_map_warnings(maps, ["a", "b"], lambda i: False, warned) == []


def test_the_cause_of_constant_maps_is_checked_once_per_image():
    """Every method of an input-blind model is constant: one forward pass names
    the cause for all of them, not one per method."""
    maps = {name: np.zeros((2, 4, 4), np.float32) for name in ("a", "b", "c")}
    maps["c"][0, 0, 0] = 1.0  # c is constant on image 1 only
    calls: List[int] = []

    def ignores_input(i: int) -> bool:
        calls.append(i)
        return True

    lines = constant_map_warnings(maps, ["x", "y"], ignores_input)
    assert len(lines) == 3 and all("does not depend on the input" in x for x in lines)
    assert calls == [0, 1]


# ----------------------------------------------------------------- 17: names
def test_pictures_use_folder_class_names_and_the_true_label(
    capsys, tmp_path, monkeypatch
):
    import captum_vit.viz as viz

    titles: List[str] = []
    grid = viz.comparison_grid

    def recording_grid(*args, row_titles=None, **kwargs):
        titles.extend(row_titles or [])
        return grid(*args, row_titles=row_titles, **kwargs)

    monkeypatch.setattr(viz, "comparison_grid", recording_grid)
    ck = _test_vit_checkpoint(tmp_path / "vit.pt", 2)
    data = _image_folder(tmp_path / "data", {"cat/p.png": 1, "dog/q.png": 2})
    rc, out, err = cli(
        capsys,
        "explain",
        "--model",
        "test_vit",
        "--checkpoint",
        ck,
        "--method",
        "random",
        "--data",
        data,
        "--png",
        "--quiet",
        "--out",
        tmp_path / "o",
    )
    assert rc == 0, err
    assert len(titles) == 2, titles
    p, q = sorted(titles)
    assert p.startswith("p.png\ntrue: cat\n→ ") and q.startswith("q.png\ntrue: dog\n")
    assert all(t.split("→ ")[1] in ("cat", "dog") for t in titles), titles
    assert "class " not in "".join(titles)


def test_display_names_prefer_the_models_own_names():
    assert display_names(["class 0", "class 1", "class 2"], {0: "cat", 2: "x/y"}) == [
        "cat",
        "class 1",
        "x/y",
    ]
    assert display_names(["Shirt", "class 1"], {0: "left", 1: "right"}) == [
        "Shirt",
        "right",
    ]


@pytest.mark.parametrize(
    "label,expected", [(-1, "x.jpg\n→ Bag"), (1, "x.jpg\ntrue: Coat\n→ Bag")]
)
def test_image_title(label, expected):
    from captum_vit.viz import image_title

    assert image_title("x.jpg", ["Bag", "Coat"], 0, label) == expected
