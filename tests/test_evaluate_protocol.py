"""captum-vit evaluate's protocol options (issue 15): each option changes what it
should, checked on a tiny random-weight ViT and on hand-made maps against values
worked out by hand or against the metric functions called directly."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch
from helpers import make_model, model_state

from captum_vit import metrics
from captum_vit._jobs import image_seed
from captum_vit.data import Preprocessing, SceneDataset
from captum_vit.evaluate import (
    METRICS,
    ROAD_FRACTIONS,
    EvalConfig,
    non_target_classes,
    randomization_positions,
    run_evaluation,
)
from captum_vit.methods import METHODS, Method
from captum_vit.models import LoadedModel

CLASSES = 10  # the scenes' Fashion-MNIST labels
QUICK = dict(
    curve_steps=2,
    faith_samples=4,
    sensitivity_sizes=2,
    sensitivity_samples=4,
    tis_masks=8,
    rise_masks=8,
    road="off",
    non_target="off",
    infidelity_samples=2,
)


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    """A 2-block ViT on 32 px inputs (4 x 4 = 16 patches) with the scenes' classes."""
    model = make_model("cls", num_classes=CLASSES)
    pre = Preprocessing.resize_crop(32, (32, 32), (0.5,) * 3, (0.5,) * 3)
    return LoadedModel(
        model=model,
        name="tiny",
        source="timm",
        class_names=[str(i) for i in range(CLASSES)],
        preprocessing=pre,
    )


def scenes(loaded: LoadedModel, n: int) -> SceneDataset:
    return SceneDataset(n, loaded.preprocessing, seed=7)


def records(out: Path) -> List[dict]:
    return [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]


def per_image(recs: List[dict], method: str, key: str) -> Dict[str, float]:
    return {
        k: v for r in recs if r["method"] == method for k, v in zip(r["keys"], r[key])
    }


def batch_of(ds: SceneDataset):
    items = [ds[i] for i in range(len(ds))]
    x = torch.stack([it["image"] for it in items])
    t = torch.tensor([it["label"] for it in items])
    keys = [it["key"] for it in items]
    return items, x, t, keys


def random_maps(loaded: LoadedModel, x, t, keys, seed: int):
    """The 'random' method's maps, as evaluate computes them (per-image seeds)."""
    explain = METHODS["random"].build(loaded.model, {})
    return explain(x, t, seeds=[image_seed(seed, k) for k in keys]).float()


# ------------------------------------------------------------------ evaluator
def constant_surrogate(model: torch.nn.Module, logits: torch.Tensor):
    """A copy of ``model`` whose head ignores its input: logits = ``logits``."""
    sur = copy.deepcopy(model)
    with torch.no_grad():
        sur.head.weight.zero_()
        sur.head.bias.copy_(logits)
    return sur.eval()


