"""Explain a whole folder of images with several methods, resumably, on many GPUs.

:func:`run_explain` is what ``captum-vit explain --data DIR --out OUT`` runs. For every
image it saves the maps as arrays, ``OUT/maps/<relative path>.npz`` holding one
(H, W) float32 map per method (the attribution summed over channels, at the model's
input resolution, after its resize and crop), and writes ``OUT/manifest.csv`` with one
row per (file, method): ``file, target, method, seconds, status`` (``ok`` or
``skipped: <reason>`` for an unreadable image). With ``png=True`` it also draws
``OUT/png/<relative path>.png`` (the image and every method's map).

Like :func:`captum_vit.evaluate.run_evaluation` it works in fixed chunks recorded one
line per (method, chunk) in per-rank records files, so a killed run restarted with the
same command, with any number of processes, skips finished work; under ``torchrun``
the chunks are split over the ranks and rank 0 writes the manifest.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import numpy as np
from torch import Tensor

from ._jobs import (
    RecordStore,
    build_methods,
    check_amp,
    check_count,
    check_job,
    chunk_inputs,
    chunks_of,
    image_seed,
    plan,
    run_chunks,
    timed_explain,
)
from .data import ItemDataset
from .distributed import DistContext
from .methods import Method, resolve_methods

#: Columns of ``manifest.csv``.
MANIFEST_COLUMNS = ["file", "target", "method", "seconds", "status"]


def map_path(out: Path, key: str, suffix: str = ".npz", folder: str = "maps") -> Path:
    """Where the output of the image ``key`` goes (its relative path, new suffix)."""
    rel = Path(key)
    if rel.is_absolute() or ".." in rel.parts:
        rel = Path(rel.name)
    return out / folder / rel.with_suffix(suffix)


def read_maps(path: Union[str, Path]) -> Dict[str, np.ndarray]:
    """The ``{method: (H, W) map}`` arrays of one image's ``.npz`` file."""
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _save_maps(path: Path, maps: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Add ``maps`` to the image's file (keeping methods saved by earlier runs);
    written to a temporary file first, so an interruption never leaves half a file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    merged = read_maps(path) if path.exists() else {}
    merged.update(maps)
    buf = io.BytesIO()
    np.savez_compressed(buf, **merged)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)
    return merged


def run_explain(
    out_dir: str,
    methods: Optional[List[str]] = None,
    *,
    model: Any,
    dataset: ItemDataset,
    ctx: Optional[DistContext] = None,
    target: Union[str, int] = "pred",
    batch_size: int = 8,
    tis_masks: int = 1024,
    rise_masks: int = 4000,
    n_steps: int = 20,
    amp: Optional[str] = None,
    seed: int = 1234,
    png: bool = False,
    workers: int = 0,
    show_progress: bool = False,
    log: Optional[Callable[[str], None]] = None,
) -> Optional[List[Dict[str, str]]]:
    """Explain every image of ``dataset`` with each method; save maps and a manifest.

    Args:
        out_dir: Output folder (created; must be writable).
        methods: Method names (default: all).
        model: A :class:`captum_vit.models.LoadedModel` on ``ctx.device``.
        dataset: A :class:`captum_vit.data.ItemDataset` preprocessed for ``model``.
        ctx: The process's :class:`captum_vit.distributed.DistContext`.
        target: ``"pred"`` (the predicted class), ``"label"`` or a class index.
        batch_size: Images per batch and per record (the unit of resuming).
        tis_masks: TIS ``n_masks``.
        rise_masks: RISE ``n_masks``.
        n_steps: Integrated Gradients steps.
        amp: ``"bf16"``/``"fp16"``: autocast for perturbation methods' forwards.
        seed: Base of the per-image seeds.
        png: Also draw one PNG per image.
        workers: DataLoader worker processes.
        show_progress: A tqdm bar over the images on rank 0.
        log: Receives one line per finished (method, chunk) and per skip.

    Returns:
        On rank 0 the manifest rows; None on other ranks.

    Raises:
        ValueError: bad settings, labels missing or out of range, more processes
            than images, or records of other settings in ``out_dir``.

    Examples::

        >>> from captum_vit.models import load_model
        >>> from captum_vit.data import ImageDataset
        >>> loaded = load_model("default")
        >>> data = ImageDataset.from_folder("photos/", loaded.preprocessing)
        >>> rows = run_explain("out/maps", ["genatt"], model=loaded, dataset=data)
    """
    from .evaluate import writable_dir

    ctx = ctx or DistContext()
    device = ctx.device
    check_amp(device, amp)
    chosen: List[Method] = resolve_methods(methods)
    check_count("batch_size", batch_size)
    check_count("tis_masks", tis_masks)
    check_count("rise_masks", rise_masks)
    check_job(dataset, model.num_classes, target, ctx.world_size)
    out = writable_dir(out_dir)
    settings = {
        "command": "explain",
        "model": model.describe(),
        "data": dataset.describe(),
        "target": target,
        "batch_size": batch_size,
        "tis_masks": tis_masks,
        "rise_masks": rise_masks,
        "n_steps": n_steps,
        "amp": amp,
        "seed": seed,
    }
    options = dict(
        tis_masks=tis_masks, rise_masks=rise_masks, n_steps=n_steps, show_progress=False
    )
    built = build_methods(chosen, model, options, ctx.is_main, log)
    by_name = {m.name: m for m in chosen}
    store = RecordStore(out, ctx.rank)
    work, reused, total = plan(
        ctx, store, settings, list(built), chunks_of(len(dataset), batch_size)
    )
    if reused and ctx.is_main:
        (log or print)(
            f"resuming: {reused} of {total} (method, image) maps already done in {out}"
        )
    job = _ExplainJob(
        built, by_name, model, target, amp, seed, png, settings, store, out
    )
    run_chunks(
        ctx,
        dataset,
        work,
        workers,
        "explain",
        show_progress,
        lambda batch, start, positions, left, bar: job.run(batch, start, left, log),
    )
    if not ctx.is_main:
        return None
    return write_manifest(out, list(built), settings)


