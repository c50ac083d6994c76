"""Speed of AttentionFlow, side by side with the authors' networkx implementation.

(a) The embedded default (``captum_vit.zoo.load_default_model()``, 64 patches + CLS,
    6 blocks): the authors' pipeline (samiraabnar/attention_flow,
    ``attention_graph_util.py``: ``get_adjmat``, the capacity graph, and
    ``compute_node_flow`` with networkx Edmonds-Karp from the last layer's CLS node to
    every input node) against ``AttentionFlow.attribute`` (forward pass included) on
    the same images, with the per-image Pearson r of the two maps and the largest
    difference of the normalised flows (the authors divide each output node's flows
    by their sum over all input tokens).
    Their file is executed from a temporary copy with the CPU edits the environment
    needs: the unused ``import tensorflow`` lines dropped and networkx 3's
    ``from_numpy_array`` for the removed ``from_numpy_matrix``. Their graph is built
    as their ``draw_attention_graph`` builds it (``from_numpy_array``, then
    ``capacity`` = the edge weight) without its plotting.
(b) ViT-B/16 (random weights, 224 px): seconds per image, batch 1 and 8, split into
    the forward pass and the max-flow problems.
(c) Growth with the number of patch tokens: ViT-B/16 at 128, 224 and 384 px (64,
    196 and 576 patches, 12 blocks): seconds per image and per max-flow problem.
(d) Two threads against one for the per-token problems of one ViT-B image (scipy's
    solver holds the GIL).

Run with one thread on an otherwise idle machine:
    OMP_NUM_THREADS=1 PYTHONPATH=$PWD \
        python benchmarks/attention_flow_speed.py [--reference GIT_DIR] [--images N]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Dict, Tuple

import numpy as np
import timm
import torch

from captum_vit import AttentionFlow, ViTAdapter, patch_scores, zoo
from captum_vit.attr._attention_flow import flow_capacities, max_flows
from captum_vit.vit import record_attention

REFERENCE = "/work/.mirror/samiraabnar+attention_flow/repo"


def load_reference(git_dir: str) -> Tuple[Dict[str, Callable], str]:
    """The authors' functions, exec'd from a temporary copy with the CPU edits."""
    commit = subprocess.run(
        ["git", "--git-dir", git_dir, "rev-parse", "HEAD"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    src = subprocess.run(
        ["git", "--git-dir", git_dir, "show", f"{commit}:attention_graph_util.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    src = "\n".join(
        ln for ln in src.splitlines() if ln.strip() != "import tensorflow as tf"
    )
    src = src.replace("nx.from_numpy_matrix", "nx.from_numpy_array")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "attention_graph_util.py"
        path.write_text(src)
        namespace: Dict[str, Callable] = {"__name__": "attention_graph_util"}
        exec(compile(src, str(path), "exec"), namespace)
    return namespace, commit


def reference_flow(ref: Dict[str, Callable], attentions: np.ndarray) -> np.ndarray:
    """The authors' pipeline for one image: (L, heads, T, T) attention -> the flows
    from the last layer's CLS node to every input token, normalised to sum 1."""
    import networkx as nx

    att = attentions.mean(axis=1)  # heads averaged, as in their notebooks
    res = att + np.eye(att.shape[1])[None]
    res = res / res.sum(axis=-1)[..., None]
    n_layers, length = res.shape[0], res.shape[-1]
    tokens = ["cls"] + [f"p{k}" for k in range(length - 1)]
    adj, labels = ref["get_adjmat"](mat=res, input_tokens=tokens)
    graph = nx.from_numpy_array(adj, create_using=nx.DiGraph())
    nx.set_edge_attributes(
        graph, {(u, v): d["weight"] for u, v, d in graph.edges(data=True)}, "capacity"
    )
    inputs = [k for k in labels if labels[k] < length]
    out = [f"L{n_layers}_0"]
    flows = ref["compute_node_flow"](graph, labels, inputs, out, length)
    u = labels[out[0]]
    return flows[u][(n_layers - 1) * length : n_layers * length]


