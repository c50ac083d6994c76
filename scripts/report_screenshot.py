"""The README's screenshots of a real ``report.html``: ``docs/report.png`` (the top
of the page: protocol and table, sorted by a column) and ``docs/report_gallery.png``
(the gallery), taken with the browser code of the tests (``tests/browser.py``,
headless Chromium, Debian's ``chromium`` package) at a laptop's width.

Usage (from the repository root; about a minute on a CPU):

    python scripts/report_screenshot.py [--run DIR] [--n 16] [--methods ...]

It runs ``captum-vit evaluate`` on the embedded scenes into ``--run`` (resuming what
is there), then opens its ``report.html``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from browser import Browser  # noqa: E402

METHODS = ["rollout", "genatt", "transformer-attribution", "ixg", "ig", "random"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, default=Path("out/report_screenshot"))
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--methods", nargs="+", default=METHODS)
    p.add_argument("--sort", default="ins_minus_del", help="column to sort by")
    p.add_argument("--docs", type=Path, default=ROOT / "docs")
    args = p.parse_args()
    from captum_vit.cli import main as cli

    rc = cli(
        ["evaluate", "--n", str(args.n), "--methods", *args.methods, "--quiet"]
        + ["--out", str(args.run)]
    )
    if rc:
        return rc
    args.docs.mkdir(parents=True, exist_ok=True)
    with Browser(width=1366, height=860) as b:
        b.open(args.run / "report.html")
        b.evaluate(f"document.querySelector('th[data-sort=\"{args.sort}\"]').click()")
        b.evaluate("document.getElementById('results').scrollIntoView()")
        b.evaluate("window.scrollBy(0, -12)")
        b.screenshot(args.docs / "report.png")
        b.evaluate("document.getElementById('gallery').scrollIntoView()")
        b.screenshot(args.docs / "report_gallery.png")
        errors = b.errors()
    if errors:
        print("console errors:", *errors, sep="\n", file=sys.stderr)
        return 1
    print(f"wrote {args.docs / 'report.png'} and {args.docs / 'report_gallery.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
