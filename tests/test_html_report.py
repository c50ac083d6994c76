"""report.html of evaluate, index.html of explain, and ``captum-vit report``: what the
pages hold (read back from the HTML and compared with results.csv and the records),
that they are self-contained, rebuilt the same from records (also after resuming),
and that a real browser shows them without errors and sorts the table."""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import browser
from browser import PACKAGE, Browser
from helpers import cli, write_scene_folder
from PIL import Image
from scipy import stats

from captum_vit.evaluate import METRICS, EvalConfig, run_evaluation

pytestmark = pytest.mark.usefixtures("one_thread")

METHODS = ["random", "genatt", "ixg", "rollout"]


def _cfg(**kw) -> EvalConfig:
    cfg = EvalConfig(n=4, chunk=2, tis_masks=8, curve_steps=2, faith_samples=4)
    cfg.sensitivity_samples, cfg.sensitivity_sizes, cfg.gallery = 4, 2, 3
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """One small real evaluation (4 methods, 4 scenes, a gallery of 3)."""
    out = tmp_path_factory.mktemp("report") / "eval"
    run_evaluation(str(out), METHODS, _cfg())
    return out


class _Page(HTMLParser):
    """The results table's cells, the gallery's pictures and every external
    reference of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: Dict[str, Dict[str, Dict[str, str]]] = {}
        self.headers: List[str] = []
        self.images: List[str] = []
        self.gallery_rows = 0
        self.external: List[str] = []
        self._table = None
        self._method = None
        self._cell = None
        self._text = ""

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for name in ("src", "href"):
            if a.get(name) and re.match(r"(https?:)?//", a[name]):
                self.external.append(a[name])
        if tag == "link" or (tag == "script" and "src" in a):
            self.external.append(str(a))
        if tag == "table" and a.get("id") == "results-table":
            self._table = True
        if self._table and tag == "th" and "data-sort" in a:
            self.headers.append(a["data-sort"])
        if self._table and tag == "tr" and "data-method" in a:
            self._method = a["data-method"]
            self.cells[self._method] = {}
        if self._table and tag == "td" and self._method:
            self._cell = a
            self._text = ""
        if tag == "section" and "gallery-row" in a.get("class", ""):
            self.gallery_rows += 1
        if tag == "img":
            self.images.append(a["src"])

    def handle_data(self, data):
        if self._cell is not None:
            self._text += data

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self._cell["text"] = self._text
            self.cells[self._method][self._cell["data-column"]] = self._cell
            self._cell = None
        if tag == "table":
            self._table = None


def _parse(path: Path) -> _Page:
    p = _Page()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def _csv(path: Path) -> Dict[str, Dict[str, str]]:
    with (path / "results.csv").open() as fh:
        return {r["method"]: r for r in csv.DictReader(fh)}


def _per_image(out: Path, column: str) -> Dict[str, Dict[str, float]]:
    values: Dict[str, Dict[str, float]] = {}
    seen = set()
    for line in (out / "records.jsonl").read_text().splitlines():
        r = json.loads(line)
        if (r["method"], r["start"]) in seen:
            continue
        seen.add((r["method"], r["start"]))
        values.setdefault(r["method"], {}).update(zip(r["keys"], r[column]))
    return values


def test_page_holds_every_method_and_column_with_the_csv_values(run: Path):
    page = _parse(run / "report.html")
    table = _csv(run)
    columns = [k for k in table["random"] if k not in ("method", "n")]
    keys = [k for k in columns if not k.endswith("_ci95")]
    assert set(page.cells) == set(table) == set(METHODS)
    assert page.headers == ["method", "n"] + keys
    assert keys == [k for k, _, _ in METRICS if k in keys]  # the catalogue's order
    for method, row in table.items():
        cells = page.cells[method]
        assert cells["n"]["data-mean"] == row["n"]
        for key in keys:
            mean, half = float(row[key]), float(row[key + "_ci95"])
            got_m = float(cells[key]["data-mean"])
            got_h = float(cells[key]["data-half"])
            for want, got in ((mean, got_m), (half, got_h)):
                if math.isnan(want):
                    assert math.isnan(got), (method, key)
                else:
                    assert got == pytest.approx(want, rel=1e-5, abs=1e-9)
            assert cells[key]["text"].strip() != ""
    # the best cell of each column holds the best mean; the definitions are there
    text = (run / "report.html").read_text()
    better = {k: b for k, _, b in METRICS}
    for key in keys:
        means = {m: float(table[m][key]) for m in table}
        sign = 1 if better[key] == "higher" else -1
        top = max(sign * v for v in means.values())
        marked = {m for m in table if "best" in page.cells[m][key].get("class", "")}
        assert marked == {m for m, v in means.items() if sign * v == top}, key
    for _, header, _ in METRICS:
        assert (f"<dt>{header} " in text) == (header in text)


def test_level_marks_follow_the_paired_interval(run: Path):
    """≈ marks exactly the methods whose paired 95 % interval against the best
    includes 0 (scipy's paired t interval as the oracle)."""
    page = _parse(run / "report.html")
    table = _csv(run)
    checked = 0
    for key, _, better in METRICS:
        if key not in table["random"] or key == "seconds":
            continue
        sign = 1 if better == "higher" else -1
        best = max(table, key=lambda m: sign * float(table[m][key]))
        values = _per_image(run, key)
        for m in table:
            cls = page.cells[m][key].get("class", "")
            if "best" in cls:
                continue
            common = [k for k in values[best] if k in values[m]]
            a = np.array([values[best][k] for k in common])
            b = np.array([values[m][k] for k in common])
            ok = np.isfinite(a) & np.isfinite(b)
            a, b = a[ok], b[ok]
            if np.all(a - b == (a - b)[0]):  # no spread: no interval to read
                continue
            lo, hi = stats.ttest_rel(a, b).confidence_interval(0.95)
            assert ("level" in cls) == (lo <= 0 <= hi), (key, m, lo, hi)
            checked += 1
    assert checked >= 10


def test_page_is_self_contained_with_the_gallery(run: Path):
    page = _parse(run / "report.html")
    assert page.external == []
    text = (run / "report.html").read_text()
    assert "<svg" in text and text.count("<svg") >= 2  # curves and sensitivity-n
    assert page.gallery_rows == 3
    # each gallery row: the image and one map per method, embedded PNGs
    pics = [s for s in page.images if s.startswith("data:image/png;base64,")]
    assert len(pics) == len(page.images) == 3 * (1 + len(METHODS))
    sizes = {
        Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1]))).size for s in pics
    }
    assert sizes == {(64, 64)}
    # target and prediction named by their class, not an index
    from captum_vit.zoo import CLASS_NAMES

    assert re.search(r"explained: (%s) \(p = " % "|".join(CLASS_NAMES), text)
    assert "class 0" not in text and "predicted: " in text
    # signed maps: diverging colours from blue, 0 in the middle; unsigned: sequential
    from captum_vit.methods import METHODS as REGISTRY

    bars = re.findall(
        r'<div class="title">([^<]+)</div>\s*<div class="bar" style="background: '
        r'linear-gradient\(to right, (#[0-9a-f]{6})[^"]*" title="colour scale: '
        r'([^"]+)"></div>\s*<div class="ticks">(.*?)</div>',
        text,
    )
    assert len(bars) == 3 * len(METHODS)
    for name, first, kind, ticks in bars:
        signed = REGISTRY[name].signed
        assert first == ("#0000ff" if signed else "#000004"), name  # bwr / inferno
        assert kind.startswith("signed") == signed
        assert ("<span>0</span>" in ticks) == signed
    # the gallery is the seeded sample, with this image's own scores
    meta = [json.loads(p.read_text()) for p in sorted(run.glob("gallery/*/meta.json"))]
    from captum_vit.evaluate import gallery_positions

    assert [m["position"] for m in meta] == gallery_positions(4, 3, 1234)
    assert all(f">{m['key']}<" in text for m in meta)