def test_surrogate_evaluator_scores_the_removal_metrics(tiny, tmp_path):
    """With a surrogate that outputs fixed logits b, every removal metric is known
    by hand: insertion = deletion = softmax(b)[t], insertion - deletion = AOPC = 0,
    the accuracy AOPCs are 0, the correlations hit their constant-drop guard (0);
    the non-target curves of every other class average to (1 - p_t) / (C - 1).
    ROAD and the explanations still use the classifier."""
    b = torch.linspace(-1.0, 1.0, CLASSES)
    p = torch.softmax(b, 0)
    loaded = copy.copy(tiny)
    loaded.extras = {"shapley_surrogate": constant_surrogate(tiny.model, b)}
    ds = scenes(loaded, 3)
    cfg = EvalConfig(**{**QUICK, "road": "patches", "non_target": "all"})
    cfg.evaluator = "surrogate"
    out = tmp_path / "sur"
    run_evaluation(str(out), ["random"], cfg, model=loaded, dataset=ds)
    recs = records(out)
    items, x, t, keys = batch_of(ds)
    for col, expected in (
        ("insertion", p[t]),
        ("deletion", p[t]),
        ("ins_minus_del", torch.zeros(3)),
        ("aopc", torch.zeros(3)),
        ("aopc_acc_positive", torch.zeros(3)),
        ("aopc_acc_negative", torch.zeros(3)),
        ("faithfulness", torch.zeros(3)),
        ("sensitivity_n", torch.zeros(3)),
        ("insertion_nontarget", (1 - p[t]) / (CLASSES - 1)),
        ("deletion_nontarget", (1 - p[t]) / (CLASSES - 1)),
    ):
        got = per_image(recs, "random", col)
        assert [got[k] for k in keys] == pytest.approx(expected.tolist(), abs=1e-6)
    # ROAD reads the classifier, not the surrogate
    attr = random_maps(loaded, x, t, keys, cfg.seed)
    road = metrics.road_curves(
        tiny.model, x, attr, t, fractions=ROAD_FRACTIONS, seed=cfg.seed
    )
    got = per_image(recs, "random", "road_morf")
    assert [got[k] for k in keys] == pytest.approx(road.morf.mean(1).tolist())
    assert recs[0]["settings"]["evaluator"] == "surrogate"
    assert len(recs[0]["settings"]["surrogate_sha256"]) == 16
    assert "read the ViT Shapley surrogate" in (out / "results.md").read_text()

    # the classifier as evaluator gives the classifier's (non-constant) numbers
    cfg.evaluator = "classifier"
    run_evaluation(str(tmp_path / "cls"), ["random"], cfg, model=loaded, dataset=ds)
    curves = metrics.insertion_deletion_curves(
        tiny.model, x, attr, t, fractions=[0, 0.5, 1], seed=cfg.seed
    )
    area = metrics.area_under_curve(curves.fractions, curves.insertion)
    got = per_image(records(tmp_path / "cls"), "random", "insertion")
    assert [got[k] for k in keys] == pytest.approx(area.tolist(), abs=1e-6)
    assert not torch.allclose(area, p[t], atol=1e-3)


def test_surrogate_evaluator_without_surrogate_is_refused(tiny, tmp_path):
    cfg = EvalConfig(**QUICK)
    cfg.evaluator = "surrogate"
    with pytest.raises(ValueError, match="^--evaluator surrogate: the model has no"):
        run_evaluation(
            str(tmp_path), ["random"], cfg, model=tiny, dataset=scenes(tiny, 2)
        )
    assert not (tmp_path / "records.jsonl").exists()


# ------------------------------------------------------------ the other columns
def test_columns_equal_the_metric_functions(tiny, tmp_path):
    """Insertion − deletion, the accuracy AOPCs, faithfulness, the sensitivity-n
    sweep (mean and saved curve), ROAD and the random non-target class, each
    against the metric function called directly on the same maps."""
    ds = scenes(tiny, 3)
    cfg = EvalConfig(
        **{**QUICK, "road": "patches", "non_target": "random", "sensitivity_sizes": 3}
    )
    cfg.metric_batch = 5  # results do not depend on it
    out = tmp_path / "cols"
    table = run_evaluation(str(out), ["random"], cfg, model=tiny, dataset=ds)
    recs = records(out)
    items, x, t, keys = batch_of(ds)
    attr = random_maps(tiny, x, t, keys, cfg.seed)
    m, common = tiny.model, dict(seed=cfg.seed)

    def col(key):
        got = per_image(recs, "random", key)
        return torch.tensor([got[k] for k in keys])

    assert torch.equal(col("ins_minus_del"), col("insertion") - col("deletion"))
    for mode in ("positive", "negative"):
        ref = metrics.aopc(
            m, x, attr, t, mode=mode, score="accuracy", fractions=[0, 0.5], **common
        )
        assert torch.allclose(col(f"aopc_acc_{mode}"), ref)
    ref = metrics.faithfulness_correlation(m, x, attr, t, n_samples=4, **common)
    assert torch.allclose(col("faithfulness"), ref, atol=1e-6)
    # 3 sizes of 16 patches: n = 16/4, 16/2, 3·16/4
    sens = metrics.sensitivity_n(m, x, attr, t, n=[4, 8, 12], n_samples=4, **common)
    assert recs[0]["sensitivity_n_sizes"] == [4, 8, 12]
    assert torch.allclose(col("sensitivity_n"), sens.mean(1), atol=1e-6)
    saved = np.load(out / "sensitivity_n.npz")
    assert saved["n"].tolist() == [4, 8, 12]
    assert np.allclose(saved["random"], sens.mean(0).numpy(), atol=1e-6)
    assert (out / "sensitivity_n.png").stat().st_size > 5_000
    assert table["random"]["sensitivity_n"][0] == pytest.approx(
        float(sens.mean()), abs=1e-6
    )
    road = metrics.road_curves(m, x, attr, t, fractions=ROAD_FRACTIONS, **common)
    assert torch.allclose(col("road_morf"), road.morf.mean(1), atol=1e-6)
    assert torch.allclose(col("road_lerf"), road.lerf.mean(1), atol=1e-6)
    # the random non-target class: another class, from the image's own seed
    nt = torch.tensor([c for r in recs for c in r["non_targets"]])
    assert (nt != t).all()
    assert torch.equal(nt, non_target_classes("random", keys, t, CLASSES, cfg.seed))
    nt_attr = METHODS["random"].build(m, {})(
        x, nt, seeds=[image_seed(cfg.seed, k) for k in keys]
    )
    c = metrics.insertion_deletion_curves(m, x, nt_attr, nt, fractions=[0, 0.5, 1])
    ref = metrics.area_under_curve(c.fractions, c.deletion)
    assert torch.allclose(col("deletion_nontarget"), ref, atol=1e-6)
    # curves.npz keeps the new curves
    curves = np.load(out / "curves.npz")
    assert curves["random_road_morf"].shape == (9,)
    assert curves["random_insertion_nontarget"].shape == (3,)


