"""Explain images with several methods: a few into one picture, or a whole folder,
resumably, on many GPUs.

:func:`explain_few` is what ``captum-vit explain`` runs on image files or a few
embedded scenes: one comparison grid, ``OUT/explain_grid.png``.

:func:`run_explain` is what ``captum-vit explain --data DIR --out OUT`` runs. For every
image it saves the maps as arrays, ``OUT/maps/<relative path>.npz`` holding one
(H, W) float32 map per method (the attribution summed over channels, at the model's
input resolution, after its resize and crop), and writes ``OUT/manifest.csv`` with one
row per (file, method): ``file, target, method, seconds, status`` (``ok``, or
``skipped: <reason>`` for an unreadable image or a method the model cannot serve).
With ``png=True`` it also draws ``OUT/png/<relative path>.png`` (the image, its true
class when the data has labels, and every method's map). ``OUT/index.html`` is the
gallery of every explained image and method (:func:`write_gallery`; ``index-2.html``,
... beyond :data:`GALLERY_PAGE` images), its pictures in ``OUT/html/``; the few
images of :func:`explain_few` get one self-contained ``OUT/index.html``.

Output names keep the whole relative path, extension included (``c0/x.jpg`` ->
``maps/c0/x.jpg.npz``, ``png/c0/x.jpg.png``), so every input file has its own outputs
(:func:`map_path`). Folders written by versions that dropped the extension (where
``x.jpg`` and ``x.png`` shared one file) are refused rather than resumed.

A map that is constant over its image is a warning naming the likely cause (for
example a model whose output does not depend on the input: torchvision's
random-weight ``vit_b_16`` has a zero-initialised head).

Like :func:`captum_vit.evaluate.run_evaluation` it works in fixed chunks recorded one
line per (method, chunk) in per-rank records files, so a killed run restarted with the
same command, with any number of processes, skips finished work; under ``torchrun``
the chunks are split over the ranks and rank 0 writes the manifest.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from torch import Tensor

from ._guard import check_amp
from ._jobs import (
    RecordStore,
    SettingsMismatch,
    check_job,
    chunk_inputs,
    chunks_of,
    image_seed,
    note,
    plan,
    run_chunks,
    timed_explain,
)
from ._utils import check_count
from .data import ItemDataset
from .distributed import DistContext
from .methods import (
    DEFAULT_OPTIONS,
    Method,
    MethodOptions,
    TrainedParts,
    build_all,
    resolve_methods,
)

#: Columns of ``manifest.csv``.
MANIFEST_COLUMNS = ["file", "target", "method", "seconds", "status"]

#: How output files are named (recorded in the settings of every record): the
#: image's relative path with its extension, plus the output's suffix.
OUTPUT_NAMES = "relative path + extension + suffix"


class MethodsUnavailable(ValueError):
    """No requested method can run for the model (each one's reason in the text)."""


def map_path(out: Path, key: str, suffix: str = ".npz", folder: str = "maps") -> Path:
    """Where the output of the image ``key`` goes: ``out/folder/<key><suffix>``.

    The key keeps its extension (``c0/x.jpg`` -> ``maps/c0/x.jpg.npz``), so two
    images that differ only in their extension never share an output file.
    """
    rel = Path(key)
    if rel.is_absolute() or ".." in rel.parts:
        rel = Path(rel.name)
    return out / folder / rel.parent / (rel.name + suffix)


def build_available(
    methods: Sequence[Method], loaded: Any, options: MethodOptions = DEFAULT_OPTIONS
) -> Tuple[Dict[str, Callable[..., Tensor]], Dict[str, str]]:
    """Build every method for a loaded model (:func:`captum_vit.methods.build_all`),
    refusing when none can run.

    Args:
        methods: The requested methods.
        loaded: A :class:`captum_vit.models.LoadedModel` (its ``extras`` hold
            trained parts such as ViT Shapley's explainer).
        options: The methods' knobs.

    Returns:
        ``(built, unavailable)``: ``{name: explain}`` and ``{name: reason}`` of the
        methods the model cannot serve (:class:`~captum_vit.methods.
        MethodUnavailable`).

    Raises:
        MethodsUnavailable: no requested method can run; the text gives each
            method's reason.
    """
    trained = TrainedParts.from_mapping(loaded.extras)
    built, unavailable = build_all(methods, loaded.model, options, trained)
    if methods and not built:
        raise MethodsUnavailable(
            "--method: no requested method can run for this model: "
            + "; ".join(unavailable.values())
        )
    return built, unavailable


def _is_constant(m: np.ndarray) -> bool:
    """Whether a map has the same value everywhere (up to float32 rounding)."""
    lo, hi = float(np.min(m)), float(np.max(m))
    return hi - lo <= 1e-6 * max(abs(lo), abs(hi))


def model_ignores_input(model: Any, x: Tensor) -> bool:
    """Whether the model gives ``x`` (one image) and a blank image the same logits."""
    import torch

    from .vit import logits_of

    with torch.no_grad():
        logits = logits_of(model(torch.stack([x, torch.zeros_like(x)]))).float()
    return bool(torch.allclose(logits[0], logits[1], rtol=1e-5, atol=1e-6))


def constant_map_warnings(
    maps: Dict[str, np.ndarray],
    names: Sequence[str],
    ignores_input: Callable[[int], bool],
    already: Optional[set] = None,
) -> List[str]:
    """One warning line per method with a map that is constant over its image.

    Args:
        maps: ``{method: (B, H, W) maps}`` of one batch.
        names: The B images' names.
        ignores_input: ``ignores_input(i)``: whether the model's output for image
            ``i`` does not depend on the input (called only for a constant map, at
            most once per image: methods constant on the same image share it).
        already: Methods warned about before (skipped; the new ones are added), so
            a long run warns once per method.

    Returns:
        ``"warning: <method>: the map of image '<name>' is constant (all <v>): <the
        likely cause>"`` lines.
    """
    lines: List[str] = []
    blind: Dict[int, bool] = {}  # ignores_input(i): one forward pass per image
    for method, batch in maps.items():
        if already is not None and method in already:
            continue
        const = [i for i in range(len(batch)) if _is_constant(batch[i])]
        if not const:
            continue
        i = const[0]
        more = f" (and {len(const) - 1} more of {len(batch)})" if len(const) > 1 else ""
        if i not in blind:
            blind[i] = ignores_input(i)
        if blind[i]:
            cause = (
                "the model's output does not depend on the input (a blank image gets "
                "the same logits): a zero-initialised head, as torchvision's "
                "random-weight vit_b_16 has?"
            )
        else:
            cause = (
                "the explained class's score may not depend on what this method "
                "reads or perturbs (e.g. uniform attention in random weights)"
            )
        value = float(np.asarray(batch[i]).flat[0])
        lines.append(
            f"warning: {method}: the map of image {names[i]!r} is constant "
            f"(all {value:.4g}){more}: {cause}"
        )
        if already is not None:
            already.add(method)
    return lines


def folder_class_names(dataset: Any) -> Dict[int, str]:
    """``{class index: folder name}`` of an ImageFolder tree's images.

    Read from the items' keys (``<class folder>/.../<file>``) and labels; several
    folders mapped to one index (a class map) are joined with ``/``.
    """
    names: Dict[int, List[str]] = {}
    for key, label in zip(dataset.keys(), dataset.labels()):
        parts = Path(key).parts
        if label >= 0 and len(parts) > 1 and parts[0] not in names.get(label, []):
            names.setdefault(label, []).append(parts[0])
    return {k: "/".join(sorted(v)) for k, v in names.items()}


def display_names(model_names: Sequence[str], data_names: Dict[int, str]) -> List[str]:
    """Class names for pictures: the model's own names, except that a generic
    ``"class i"`` gives way to the data's name for class ``i`` when it is known."""
    return [
        data_names.get(i, n) if n == f"class {i}" else n
        for i, n in enumerate(model_names)
    ]


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


def explain_few(
    out_dir: str,
    methods: Sequence[Method],
    *,
    model: Any,
    images: Sequence[str] = (),
    n: Optional[int] = None,
    target: Union[str, int] = "pred",
    options: MethodOptions = DEFAULT_OPTIONS,
    amp: Optional[str] = None,
    seed: int = 1234,
) -> Path:
    """Explain image files, or a few embedded scenes, with each method into one
    comparison grid, ``out_dir/explain_grid.png``; say on screen what it does.

    Prints each image's top classes and the explained one, one line per method
    (its seconds, or why it is skipped), and writes constant-map warnings to
    stderr.

    Args:
        out_dir: Output folder (created; must be writable).
        methods: The methods, in the grid's order.
        model: A :class:`captum_vit.models.LoadedModel`.
        images: Image files (resized to the model's input); none: the scenes.
        n: Embedded scenes to explain without ``images`` (default 4).
        target: ``"pred"`` (the predicted class), ``"label"`` (scenes only) or a
            class index.
        options: The methods' knobs.
        amp: ``"bf16"``/``"fp16"``: autocast for perturbation methods' forwards.
        seed: Base of the per-image seeds.

    Returns:
        The grid's path.

    Raises:
        MethodsUnavailable: no requested method can run for the model.
        ValueError: ``target="label"`` with image files, a class out of range, an
            unreadable file (:class:`captum_vit.data.DataError`).
        OSError: ``out_dir`` cannot be created or written.
    """
    import torch

    from .data import SceneDataset, read_image
    from .evaluate import format_seconds, writable_dir
    from .vit import logits_of
    from .viz import comparison_grid, image_title

    device = model.device
    check_amp(device, amp)
    out = writable_dir(out_dir)
    built, unavailable = build_available(methods, model, options)
    pre = model.preprocessing
    size = model.input_size
    if images:
        xs, labels = [], []
        for p in images:
            im = read_image(p)
            if (im.height, im.width) != size:
                print(
                    f"note: {p} is {im.width}x{im.height}; resized to the model's "
                    f"input {size[1]}x{size[0]}"
                )
            xs.append(pre(im).float())
            labels.append(Path(p).name)
        inputs = torch.stack(xs)
    else:
        default = model.takes_scenes
        scenes = SceneDataset(n or 4, pre, seed=0, default_model=default)
        if not default:
            w, h = size[1], size[0]
            print(f"note: embedded scenes resized to the model's input {w}x{h}")
        items = [scenes[i] for i in range(len(scenes))]
        inputs = torch.stack([it["image"] for it in items])
        from .zoo import CLASS_NAMES

        labels = [
            f"scene {i} ({CLASS_NAMES[it['label']]})" for i, it in enumerate(items)
        ]
    inputs = inputs.to(device)
    with torch.no_grad():
        probs = logits_of(model.model(inputs)).softmax(-1)
    pred = probs.argmax(-1)
    names = model.class_names
    if target == "pred":
        t = pred
    elif target == "label":
        if images:
            raise ValueError("--target label: image files have no labels; use --data")
        t = torch.tensor([it["label"] for it in items], device=device)
    else:
        if int(target) >= len(names):
            raise ValueError(
                f"--target: class {int(target)} out of range [0, {len(names)})"
            )
        t = torch.full_like(pred, int(target))
    for i, label in enumerate(labels):
        top = probs[i].topk(min(3, probs.shape[1]))
        tops = ", ".join(
            f"{names[int(c)]} {float(p):.2f}" for p, c in zip(top.values, top.indices)
        )
        print(f"{label}: top: {tops}; explaining '{names[int(t[i])]}'")
    maps: Dict[str, Tensor] = {}
    signed: Dict[str, bool] = {}
    seeds = [image_seed(seed, lab) for lab in labels]
    for method in methods:
        if method.name in unavailable:
            print(f"{method.name}: skipped ({unavailable[method.name]})")
            continue
        attr, dt = timed_explain(built[method.name], method, inputs, t, seeds, amp)
        maps[method.name] = attr.detach().float().cpu()
        signed[method.name] = method.signed
        print(
            f"{method.name}: {format_seconds(dt)} s "
            f"({format_seconds(dt / len(inputs))} s/image)"
        )
    for line in constant_map_warnings(
        {name: m.sum(1).numpy() for name, m in maps.items()},
        labels,
        lambda i: model_ignores_input(model.model, inputs[i]),
    ):
        note(line)
    path = out / "explain_grid.png"
    titles = [image_title(lab, names, int(t[i])) for i, lab in enumerate(labels)]
    images01 = pre.denormalise(inputs.float().cpu())
    comparison_grid(images01, maps, path=str(path), row_titles=titles, signed=signed)
    print(f"wrote {path}")
    page = write_few_gallery(
        out,
        images01,
        {name: m.sum(1).numpy() for name, m in maps.items()},
        signed,
        [
            [f"explained: {names[int(t[i])]}"]
            + (
                [f"predicted: {names[int(pred[i])]} (p = {float(probs[i].max()):.2f})"]
                if target != "pred"
                else [f"p = {float(probs[i].max()):.2f}"]
            )
            for i in range(len(labels))
        ],
        labels,
    )
    print(f"wrote {page} (open it in a browser)")
    return path


#: Images per page of the ``explain --data`` gallery (``index.html``,
#: ``index-2.html``, ...).
GALLERY_PAGE = 200


def gallery_page_name(i: int) -> str:
    """The file of the gallery's page ``i`` (from 0): ``index.html``, then
    ``index-2.html``, ..."""
    return "index.html" if i == 0 else f"index-{i + 1}.html"


def write_few_gallery(
    out: Path,
    images01: Tensor,
    maps: Dict[str, np.ndarray],
    signed: Dict[str, bool],
    lines: Sequence[Sequence[str]],
    titles: Sequence[str],
) -> Path:
    """``out/index.html``: one self-contained page (pictures embedded) with every
    image and every method's map over it.

    Args:
        out: The output folder.
        images01: (B, 3, H, W) images in [0, 1].
        maps: ``{method: (B, H, W) maps}``.
        signed: ``{method: whether its maps are signed}``.
        lines: Per image, the texts under it (explained class, prediction).
        titles: Per image, its name.
    """
    from ._html import image_card, map_card, render, to_uint8, write_text

    rows = []
    for i, title in enumerate(titles):
        image = to_uint8(images01[i].numpy())
        cards = [image_card(title, image, lines[i])]
        cards += [
            map_card(name, image, m[i], signed.get(name, bool((m[i] < 0).any())))
            for name, m in maps.items()
        ]
        rows.append({"key": title, "cards": cards})
    path = Path(out) / gallery_page_name(0)
    write_text(
        path,
        render(
            "gallery.html.j2",
            title="captum-vit explain",
            intro=f"{len(rows)} image(s), {len(maps)} method(s); the same maps as "
            "`explain_grid.png`.",
            notes=[],
            rows=rows,
            pages=[path.name],
            page=1,
        ),
    )
    return path


def write_gallery(
    out: Path,
    dataset: ItemDataset,
    method_names: Sequence[str],
    rows: Sequence[Dict[str, str]],
    class_names: Sequence[str],
    per_page: int = GALLERY_PAGE,
) -> List[Path]:
    """The gallery of an ``explain --data`` folder: ``out/index.html`` (and
    ``index-2.html``, ... beyond ``per_page`` images), every explained image with
    every method's map over it. The pictures are PNG files in ``out/html/`` (drawn
    again only when their map is newer), so large folders make light pages.

    Args:
        out: The output folder (its ``maps/`` are read).
        dataset: The explained data (its images are read again for the pictures).
        method_names: The methods, in the order of the pictures.
        rows: The manifest's rows (the explained class of each image).
        class_names: Names of the model's classes.
        per_page: Images per page.

    Returns:
        The pages' paths.
    """
    from ._html import (
        class_label,
        colour_range,
        legend,
        method_signed,
        overlay_rgb,
        picture,
        png_bytes,
        render,
        to_uint8,
        write_bytes,
        write_text,
    )
    from ._html import Card

    target = {r["file"]: r["target"] for r in rows if r["status"] == "ok"}
    out = Path(out)
    items = []
    keys = dataset.keys()
    labels = dataset.labels()
    for pos, key in enumerate(keys):
        if key not in target:
            continue
        npz = map_path(out, key)
        if not npz.is_file():
            continue
        items.append((pos, key, npz))
    pages = [items[i : i + per_page] for i in range(0, len(items), per_page)] or [[]]
    names = [gallery_page_name(i) for i in range(len(pages))]
    written = []
    for p, chunk in enumerate(pages):
        gallery_rows = []
        for pos, key, npz in chunk:
            maps = read_maps(npz)
            folder = map_path(out, key, "", "html")
            stamp = npz.stat().st_mtime
            image = None
            cards = []
            img_path = folder / "image.png"
            order = [m for m in method_names if m in maps]
            if not img_path.is_file() or img_path.stat().st_mtime < stamp:
                item = dataset[pos]
                if not item.get("ok", True):
                    continue
                pre = getattr(dataset, "preprocessing", None)
                x = item["image"][None].float()
                x01 = pre.denormalise(x)[0] if pre is not None else x[0]
                image = to_uint8(x01.numpy())
                write_bytes(img_path, png_bytes(picture(image)))
            lines = []
            if labels[pos] >= 0:
                lines.append(f"true: {class_label(class_names, labels[pos])}")
            t = target[key]
            lines.append(
                "explained: " + class_label(class_names, int(t) if t != "" else None)
            )
            rel = img_path.relative_to(out).as_posix()
            cards.append(Card(title=key, src=rel, legend=None, lines=lines))
            for m in order:
                att = np.asarray(maps[m], dtype=np.float32)
                signed = method_signed(m, [att])
                png = folder / f"{m}.png"
                if image is not None or not png.is_file():
                    if image is None:
                        from PIL import Image

                        image = np.asarray(Image.open(img_path).convert("RGB"))
                        if image.shape[:2] != att.shape:
                            image = np.asarray(
                                Image.fromarray(image).resize(
                                    att.shape[::-1], Image.BILINEAR
                                )
                            )
                    write_bytes(png, png_bytes(overlay_rgb(image, att, signed)))
                lo, hi = colour_range(att, signed)
                cards.append(
                    Card(
                        title=m,
                        src=png.relative_to(out).as_posix(),
                        legend=legend(signed, lo, hi),
                        lines=[],
                    )
                )
            gallery_rows.append({"key": key, "cards": cards})
        path = out / names[p]
        write_text(
            path,
            render(
                "gallery.html.j2",
                title="captum-vit explain",
                intro=f"{len(items)} image(s) of `{dataset.describe().get('name')}`, "
                f"{len(method_names)} method(s); maps in `maps/`, pictures in "
                "`html/`.",
                notes=[f"{per_page} images per page."] if len(pages) > 1 else [],
                rows=gallery_rows,
                pages=names,
                page=p + 1,
            ),
        )
        written.append(path)
    return written


def run_explain(
    out_dir: str,
    methods: Optional[List[str]] = None,
    *,
    model: Any,
    dataset: ItemDataset,
    ctx: Optional[DistContext] = None,
    target: Union[str, int] = "pred",
    batch_size: int = 8,
    options: MethodOptions = DEFAULT_OPTIONS,
    amp: Optional[str] = None,
    seed: int = 1234,
    png: bool = False,
    workers: int = 0,
    show_progress: bool = False,
    log: Optional[Callable[[str], None]] = None,
    class_names: Optional[Sequence[str]] = None,
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
        options: The methods' knobs (TIS and RISE masks, IG steps, ...; their
            progress bars stay off).
        amp: ``"bf16"``/``"fp16"``: autocast for perturbation methods' forwards.
        seed: Base of the per-image seeds.
        png: Also draw one PNG per image.
        workers: DataLoader worker processes.
        show_progress: A tqdm bar over the images on rank 0.
        log: Receives one line per finished (method, chunk), per skip and per
            warning (a constant map).
        class_names: Names of the model's classes for the pictures (default: the
            model's; see :func:`display_names`).

    Returns:
        On rank 0 the manifest rows; None on other ranks.

    Raises:
        MethodsUnavailable: no requested method can run for the model.
        ValueError: bad settings, labels missing or out of range, more processes
            than images, or records of other settings (or of the older output
            names) in ``out_dir``.

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
    options = replace(options, show_progress=False)  # one bar, over the images
    check_job(dataset, model.num_classes, target, ctx.world_size)
    out = writable_dir(out_dir)
    settings = {
        "command": "explain",
        "model": model.describe(),
        "data": dataset.describe(),
        "target": target,
        "batch_size": batch_size,
        "tis_masks": options.tis_masks,
        "rise_masks": options.rise_masks,
        "n_steps": options.n_steps,
        "amp": amp,
        "seed": seed,
        "output_names": OUTPUT_NAMES,
        **_other_knobs(options),
    }
    try:
        built, unavailable = build_available(chosen, model, options)
    except MethodsUnavailable as exc:
        exc.all_ranks = True  # type: ignore[attr-defined]  # the same on every rank
        raise
    if ctx.is_main:
        for name, why in unavailable.items():
            (log or print)(f"{name}: skipped ({why})")
    by_name = {m.name: m for m in chosen}
    store = RecordStore(out, ctx.rank)
    ctx.agree(lambda: _check_output_names(store), (SettingsMismatch,))
    work, reused, total = plan(
        ctx, store, settings, list(built), chunks_of(len(dataset), batch_size)
    )
    if reused and ctx.is_main:
        (log or print)(
            f"resuming: {reused} of {total} (method, image) maps already done in {out}"
        )
    names = list(class_names) if class_names is not None else model.class_names
    job = _ExplainJob(
        built, by_name, model, target, amp, seed, png, settings, store, out, names
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
    rows = write_manifest(
        out, [m.name for m in chosen], settings, unavailable, dataset.keys()
    )
    write_gallery(out, dataset, [m.name for m in chosen], rows, names)
    return rows


def _other_knobs(options: MethodOptions) -> Dict[str, Any]:
    """The knobs beyond TIS and RISE masks and IG steps that change the maps, as
    recorded: only those off their defaults, so the settings of a default run are
    those of earlier versions (and their folders resume)."""
    out: Dict[str, Any] = {}
    names = ("vitcx_fill", "rise_fill", "input_mean", "input_std")
    for name in names + ("attnlrp_lin_gamma", "attnlrp_conv_gamma"):
        value = getattr(options, name)
        if value != getattr(DEFAULT_OPTIONS, name):
            if isinstance(value, (int, float)):
                out[name] = float(value)
                continue
            out[name] = value if isinstance(value, str) else [float(v) for v in value]
    return out


def _check_output_names(store: RecordStore) -> None:
    """Refuse a folder of explain records written with the older output names
    (``maps/c0/x.npz`` for ``c0/x.jpg``): x.jpg and x.png shared one file there, so
    its maps cannot be trusted, and resuming would mix two naming schemes."""
    for rec in store.read():
        settings = rec.get("settings")
        if (
            isinstance(settings, dict)
            and settings.get("command") == "explain"
            and "output_names" not in settings
        ):
            raise SettingsMismatch(
                f"--out {str(store.out)!r} holds maps of an older captum-vit, named "
                "without the image's extension (maps/c0/x.npz for c0/x.jpg; x.jpg and "
                "x.png overwrote each other); use another --out (maps are now named "
                "maps/c0/x.jpg.npz)"
            )


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
    class_names: List[str]
    warned: set = field(default_factory=set)

    def run(self, batch: Dict[str, Any], start: int, left: List[str], log) -> None:
        """Run the pending methods on one chunk, save the maps, append records."""
        idx, keys, skipped, inputs, t = chunk_inputs(
            batch, self.loaded.model, self.target, log
        )
        labels = batch["label"][idx].tolist() if keys else []
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
        for line in constant_map_warnings(
            maps,
            keys,
            lambda i: model_ignores_input(self.loaded.model, inputs[i]),
            self.warned,
        ):
            (log or note)(line)
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
                    self.class_names,
                    int(t[i]),
                    int(labels[i]),
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


def _draw(
    out: Path,
    key: str,
    x: Tensor,
    maps: Dict[str, np.ndarray],
    by_name: Dict[str, Method],
    loaded: Any,
    class_names: Sequence[str],
    target: int,
    label: int,
) -> None:
    """One image's picture: the image (titled with its file, its true class when
    known and the explained class) and every method's map."""
    from .viz import comparison_grid, image_title

    path = map_path(out, key, ".png", "png")
    path.parent.mkdir(parents=True, exist_ok=True)
    image01 = loaded.preprocessing.denormalise(x[None].float().cpu())
    names = [n for n in by_name if n in maps] + [n for n in maps if n not in by_name]
    comparison_grid(
        image01,
        {n: maps[n][None] for n in names},
        path=str(path),
        row_titles=[image_title(Path(key).name, class_names, target, label)],
        signed={n: by_name[n].signed for n in names if n in by_name},
    )


def write_manifest(
    out: Path,
    method_names: List[str],
    settings: dict,
    unavailable: Optional[Dict[str, str]] = None,
    keys: Sequence[str] = (),
) -> List[Dict[str, str]]:
    """Merge every rank's records into ``manifest.csv`` (sorted by file, then method
    in the given order) and return its rows.

    Args:
        out: The output folder.
        method_names: The requested methods, in table order.
        settings: The run's settings (records of other settings are ignored).
        unavailable: ``{method: reason}`` of requested methods the model cannot
            serve: one ``skipped: <reason>`` row per file in ``keys``.
        keys: The data's files.
    """
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
    for name, why in (unavailable or {}).items():
        if name in order:
            rows.extend(
                {
                    "file": k,
                    "target": "",
                    "method": name,
                    "seconds": "",
                    "status": f"skipped: {why}",
                }
                for k in keys
            )
    rows.sort(key=lambda row: (row["file"], order[row["method"]]))
    with (out / "manifest.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    return rows