def timed(fn: Callable[[], object]) -> Tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def part_a(git_dir: str, n_images: int) -> None:
    ref, commit = load_reference(git_dir)
    model = zoo.load_default_model()
    scenes = zoo.make_scenes(n_images, split="test", seed=0)
    x = zoo.preprocess(scenes.images)
    flow = AttentionFlow(model)
    adapter = ViTAdapter(model)
    print(f"(a) embedded default, samiraabnar/attention_flow @ {commit}")
    print("image | theirs s | ours s | speed-up | pearson r | max |diff| (normalised)")
    tt, to = [], []
    for i in range(n_images):
        xi = x[i : i + 1]
        t_ours, attr = timed(lambda: flow.attribute(xi))
        ours = patch_scores(attr, model).reshape(-1).double().numpy()
        with torch.no_grad(), record_attention(adapter) as rec:
            adapter.logits(xi)
        att = torch.stack([a[0] for a in rec.attentions]).double().numpy()
        t_theirs, theirs = timed(lambda: reference_flow(ref, att))
        # our flows from every input token (CLS included), normalised like theirs
        caps = flow_capacities(rec.attentions, "mean")[0].numpy()
        w = np.zeros(caps.shape[-1])
        w[0] = 1.0
        full = max_flows(caps, w, np.arange(caps.shape[-1]))
        diff = np.abs(full / full.sum() - theirs).max()
        r = np.corrcoef(ours, theirs[1:])[0, 1]
        tt.append(t_theirs)
        to.append(t_ours)
        print(
            f"{i} | {t_theirs:.2f} | {t_ours:.3f} | {t_theirs / t_ours:.0f}x | "
            f"{r:.6f} | {diff:.1e}"
        )
    print(
        f"median | {np.median(tt):.2f} | {np.median(to):.3f} | "
        f"{np.median(tt) / np.median(to):.0f}x"
    )


def vit_b(img_size: int = 224) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(
        "vit_base_patch16_224", pretrained=False, img_size=img_size
    ).eval()


def split_times(model: torch.nn.Module, x: torch.Tensor) -> Tuple[float, float]:
    """(forward s, total attribute s) for the batch."""
    adapter = ViTAdapter(model)

    def forward():
        with torch.no_grad(), record_attention(adapter):
            adapter.logits(x)

    t_fwd, _ = timed(forward)
    t_all, _ = timed(lambda: AttentionFlow(model).attribute(x))
    return t_fwd, t_all


def part_b() -> None:
    model = vit_b()
    print("\n(b) ViT-B/16 random weights, 224 px (196 patches, 12 blocks)")
    print("batch | total s | s per image | forward s | max-flow s per problem")
    for b in (1, 8):
        x = torch.randn(b, 3, 224, 224, generator=torch.Generator().manual_seed(b))
        t_fwd, t_all = split_times(model, x)
        per = (t_all - t_fwd) / (b * 196)
        print(f"{b} | {t_all:.2f} | {t_all / b:.2f} | {t_fwd:.2f} | {per * 1e3:.1f} ms")


def part_c() -> None:
    print("\n(c) growth with the number of patches (ViT-B/16, random weights)")
    print("img px | patches | edges | s per image | max-flow ms per problem")
    rows = []
    for size in (128, 224, 384):
        model = vit_b(size)
        n = (size // 16) ** 2
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
        t_fwd, t_all = split_times(model, x)
        edges = 12 * (n + 1) ** 2
        per = (t_all - t_fwd) / n
        rows.append((n, t_all, per))
        print(f"{size} | {n} | {edges} | {t_all:.2f} | {per * 1e3:.1f}")
    (n0, t0, p0), (n2, t2, p2) = rows[0], rows[-1]
    k = np.log(t2 / t0) / np.log(n2 / n0)
    kp = np.log(p2 / p0) / np.log(n2 / n0)
    print(
        f"fitted exponent 64 -> 576 patches: time per image ~ N^{k:.2f}, "
        f"per problem ~ N^{kp:.2f}"
    )


def part_d() -> None:
    model = vit_b()
    adapter = ViTAdapter(model)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), record_attention(adapter) as rec:
        adapter.logits(x)
    caps = flow_capacities(rec.attentions, "mean")[0].numpy()
    w = np.zeros(caps.shape[-1])
    w[0] = 1.0
    src = np.arange(1, caps.shape[-1])
    t1, one = timed(lambda: max_flows(caps, w, src))

    def two():
        halves = np.array_split(src, 2)
        with ThreadPoolExecutor(2) as ex:
            return np.concatenate(list(ex.map(lambda s: max_flows(caps, w, s), halves)))

    t2, both = timed(two)
    assert np.array_equal(one, both)
    print("\n(d) threads, one ViT-B image's 196 problems")
    print(f"1 thread {t1:.2f} s | 2 threads {t2:.2f} s | speed-up {t1 / t2:.2f}x")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", default=REFERENCE, help="git dir of the authors")
    ap.add_argument("--images", type=int, default=2, help="images for (a)")
    ap.add_argument("--parts", default="abcd")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, python {sys.version.split()[0]}")
    if "a" in args.parts:
        part_a(args.reference, args.images)
    if "b" in args.parts:
        part_b()
    if "c" in args.parts:
        part_c()
    if "d" in args.parts:
        part_d()
    return 0


if __name__ == "__main__":
    sys.exit(main())
