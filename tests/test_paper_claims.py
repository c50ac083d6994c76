"""benchmarks/paper_claims.py: paired comparisons of an evaluate run's records."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location(
        "paper_claims", ROOT / "benchmarks" / "paper_claims.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _write(folder: Path, values: dict, chunk: int = 5) -> None:
    """Records as evaluate writes them: one per (method, chunk), split over two
    rank files, with one duplicate record that must be ignored."""
    n = len(next(iter(next(iter(values.values())).values())))
    lines = {0: [], 1: []}
    for method, metrics in values.items():
        for start in range(0, n, chunk):
            rec = {
                "method": method,
                "start": start,
                "keys": [f"scene-{i:05d}" for i in range(start, start + chunk)],
            }
            rec.update({m: list(v[start : start + chunk]) for m, v in metrics.items()})
            lines[(start // chunk) % 2].append(json.dumps(rec))
    # a later duplicate of the first chunk with other values: the first one counts
    dup = json.loads(lines[0][0])
    dup.update({m: [99.0] * chunk for m in values[dup["method"]]})
    lines[0].append(json.dumps(dup))
    (folder / "records.jsonl").write_text("\n".join(lines[0]) + "\n")
    (folder / "records.rank1.jsonl").write_text("\n".join(lines[1]) + "\n")


def test_paired_difference_matches_scipy_ttest_rel(tmp_path: Path) -> None:
    pc = _module()
    rng = np.random.default_rng(0)
    base = rng.uniform(0.1, 0.5, 20)
    ins_minus_del = {
        "rollout": base,
        "tis": base + 0.05 + rng.normal(0, 0.02, 20),  # clearly above
        "vitcx": base + rng.normal(0, 0.05, 20),  # indistinguishable
    }
    _write(tmp_path, {m: {"ins_minus_del": v} for m, v in ins_minus_del.items()})
    data = pc.per_image(tmp_path)
    a, b = data["tis"]["ins_minus_del"], data["rollout"]["ins_minus_del"]
    assert len(a) == 20 and a["scene-00000"] != 99.0
    _, _, diff, half, share, n = pc.paired(a, b, +1)
    ref = stats.ttest_rel(ins_minus_del["tis"], ins_minus_del["rollout"])
    lo, hi = ref.confidence_interval(0.95)
    assert n == 20
    assert diff == pytest.approx((lo + hi) / 2) and half == pytest.approx((hi - lo) / 2)
    assert share == pytest.approx(np.mean(ins_minus_del["tis"] > base))
    rows = {r[1]: r for r in pc.check(tmp_path)}
    assert rows["tis vs rollout"][-1] == "reproduced"
    verdict_vitcx = rows["vitcx vs rollout"][-1]
    d = ins_minus_del["vitcx"] - base
    lo, hi = stats.ttest_rel(ins_minus_del["vitcx"], base).confidence_interval(0.95)
    expected = "reproduced" if lo > 0 else "reversed" if hi < 0 else "level"
    assert verdict_vitcx == expected
    assert abs(d.mean()) < 0.05


def test_lower_is_better_and_best_of_all(tmp_path: Path) -> None:
    pc = _module()
    rng = np.random.default_rng(1)
    n = 10
    deletion = {
        "vit-shapley": rng.uniform(0.0, 0.1, n),
        "tis": rng.uniform(0.2, 0.3, n),
        "random": rng.uniform(0.4, 0.5, n),
    }
    deletion["genatt"] = deletion["vit-shapley"] - 0.01  # genatt is better: reversed
    _write(tmp_path, {m: {"deletion": v} for m, v in deletion.items()})
    rows = pc.check(tmp_path)
    assert len(rows) == 1  # "best of all" is one row: the closest competitor
    (row,) = rows
    assert row[1] == "vit-shapley vs genatt" and row[2] == "deletion ↓"
    assert row[4].startswith("-0.010")
    assert row[-1] == "reversed (beats 2/3 clearly)"


def test_nan_values_pair_only_finite_images(tmp_path: Path) -> None:
    pc = _module()
    a = {"x": 1.0, "y": float("nan"), "z": 3.0, "w": 2.0}
    b = {"x": 0.0, "y": 0.0, "z": 1.0}
    _, _, diff, _, _, n = pc.paired(a, b, -1)
    assert n == 2 and diff == pytest.approx(-1.5)
    assert pc.paired({"x": 1.0}, {"x": 0.0}, 1) is None


def test_cli_refuses_a_folder_without_records(tmp_path: Path, capsys) -> None:
    pc = _module()
    assert pc.main([str(tmp_path)]) == 2
    assert "no records" in capsys.readouterr().err


def test_only_the_latest_settings_count(tmp_path: Path) -> None:
    """Records of an earlier run with other settings in the same folder are ignored,
    as in evaluate's own tables."""
    pc = _module()
    old = {"method": "tis", "start": 0, "keys": ["a", "b"], "deletion": [9.0, 9.0]}
    new = {"method": "tis", "start": 0, "keys": ["a", "b"], "deletion": [0.1, 0.2]}
    lines = [dict(old, settings={"n": 1}), dict(new, settings={"n": 2})]
    (tmp_path / "records.jsonl").write_text(
        "\n".join(json.dumps(r) for r in lines) + "\n"
    )
    assert pc.per_image(tmp_path)["tis"]["deletion"] == {"a": 0.1, "b": 0.2}