def test_non_target_classes_are_seeded_per_image():
    t = torch.tensor([0, 3, 9, 3])
    keys = ["a", "b", "c", "d"]
    nt = non_target_classes("random", keys, t, 10, seed=5)
    assert (nt != t).all() and ((nt >= 0) & (nt < 10)).all()
    # the same image gets the same class in any batch (alone, reordered)
    for i in range(4):
        alone = non_target_classes("random", keys[i : i + 1], t[i : i + 1], 10, 5)
        assert int(alone) == int(nt[i])
    assert not torch.equal(nt, non_target_classes("random", keys, t, 10, seed=6))
    # the distractor's class, unless it is the explained class
    d = torch.tensor([1, 3, 2, 4])
    got = non_target_classes("distractor", keys, t, 10, 5, distractor=d)
    assert got.tolist() == [1, int(nt[1]), 2, 4]
    # two classes: the other one
    assert non_target_classes("random", keys, t % 2, 2, 5).tolist() == [1, 0, 0, 0]


def test_non_target_defaults_to_the_distractor_on_scenes(tiny, tmp_path):
    ds = scenes(tiny, 2)
    cfg = EvalConfig(**{**QUICK, "non_target": "auto"})
    run_evaluation(str(tmp_path), ["random"], cfg, model=tiny, dataset=ds)
    recs = records(tmp_path)
    assert [c for r in recs for c in r["non_targets"]] == [
        ds[i]["distractor"] for i in range(2)
    ]
    assert "(auto (distractor))" not in (tmp_path / "results.md").read_text()
    assert (
        "| non-target class | auto (distractor) |"
        in (tmp_path / "results.md").read_text()
    )


# -------------------------------------------------------------------- pointing
def _handmade(maps: Dict[int, torch.Tensor]) -> Method:
    """A method returning fixed maps, looked up by the image's seed."""

    def build(model, extras):
        def explain(x, t, seeds=None):
            return torch.stack([maps[int(s)] for s in seeds]).expand(-1, 3, -1, -1)

        return explain

    return Method("handmade", build, False, "hand-made maps for the tests")


def _distance_to(mask: torch.Tensor) -> torch.Tensor:
    """Euclidean distance of every pixel to the nearest True pixel of ``mask``."""
    h, w = mask.shape
    rr, cc = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    pts = torch.nonzero(mask).float()
    grid = torch.stack([rr, cc], -1).reshape(-1, 1, 2).float()
    return (grid - pts[None]).norm(dim=-1).min(dim=1).values.reshape(h, w)


