"""TextRelevance side by side with the authors' CLIP notebook (issue 30).

Reference: hila-chefer/Transformer-MM-Explainability (commit below), the
``interpret`` function of ``CLIP_explainability.ipynb`` and the CLIP model it
explains (``CLIP/clip/model.py`` + ``auxilary.py``, which keep each block's
attention probabilities and their gradients). Both sides get the same random weights:
an OpenCLIP ``CLIP`` (OpenAI layout, QuickGELU) is built, and its ``state_dict`` is
loaded into the notebook's model with the notebook's own ``build_model``. The texts
are tokenised with ``open_clip.tokenize`` (the same BPE, start/end tokens and 77-token
padding as the notebook's ``clip.tokenize``).

The reference files are copied into a temporary folder at run time; the notebook cell
is executed with one CPU edit (``.cuda()`` -> ``.to(device)``). Nothing of it is
package code.

Per (image, text) pair the token scores shown by the notebook
(``R_text[eot, 1:eot]``, normalised to sum 1) are compared with
``TextRelevance(...).attribute(...).scores[:, 1:eot]`` (Pearson r after the same
normalisation; the max abs difference of the unnormalised rows), for
``start_layer_text = -1`` (the notebook's default: last block only) and ``0`` (every
block, the paper's rule and TextRelevance's default). A pair where no positive
relevance reaches the words (possible with the last block alone) must be all zero on
both sides and is counted apart. Both are timed in the same run
(``torch.set_num_threads(1)``).

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD \\
        python benchmarks/text_relevance_compare.py --images 8
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = "hila-chefer/Transformer-MM-Explainability"
MIRROR = Path("/work/.mirror/hila-chefer+Transformer-MM-Explainability/repo")
TEXTS = [
    "a photo of a dog",
    "a man with eyeglasses",
    "a red sandal next to a small bag",
    "an elephant in the water",
]


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", f"--git-dir={MIRROR}", *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def reference(tmp: Path):
    """The notebook's CLIP package (model.py, auxilary.py) and its interpret()."""
    pkg = tmp / "mmclip"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for f in ("model.py", "auxilary.py"):
        (pkg / f).write_text(_git("show", f"HEAD:CLIP/clip/{f}"))
    nb = json.loads(_git("show", "HEAD:CLIP_explainability.ipynb"))
    cell = next(
        "".join(c["source"])
        for c in nb["cells"]
        if c["cell_type"] == "code" and "def interpret" in "".join(c["source"])
    )
    cell = cell.replace(".cuda()", ".to(device)")  # the one CPU edit
    sys.path.insert(0, str(tmp))
    from mmclip import model as ref_model  # noqa: E402

    scope = {"torch": torch, "np": np, "start_layer": -1, "start_layer_text": -1}
    exec(cell, scope)
    return ref_model, scope["interpret"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    import open_clip

    from captum_vit import TextRelevance

    commit = _git("rev-parse", "HEAD").strip()
    with tempfile.TemporaryDirectory() as d:
        ref_model, interpret = reference(Path(d))
        torch.manual_seed(0)
        vision = dict(image_size=32, patch_size=8, width=128, layers=3, head_width=64)
        text = dict(context_length=77, vocab_size=49408, width=128, heads=2, layers=3)
        ours = open_clip.CLIP(32, vision, text, quick_gelu=True).eval()
        with torch.no_grad():  # visible logit scale and non-trivial weights
            for p in ours.parameters():
                if p.dim() >= 2:
                    p.mul_(1.5)
        theirs = ref_model.build_model(
            {k: v.clone() for k, v in ours.state_dict().items()}
        )
        theirs = theirs.float().eval()
        ids = open_clip.tokenize(TEXTS)
        eot = ids.argmax(-1)
        gen = torch.Generator().manual_seed(1)
        images = torch.randn(args.images, 3, 32, 32, generator=gen)
        rows = []
        for start in (-1, 0):
            rs, diffs = [], []
            zero = 0
            t_ref = t_ours = 0.0
            tr = TextRelevance(ours, start_layer=start)
            for b in range(args.images):
                img = images[b : b + 1]
                t0 = time.perf_counter()
                for _ in range(args.repeats):
                    r_text, _ = interpret(
                        img, ids, theirs, "cpu", start_layer=-1, start_layer_text=start
                    )
                t_ref += (time.perf_counter() - t0) / args.repeats
                t0 = time.perf_counter()
                for _ in range(args.repeats):
                    out = tr.attribute(
                        img.expand(len(TEXTS), -1, -1, -1),
                        token_ids=ids,
                        target=torch.arange(len(TEXTS)),
                    )
                t_ours += (time.perf_counter() - t0) / args.repeats
                for k in range(len(TEXTS)):
                    e = int(eot[k])
                    ref = r_text[k, e, 1:e].detach().double()
                    got = out.scores[k, 1:e].double()
                    diffs.append(float((ref - got).abs().max()))  # unnormalised
                    if float(ref.sum()) == 0.0 or float(got.sum()) == 0.0:
                        # no positive relevance reached the words (the last block
                        # alone can give none): both must be zero
                        zero += 1
                        assert float(ref.abs().max()) < 1e-9, (start, b, k)
                        assert float(got.abs().max()) < 1e-6, (start, b, k)
                        continue
                    ref, got = ref / ref.sum(), got / got.sum()
                    rs.append(float(np.corrcoef(ref.numpy(), got.numpy())[0, 1]))
            rows.append(
                dict(
                    start_layer_text=start,
                    pairs=len(rs) + zero,
                    zero=zero,
                    pearson_min=min(rs),
                    pearson_mean=float(np.mean(rs)),
                    max_abs_diff=max(diffs),
                    ms_reference=1000 * t_ref / args.images,
                    ms_ours=1000 * t_ours / args.images,
                )
            )
    print(f"reference: {REPO} @ {commit}")
    print(
        "| start_layer_text | pairs | both zero | Pearson min | Pearson mean | max "
        "abs diff | notebook ms/image | TextRelevance ms/image |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['start_layer_text']} | {r['pairs']} | {r['zero']} | "
            f"{r['pearson_min']:.6f} | "
            f"{r['pearson_mean']:.6f} | {r['max_abs_diff']:.2e} | "
            f"{r['ms_reference']:.1f} | {r['ms_ours']:.1f} |"
        )


if __name__ == "__main__":
    main()