def test_report_command_rebuilds_the_same_page(run: Path, capsys, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    (copy / "report.html").unlink()
    rc, out, err = cli(capsys, "report", copy)
    assert rc == 0, err
    assert (copy / "report.html").read_bytes() == (run / "report.html").read_bytes()
    assert "report.html" in out


def test_resumed_run_rebuilds_the_same_page(run: Path, tmp_path, capsys):
    """A run interrupted after its first record and resumed: the same table (but
    the timings) and the same gallery as the uninterrupted run; ``report`` writes
    the same page as the resumed run did."""
    out = tmp_path / "resumed"

    def stop(line: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_evaluation(str(out), METHODS, _cfg(), log=stop)
    assert not (out / "report.html").exists()
    run_evaluation(str(out), METHODS, _cfg())
    a, b = _parse(run / "report.html"), _parse(out / "report.html")
    for method in METHODS:
        for key, cell in a.cells[method].items():
            if key != "seconds":
                assert cell.get("data-mean") == b.cells[method][key].get("data-mean")
    assert a.images == b.images
    page = (out / "report.html").read_bytes()
    rc, _, err = cli(capsys, "report", out)
    assert rc == 0, err
    assert (out / "report.html").read_bytes() == page


def test_only_rank_0_writes_the_page(run: Path, tmp_path):
    """Two ranks' shares run one after the other (no process group): rank 1 keeps
    its records and gallery images but writes no page; rank 0 writes the page from
    both ranks' records, equal to the one-process page but the timings."""
    from captum_vit.distributed import DistContext

    out = tmp_path / "ranks"
    got = run_evaluation(str(out), METHODS, _cfg(), ctx=DistContext(1, 2))
    assert got is None and (out / "records.rank1.jsonl").is_file()
    assert list(out.glob("gallery/*/image.png"))
    assert not list(out.glob("report.html*")) and not (out / "results.csv").exists()
    run_evaluation(str(out), METHODS, _cfg(), ctx=DistContext(0, 2))
    a, b = _parse(run / "report.html"), _parse(out / "report.html")
    for method in METHODS:
        for key, cell in a.cells[method].items():
            if key != "seconds":
                assert cell.get("data-mean") == b.cells[method][key].get("data-mean")
    assert a.images == b.images and b.gallery_rows == 3


def test_report_bad_input_one_line(tmp_path, capsys):
    rc, _, err = cli(capsys, "report", tmp_path / "missing")
    assert rc == 2 and err.count("\n") == 1 and "no such folder" in err
    rc, _, err = cli(capsys, "report", tmp_path)
    assert rc == 2 and err.count("\n") == 1 and "holds no evaluate run" in err
    old = {
        "method": "random",
        "start": 0,
        "keys": ["a", "b"],
        "insertion": [0.1, 0.2],
        "settings": {"command": "evaluate", "n": 2},
    }
    (tmp_path / "records.jsonl").write_text(json.dumps(old) + "\n")
    rc, _, err = cli(capsys, "report", tmp_path)
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith("captum-vit report: error: ")
    assert "another captum-vit version" in err and "format none" in err


def test_explain_galleries(tmp_path, capsys):
    """explain without --data: one self-contained index.html; with --data: every
    image × method, pictures beside the page, pages split past the page size."""
    from captum_vit.data import ImageDataset
    from captum_vit.explain import write_gallery
    from captum_vit.models import load_model

    rc, _, err = cli(
        capsys, "explain", "--n", "2", "--method", "genatt", "--out", tmp_path / "few"
    )
    assert rc == 0, err
    few = _parse(tmp_path / "few" / "index.html")
    assert few.external == [] and few.gallery_rows == 2
    assert len(few.images) == 4 and all(s.startswith("data:") for s in few.images)

    folder = tmp_path / "imgs"
    write_scene_folder(folder, n=5)
    out = tmp_path / "maps"
    rc, _, err = cli(
        capsys,
        "explain",
        "--data",
        folder,
        "--method",
        "genatt",
        "ig",
        "--quiet",
        "--out",
        out,
    )
    assert rc == 0, err
    page = _parse(out / "index.html")
    assert page.gallery_rows == 5 and page.external == []
    assert len(page.images) == 5 * 3
    for src in page.images:
        assert not src.startswith("data:") and (out / src).is_file()
    assert "true: " in (out / "index.html").read_text()  # ImageFolder classes
    with (out / "manifest.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    loaded = load_model("default")
    data = ImageDataset.from_folder(str(folder), loaded.preprocessing)
    pages = write_gallery(
        out, data, ["genatt", "ig"], rows, loaded.class_names, per_page=2
    )
    assert [p.name for p in pages] == ["index.html", "index-2.html", "index-3.html"]
    assert [_parse(p).gallery_rows for p in pages] == [2, 2, 1]
    assert 'href="index-3.html"' in pages[0].read_text()


# ------------------------------------------------------------------ a real browser
def _browser():
    if browser.find_chromium() is None:
        pytest.skip(
            f"no browser: install Debian's {PACKAGE!r} package (apt-get install "
            f"{PACKAGE}) to run the browser tests"
        )
    return Browser(timeout=60)


ORDER = (
    "Array.from(document.querySelectorAll('#results-table tbody tr'))"
    ".map(r => r.dataset.method)"
)


def test_without_a_browser_the_tests_skip_naming_the_package(monkeypatch):
    monkeypatch.setattr(browser, "find_chromium", lambda: None)
    with pytest.raises(pytest.skip.Exception, match="'chromium' package"):
        _browser()


def test_browser_shows_the_report_and_sorts(run: Path, tmp_path):
    table = _csv(run)
    with _browser() as b:
        b.open(run / "report.html")
        assert b.evaluate(ORDER) == METHODS
        b.evaluate("document.querySelector('th[data-sort=\"insertion\"]').click()")
        want = sorted(table, key=lambda m: -float(table[m]["insertion"]))
        assert b.evaluate(ORDER) == want  # higher is better: best first
        b.evaluate("document.querySelector('th[data-sort=\"insertion\"]').click()")
        assert b.evaluate(ORDER) == want[::-1]
        b.evaluate("document.querySelector('th[data-sort=\"deletion\"]').click()")
        assert b.evaluate(ORDER) == sorted(
            table, key=lambda m: float(table[m]["deletion"])
        )
        # the paired matrix follows the chosen column
        b.evaluate(
            "var s = document.getElementById('pair-column'); s.value = 'deletion';"
            "s.dispatchEvent(new Event('change'))"
        )
        shown = b.evaluate(
            "Array.from(document.querySelectorAll('div.matrix'))"
            ".filter(d => !d.hidden).map(d => d.dataset.column)"
        )
        assert shown == ["deletion"]
        loaded = b.evaluate(
            "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"
        )
        assert loaded
        # readable at a laptop's width: the page does not scroll sideways
        assert b.evaluate("document.documentElement.scrollWidth") <= 1366
        shot = b.screenshot(tmp_path / "report.png")
        assert b.errors() == []
    with Image.open(shot) as im:
        assert im.size == (1366, 900)
        colours = np.unique(np.asarray(im.convert("RGB")).reshape(-1, 3), axis=0)
        assert len(colours) > 50  # drawn, not blank


def test_browser_shows_the_explain_gallery(tmp_path, capsys):
    rc, _, err = cli(
        capsys, "explain", "--n", "2", "--method", "rollout", "--out", tmp_path
    )
    assert rc == 0, err
    with _browser() as b:
        b.open(tmp_path / "index.html")
        assert b.evaluate(
            "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"
        )
        assert b.evaluate("document.images.length") == 4
        assert b.errors() == []