def test_pointing_rules_on_hand_made_maps(tiny, tmp_path, monkeypatch):
    """Image 0: two tied maxima, the first (row-major) outside the box, the second
    inside: 'first' misses, 'any' hits. Image 1: one maximum exactly 3 px from the
    box: a miss, a hit with a 3-px tolerance, still a miss with 2.9 px (image 0's
    first maximum is farther than 3 px: still a miss)."""
    ds = scenes(tiny, 2)
    cfg = EvalConfig(**QUICK)
    maps: Dict[int, torch.Tensor] = {}
    for i in range(2):
        item = ds[i]
        gt = item["gt"]
        m = torch.zeros(1, 32, 32)
        inside = torch.nonzero(gt)[0]  # first box pixel in row-major order
        if i == 0:
            outside = torch.nonzero(~gt)[0]
            assert outside.tolist() < inside.tolist()  # comes first
            assert _distance_to(gt)[outside[0], outside[1]] > 3  # far from the box
            m[0, outside[0], outside[1]] = m[0, inside[0], inside[1]] = 1.0
        else:
            r, c = torch.nonzero(_distance_to(gt) == 3.0)[0]
            m[0, r, c] = 1.0
        maps[image_seed(cfg.seed, item["key"])] = m
    monkeypatch.setitem(METHODS, "handmade", _handmade(maps))

    def pointing(**kw) -> List[float]:
        out = tmp_path / "-".join(f"{k}{v}" for k, v in kw.items())
        run_evaluation(
            str(out), ["handmade"], EvalConfig(**QUICK, **kw), model=tiny, dataset=ds
        )
        got = per_image(records(out), "handmade", "pointing")
        return [got[ds[i]["key"]] for i in range(2)]

    assert pointing(pointing="first") == [0.0, 0.0]
    assert pointing(pointing="any") == [1.0, 0.0]
    assert pointing(pointing="first", pointing_tolerance=3.0) == [0.0, 1.0]
    assert pointing(pointing="first", pointing_tolerance=2.9)[1] == 0.0
    drawn = pointing(pointing="random")
    assert drawn[1] == 0.0 and drawn == pointing(pointing="random", chunk=1)
    report = (tmp_path / "pointingfirst" / "results.md").read_text()
    assert "the single highest-saliency pixel" in report


# --------------------------------------------------------------- randomisation
def test_randomization_on_a_spread_subset(tiny, tmp_path):
    """Two of four images get the check (positions 0 and 2); a map that ignores
    the model stays at 1; rollout equals the metric called directly; the model is
    left exactly as it was."""
    assert randomization_positions(4, 2) == [0, 2]
    assert randomization_positions(10, 3) == [0, 3, 6]
    ds = scenes(tiny, 4)
    cfg = EvalConfig(**{**QUICK, "randomization": 2, "chunk": 3})
    before = model_state(tiny.model)
    run_evaluation(str(tmp_path), ["random", "rollout"], cfg, model=tiny, dataset=ds)
    assert model_state(tiny.model) == before
    recs = records(tmp_path)
    keys = [ds[i]["key"] for i in range(4)]
    rnd = per_image(recs, "random", "randomization_spearman")
    assert rnd[keys[0]] == rnd[keys[2]] == 1.0
    assert math.isnan(rnd[keys[1]]) and math.isnan(rnd[keys[3]])
    assert per_image(recs, "random", "randomization_ssim")[keys[2]] == 1.0
    from captum_vit.attr import AttentionRollout

    items, x, t, _ = batch_of(ds)
    sel = torch.tensor([0, 2])
    ref = metrics.model_parameter_randomization(
        tiny.model, AttentionRollout(tiny.model), x[sel], t[sel], seed=cfg.seed
    )
    got = per_image(recs, "rollout", "randomization_spearman")
    assert [got[keys[0]], got[keys[2]]] == pytest.approx(
        ref.spearman.mean(1).tolist(), abs=1e-6
    )
    assert max(got[keys[0]], got[keys[2]]) < 0.99
    saved = np.load(tmp_path / "randomization.npz")
    assert saved["layers"].tolist() == ref.layers
    assert np.allclose(saved["rollout_spearman"], ref.spearman.mean(0), atol=1e-6)
    report = (tmp_path / "results.md").read_text()
    assert "(here 2 of 4 images have it)" in report


# ------------------------------------------------------------ report, settings
def test_results_md_defines_every_column_and_the_protocol(tiny, tmp_path):
    cfg = EvalConfig(**{**QUICK, "road": "patches", "randomization": 1})
    cfg.non_target = "random"
    run_evaluation(str(tmp_path), ["random"], cfg, model=tiny, dataset=scenes(tiny, 2))
    report = (tmp_path / "results.md").read_text()
    for key, header, _ in METRICS:
        if key == "grid_pointing":  # 4 classes needed: test_evaluate_new_columns.py
            continue
        assert f"- **{header}**: " in report, header
    assert "{" not in report  # every definition filled in
    assert "| setting | this run | papers |" in report
    for paper in ("ViT Shapley §6.2", "Zhang et al. 2018", "Rong et al. 2022"):
        assert paper in report
    assert "95 % confidence interval" in report


