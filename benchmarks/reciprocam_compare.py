"""ViT-ReciproCAM (issue 29): side by side with openvino_xai, and its speed.

1. **Maps.** ``captum_vit.ViTReciproCAM`` against openvino_xai's ``ViTReciproCAM``
   on the same weights, per-image Pearson over the patch grid:

   - the OpenVINO IR path (``ov.convert_model`` of the timm model, openvino_xai's
     graph surgery, ``embed_scaling=False``): ``k=1`` (its default, the map entering
     the last block) against ``layer=-1``, ``k=2`` against ``layer=-2``;
   - openvino_xai's PyTorch path (``TorchViTReciproCAM``, a hook on the third-last
     norm = the last block's ``norm1``), one image at a time (it only runs with
     batch 1: the residual stream of the last block is not masked, and broadcasts).

2. **Speed** (one thread): ``ViTReciproCAM(model, layer)`` against its floor, the N
   forwards of the blocks it runs (``run_blocks(layer..L)`` and the head on
   ``B·N`` token maps, ``perturbations_per_eval`` = 64 at a time, run bare on the
   same shapes), and openvino_xai's IR time for the same images beside it.

Models: the embedded default (trained, 64 px, 8x8 patches, 6 blocks; held-out
scenes) and ``vit_base_patch16_224`` with random weights (random images).

Needs (benchmark only, not a captum-vit dependency)::

    pip install --no-deps openvino-xai==1.1.0 openvino==2024.6.0

(openvino-xai 1.1.0 imports ``openvino.runtime``, gone from OpenVINO 2025+.)

Usage::

    python benchmarks/reciprocam_compare.py --out benchmarks/results/reciprocam
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import numpy as np
import timm
import torch
from torch import Tensor

from captum_vit import ViTAdapter, ViTReciproCAM, patch_scores, zoo


def pearson(a: Tensor, b: Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    a, b = a - a.mean(), b - b.mean()
    den = float(a.norm() * b.norm())
    return float((a * b).sum()) / den if den > 0 else float("nan")


def clock(fn: Callable[[], Any], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def ov_method(model: torch.nn.Module, size: int, k: int):
    """openvino_xai's IR ViTReciproCAM for ``model``, compiled for one thread.

    f32 inference (the CPU plugin's default precision can be bf16). The IR is made
    by OpenVINO's PyTorch frontend without ``ov.convert_model``'s
    offline passes: those fold each LayerNorm's scale and bias into the next
    MatMul, and openvino_xai 1.1.0 finds the norm's output by its bias ``Add``
    (it raises "Number of normalization outputs > 1!" on a folded IR).
    """
    import openvino as ov
    from openvino.frontend import FrontEndManager
    from openvino.frontend.pytorch.ts_decoder import TorchScriptPythonDecoder
    from openvino_xai.methods.white_box.recipro_cam import ViTReciproCAM as OVR

    frontend = FrontEndManager().load_by_framework("pytorch")
    decoder = TorchScriptPythonDecoder(
        model, example_input=(torch.zeros(1, 3, size, size),)
    )
    ir = frontend.convert(frontend.load(decoder))
    ir.reshape([-1, 3, size, size])
    method = OVR(ir, embed_scaling=False, k=k, prepare_model=False)
    method.prepare_model(load_model=False)
    method._model_compiled = ov.Core().compile_model(
        method._model,
        "CPU",
        {"INFERENCE_NUM_THREADS": 1, "INFERENCE_PRECISION_HINT": "f32"},
    )
    return method


def ov_maps(method, x: Tensor, target: Tensor) -> Tensor:
    """(B, N) maps: one image per call (its mosaic is built from one image)."""
    out = []
    for i in range(x.shape[0]):
        sal = method.generate_saliency_map(x[i : i + 1].numpy())  # (1, C, h, w)
        out.append(torch.from_numpy(np.asarray(sal))[0, int(target[i])].flatten())
    return torch.stack(out)


def torch_ovxai_maps(model: torch.nn.Module, x: Tensor, target: Tensor) -> Tensor:
    from openvino_xai.methods.white_box.torch import TorchViTReciproCAM

    size = x.shape[-1]
    method = TorchViTReciproCAM(model, embed_scaling=False, input_size=(size, size))
    out = []
    for i in range(x.shape[0]):
        sal = method.generate_saliency_map(x[i : i + 1].numpy())  # (1, C, h, w)
        out.append(torch.from_numpy(np.asarray(sal))[0, int(target[i])].flatten())
    return torch.stack(out)


def floor(model: torch.nn.Module, x: Tensor, layer: int, chunk: int = 64):
    """The bare evaluations ViT-ReciproCAM needs: one forward to block ``layer`` for
    the batch, then blocks ``layer..L`` and the head on ``B·N`` token maps."""
    adapter = ViTAdapter(model)
    b, n = x.shape[0], adapter.num_patches
    layer = layer % adapter.num_layers
    with torch.no_grad():
        z = adapter.run_blocks(adapter.embed(x), 0, layer)
    maps = z[:1].expand(chunk, -1, -1).clone()

    def run() -> None:
        with torch.no_grad():
            adapter.run_blocks(adapter.embed(x), 0, layer)
            for lo in range(0, b * n, chunk):
                m = min(chunk, b * n - lo)
                adapter.head(adapter.run_blocks(maps[:m], layer))

    return run


def timed(fn: Callable[[], Any], repeats: int):
    """(best seconds, the result of the last call)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def compare(name: str, model, x: Tensor, repeats: int, settings) -> Dict[str, Any]:
    """Speed at each (layer, batch) of ``settings``; Pearson from the maps of the
    timed calls (the largest batch of each layer)."""
    size = x.shape[-1]
    with torch.no_grad():
        target = model(x).argmax(1)
    rows: Dict[str, Any] = {"model": name, "pearson": {}, "speed": []}
    for layer, batches in settings:
        k = -layer
        ovm = ov_method(model, size, k)
        method = ViTReciproCAM(model, layer=layer)
        for b in batches:
            xb, tb = x[:b], target[:b]
            t_ours, ours = timed(lambda: method.attribute(xb, target=tb), repeats)
            t_floor = clock(floor(model, xb, layer), repeats)
            t_ov, ref = timed(lambda: ov_maps(ovm, xb, tb), repeats)
            rows["speed"].append(
                dict(
                    layer=layer,
                    batch=b,
                    ours_s=t_ours,
                    floor_s=t_floor,
                    ratio=t_ours / t_floor,
                    openvino_xai_ir_s=t_ov,
                )
            )
            print(name, rows["speed"][-1], flush=True)
        ours = patch_scores(ours, model).flatten(1)
        rows["pearson"][f"layer={layer} vs openvino_xai IR k={k}"] = [
            pearson(ours[i], ref[i]) for i in range(b)
        ]
        if layer == -1:
            tref = torch_ovxai_maps(model, xb, tb)
            rows["pearson"]["layer=-1 vs openvino_xai TorchViTReciproCAM"] = [
                pearson(ours[i], tref[i]) for i in range(b)
            ]
    for key, values in rows["pearson"].items():
        print(name, key, "min %.6f" % min(values), flush=True)
    return rows


def main(argv: List[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", nargs="+", default=["embedded", "vit_base"])
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = []
    for name in args.models:
        if name == "embedded":
            model = zoo.load_default_model().eval()
            x, _ = zoo.load_default_scenes(n=8, seed=0)
            repeats, settings = 3, [(-1, (1, 8)), (-2, (1, 8))]
        else:
            torch.manual_seed(0)
            model = timm.create_model("vit_base_patch16_224", pretrained=False).eval()
            x = torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(0))
            # layer=-1 at batch 1 only: ViT-B's B·N = 1568 variations cost minutes
            repeats, settings = 1, [(-1, (1,)), (-2, (1, 8))]
        results.append(compare(name, model, x, repeats, settings))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
