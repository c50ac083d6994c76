"""Quality table of every method on held-out embedded scenes (issue: benchmark tables).

Runs ``captum-vit evaluate`` with the given arguments (see ``captum-vit evaluate -h``);
the table, CSV and curves land in ``--out``. Interrupt and run again to resume.

Example (the run behind benchmarks/RESULTS.md):
    python benchmarks/quality.py --n 200 --out benchmarks/results/quality_tokens
"""

from __future__ import annotations

import sys

from captum_vit.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