def test_resume_with_another_protocol_setting_is_refused(tiny, tmp_path):
    ds = scenes(tiny, 2)
    run_evaluation(
        str(tmp_path), ["random"], EvalConfig(**QUICK), model=tiny, dataset=ds
    )
    with pytest.raises(ValueError, match="pointing: first then, any now"):
        run_evaluation(
            str(tmp_path),
            ["random"],
            EvalConfig(**QUICK, pointing="any"),
            model=tiny,
            dataset=ds,
        )


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("evaluator", "teacher", "evaluator: expected one of"),
        ("pointing", "centre", "pointing: expected one of"),
        ("pointing_tolerance", -1.0, "pointing_tolerance: expected"),
        ("pointing_tolerance", float("nan"), "pointing_tolerance: expected"),
        ("sensitivity_sizes", 0, "sensitivity_sizes: expected a positive"),
        ("sensitivity_samples", 1, "sensitivity_samples: expected an integer >= 2"),
        ("non_target", "other", "non_target: expected one of"),
        ("road", "yes", "road: expected one of"),
        ("randomization", 3, "randomization: expected a number of images in 0..2"),
        ("metric_batch", 0, "metric_batch: expected a positive"),
    ],
)
def test_config_out_of_range(field, value, message):
    cfg = EvalConfig(n=2, **{field: value})
    with pytest.raises(ValueError, match=message):
        cfg.validate()


def test_faith_samples_reach_the_papers_1000(tiny, tmp_path):
    """1000 subsets per image run in batches of --metric-batch rows; the column is
    the metric's value with 1000 subsets."""
    ds = scenes(tiny, 1)
    cfg = EvalConfig(**{**QUICK, "faith_samples": 1000, "metric_batch": 256})
    run_evaluation(str(tmp_path), ["random"], cfg, model=tiny, dataset=ds)
    items, x, t, keys = batch_of(ds)
    attr = random_maps(tiny, x, t, keys, cfg.seed)
    ref = metrics.faithfulness_correlation(
        tiny.model, x, attr, t, n_samples=1000, seed=cfg.seed
    )
    got = per_image(records(tmp_path), "random", "faithfulness")
    assert got[keys[0]] == pytest.approx(float(ref), abs=1e-6)
    assert "| faithfulness subsets | 1000 |" in (tmp_path / "results.md").read_text()


# ------------------------------------------------------------------ bad flags
@pytest.mark.parametrize(
    "args,message",
    [
        (["--evaluator", "teacher"], "--evaluator: invalid choice: 'teacher'"),
        (["--pointing", "centre"], "--pointing: invalid choice: 'centre'"),
        (["--pointing-tolerance", "-1"], "--pointing-tolerance: expected a number"),
        (["--pointing-tolerance", "nan"], "--pointing-tolerance: expected a number"),
        (["--sensitivity-sizes", "0"], "--sensitivity-sizes: expected a positive"),
        (["--sensitivity-samples", "1"], "--sensitivity-samples: expected an integer"),
        (["--non-target", "other"], "--non-target: invalid choice: 'other'"),
        (["--road", "yes"], "--road: invalid choice: 'yes'"),
        (["--randomization", "-1"], "--randomization: expected an integer >= 0"),
        (["--randomization", "3", "--n", "2"], "--randomization: 3 images, more"),
        (["--metric-batch", "0"], "--metric-batch: expected a positive integer"),
        (
            ["--non-target", "distractor", "--data", "{tmp}"],
            "--non-target: 'distractor' needs the embedded scenes",
        ),
        (
            ["--evaluator", "surrogate", "--model", "test_vit", "--random-weights"],
            "--evaluator surrogate: the model has no ViT Shapley surrogate",
        ),
    ],
)
def test_bad_protocol_flags_are_one_line(tmp_path, capsys, args, message):
    from captum_vit.cli import main

    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    rc = main(["evaluate", *args, "--methods", "random", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("captum-vit evaluate: error: " + message), err
    assert not (tmp_path / "o" / "records.jsonl").exists()