@dataclass
class _ExplainJob:
    """What stays the same for every chunk of one explain run."""

    built: Dict[str, Callable[..., Tensor]]
    by_name: Dict[str, Method]
    loaded: Any
    target: Union[str, int]
    amp: Optional[str]
    seed: int
    png: bool
    settings: dict
    store: RecordStore
    out: Path

    def run(self, batch: Dict[str, Any], start: int, left: List[str], log) -> None:
        """Run the pending methods on one chunk, save the maps, append records."""
        _, keys, skipped, inputs, t = chunk_inputs(
            batch, self.loaded.model, self.target, log
        )
        seeds = [image_seed(self.seed, k) for k in keys]
        maps: Dict[str, np.ndarray] = {}
        rows: Dict[str, List[dict]] = {}
        for name in left:
            seconds = float("nan")
            if keys:
                attr, seconds = timed_explain(
                    self.built[name], self.by_name[name], inputs, t, seeds, self.amp
                )
                seconds /= len(keys)
                maps[name] = attr.detach().float().sum(1).cpu().numpy()
            rows[name] = [
                {"file": k, "target": int(ti), "seconds": seconds, "status": "ok"}
                for k, ti in zip(keys, t.tolist())
            ] + [
                {"file": k, "target": None, "seconds": None, "status": f"skipped: {e}"}
                for k, e in skipped.items()
            ]
        for i, key in enumerate(keys):
            merged = _save_maps(
                map_path(self.out, key), {name: m[i] for name, m in maps.items()}
            )
            if self.png:
                _draw(
                    self.out,
                    key,
                    inputs[i],
                    merged,
                    self.by_name,
                    self.loaded,
                    int(t[i]),
                )
        for name in left:
            self.store.append(
                {
                    "method": name,
                    "start": start,
                    "rows": rows[name],
                    "settings": self.settings,
                }
            )
            if log is not None:
                log(f"{name}: images {start}-{start + len(batch['ok']) - 1} done")


def _draw(out, key, x, maps, by_name, loaded, target) -> None:
    from .viz import comparison_grid

    path = map_path(out, key, ".png", "png")
    path.parent.mkdir(parents=True, exist_ok=True)
    image01 = loaded.preprocessing.denormalise(x[None].float().cpu())
    names = [n for n in by_name if n in maps] + [n for n in maps if n not in by_name]
    comparison_grid(
        image01,
        {n: maps[n][None] for n in names},
        path=str(path),
        row_titles=[f"{Path(key).name}\n→ {loaded.class_names[target]}"],
        signed={n: by_name[n].signed for n in names if n in by_name},
    )


def write_manifest(
    out: Path, method_names: List[str], settings: dict
) -> List[Dict[str, str]]:
    """Merge every rank's records into ``manifest.csv`` (sorted by file, then method
    in the given order) and return its rows."""
    records = [r for r in RecordStore(out).read() if r.get("settings") == settings]
    seen, rows = set(), []
    order = {m: i for i, m in enumerate(method_names)}
    for r in records:
        if (r["method"], r["start"]) in seen or r["method"] not in order:
            continue
        seen.add((r["method"], r["start"]))
        for row in r["rows"]:
            rows.append(
                {
                    "file": row["file"],
                    "target": "" if row["target"] is None else str(row["target"]),
                    "method": r["method"],
                    "seconds": (
                        "" if row["seconds"] is None else f"{row['seconds']:.6g}"
                    ),
                    "status": row["status"],
                }
            )
    rows.sort(key=lambda row: (row["file"], order[row["method"]]))
    with (out / "manifest.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    return rows
