"""Build the tutorial notebooks from their jupytext percent scripts.

Each ``tutorials/NN_name.py`` (``# %%`` code cells, ``# %% [markdown]`` cells) is the
source of ``tutorials/NN_name.ipynb``. Edit the script, then run
``python tutorials/build.py`` to rewrite the notebooks. They come out without outputs,
with the same metadata (a ``python3`` kernelspec) and stable cell ids (``cNN-II``: the
notebook's number and the cell's index), so a rebuild gives byte-identical files. Cell
metadata in the scripts are not carried over. ``--check`` writes nothing and exits 1
when a committed notebook differs from its build. The test suite runs that check and
executes every notebook.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import List, Optional

import jupytext
import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_raw_cell

HERE = Path(__file__).resolve().parent

METADATA = {
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
}

_NEW_CELL = {
    "code": new_code_cell,
    "markdown": new_markdown_cell,
    "raw": new_raw_cell,
}


def scripts(folder: Path = HERE) -> List[Path]:
    """The notebook sources in ``folder``: the ``NN_name.py`` files, sorted.

    Args:
        folder: Where to look (default: this script's folder).

    Returns:
        The paths, sorted by name.
    """
    return sorted(folder.glob("[0-9][0-9]_*.py"))


def build(script: Path) -> nbformat.NotebookNode:
    """The notebook of one percent script, without outputs, with stable cell ids.

    Args:
        script: A ``NN_name.py`` jupytext percent script.

    Returns:
        The validated notebook.
    """
    parsed = jupytext.reads(script.read_text(encoding="utf-8"), fmt="py:percent")
    number = script.stem.split("_")[0]
    cells = [
        _NEW_CELL[cell.cell_type](cell.source, id=f"c{number}-{i:02d}")
        for i, cell in enumerate(parsed.cells)
    ]
    nb = new_notebook(cells=cells, metadata=copy.deepcopy(METADATA))
    nbformat.validate(nb)
    return nb


def render(script: Path) -> str:
    """The ``.ipynb`` file content built from one percent script.

    Args:
        script: A ``NN_name.py`` jupytext percent script.

    Returns:
        The notebook as JSON text, ending in a newline.
    """
    return nbformat.writes(build(script)) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    """Write (or with ``--check``, compare) every notebook.

    Args:
        argv: Command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0, or 1 when ``--check`` found a stale notebook.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=HERE,
        help="folder to write the notebooks into (default: next to the scripts)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if a notebook in --out differs from its build",
    )
    args = parser.parse_args(argv)
    stale = []
    for script in scripts():
        target = args.out / (script.stem + ".ipynb")
        text = render(script)
        if args.check:
            if not target.is_file() or target.read_text(encoding="utf-8") != text:
                stale.append(target.name)
            continue
        target.write_text(text, encoding="utf-8", newline="\n")
        print("wrote", target)
    if stale:
        print("out of date (run `python tutorials/build.py`):", ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
