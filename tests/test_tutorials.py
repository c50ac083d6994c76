"""The tutorial notebooks: they run top to bottom and are committed clean.

Each notebook is executed in a fresh ``python3`` kernel at test sizes
(``CAPTUM_VIT_SMALL=1``), headless (``MPLBACKEND=Agg``), offline (``HF_HUB_OFFLINE=1``,
so notebook 05 takes its random-weight fallback at once instead of retrying the
network), with one OpenMP thread unless ``OMP_NUM_THREADS`` is set, and in an empty
working directory that must still be empty afterwards: a notebook that writes files
does so in a temporary folder (``tempfile``, pointed into the test's own folder
through ``TMPDIR``), never next to the notebook, where the files would pollute the
git tree. The notebooks are built from the jupytext percent scripts
``tutorials/NN_name.py`` by ``tutorials/build.py``; the committed files must equal a
fresh build, without outputs, and the scripts must be black-clean.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
IDS = [p.stem for p in NOTEBOOKS]
# Seconds per cell. At test sizes a whole notebook takes about a minute on 2 cores;
# the margin is for a loaded machine.
CELL_TIMEOUT = 600


def _read(path: Path):
    return nbformat.read(str(path), as_version=4)


def _code_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def _load_build() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "tutorials_build", TUTORIALS / "build.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_notebooks_exist():
    assert len(NOTEBOOKS) == 6, [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_runs(path, tmp_path, monkeypatch):
    pytest.importorskip("ipykernel")
    nb = _read(path)
    if any("load_default_model" in c.source for c in _code_cells(nb)):
        from captum_vit.zoo import DEFAULT_WEIGHTS

        if not DEFAULT_WEIGHTS.is_file():
            pytest.skip(f"needs the default model weights ({DEFAULT_WEIGHTS})")
    # The kernel is a subprocess and inherits this environment.
    monkeypatch.setenv("CAPTUM_VIT_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # One intra-op thread unless the caller chose otherwise: the notebooks run tiny
    # ops, and on a shared, busy CPU two OpenMP threads per op made them ~20x slower.
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    # The kernel starts in `cwd`, as a notebook opened from tutorials/ starts there;
    # its temporary files go under `tmp`, which pytest removes.
    cwd, tmp = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(cwd)}},
    )
    client.execute()  # raises CellExecutionError (with the traceback) on any error
    written = sorted(p.name for p in cwd.iterdir())
    assert written == [], (
        f"{path.name} wrote {written} into its working directory (next to the "
        "notebook, for a reader): write into a temporary folder instead"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_committed_clean(path):
    nb = _read(path)
    nbformat.validate(nb)
    for i, cell in enumerate(_code_cells(nb)):
        assert cell.outputs == [], f"{path.name}: code cell {i} has outputs"
        assert cell.execution_count is None, f"{path.name}: code cell {i} was run"
        assert "execution" not in cell.metadata, f"{path.name}: code cell {i}"
    first = _code_cells(nb)[0].source
    assert (
        'os.environ.get("CAPTUM_VIT_SMALL"' in first
    ), f"{path.name}: the first code cell must read CAPTUM_VIT_SMALL"


def test_every_notebook_has_a_script():
    scripts = sorted(p.stem for p in TUTORIALS.glob("[0-9][0-9]_*.py"))
    assert scripts == IDS, "each tutorials/NN_name.ipynb is built from NN_name.py"


def test_notebooks_match_build(tmp_path):
    pytest.importorskip("jupytext")
    build = _load_build()
    assert build.main(["--out", str(tmp_path)]) == 0
    built = sorted(p.name for p in tmp_path.iterdir())
    assert built == [p.name for p in NOTEBOOKS]
    for path in NOTEBOOKS:
        assert path.read_bytes() == (tmp_path / path.name).read_bytes(), (
            f"{path.name} differs from a build of {path.stem}.py: edit the script, "
            "then run `python tutorials/build.py`"
        )


def test_build_is_stable():
    """Two builds give the same bytes (cell ids come from the name and the index)."""
    pytest.importorskip("jupytext")
    build = _load_build()
    for script in build.scripts():
        assert build.render(script) == build.render(script)
        ids = [cell.id for cell in build.build(script).cells]
        number = script.stem.split("_")[0]
        assert ids == [f"c{number}-{i:02d}" for i in range(len(ids))]


def test_scripts_black_clean():
    black = pytest.importorskip("black")
    for path in sorted(TUTORIALS.glob("*.py")):
        src = path.read_text(encoding="utf-8")
        formatted = black.format_str(src, mode=black.Mode())
        assert formatted == src, f"{path.name} needs black"