def test_every_claim_names_a_method_and_a_column_that_exist() -> None:
    """A renamed method or column would make ``check`` skip its claims silently."""
    from captum_vit.evaluate import METRICS
    from captum_vit.methods import METHODS

    mod = _module()
    columns = {key for key, _, _ in METRICS}
    for paper, winner, loser, metrics in mod.CLAIMS:
        assert winner in METHODS, (paper, winner)
        assert loser == "*" or loser in METHODS, (paper, loser)
        assert set(metrics) <= columns, (paper, metrics)
    claimed = {(w, lo) for _, w, lo, _ in mod.CLAIMS}
    for pair in [
        ("tam", "transformer-attribution"),
        ("beyond-intuition-token", "transformer-attribution"),
        ("beyond-intuition-head", "transformer-attribution"),
        ("attnlrp", "transformer-attribution"),
        ("legrad", "genatt"),
        ("attention-flow", "rollout"),
        ("transformer-attribution", "gradsam"),
        ("transformer-attribution", "partial-lrp"),
    ]:
        assert pair in claimed


def test_summary_marks_the_best_and_the_methods_level_with_it(tmp_path: Path) -> None:
    """benchmarks/summary.py: ★ on the best mean, ≈ where the paired interval with
    the best contains zero, nothing where the best is clearly ahead; the random
    baseline is never marked."""
    spec = importlib.util.spec_from_file_location(
        "summary", ROOT / "benchmarks" / "summary.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rng = np.random.default_rng(0)
    base = rng.normal(0.5, 0.1, 40)
    cols = {
        "best": base + 0.1,
        "close": base + 0.1 + rng.normal(0, 0.05, 40),  # level with the best
        "far": base,  # 0.1 behind on every image: clearly behind
        "random": base + 0.5,  # a reference row: never best
    }
    values = {
        m: {k: v for k, _, _ in mod.COLUMNS}
        for m, v in [(m, list(c)) for m, c in cols.items()]
    }
    _write(tmp_path, values)
    cells = mod.summarise(mod.run_data(tmp_path))
    marks = {m: cells[m]["ins_minus_del"][2] for m in cols}
    assert marks["random"] == "" and marks["far"] == ""
    assert {marks["best"], marks["close"]} == {"★", "≈"}
    # deletion is lower-is-better: the same values make "far" the best there
    assert cells["far"]["deletion"][2] == "★"
    text = mod.table(cells, None)
    assert "★**" in text and text.count("\n") == len(cols) + 2
