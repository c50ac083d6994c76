"""The resumable evaluation job: :func:`run_evaluation` explains the images chunk by
chunk, scores each map with every metric and appends one record per (method, chunk);
the tables are written by :mod:`._report`.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from .. import metrics
from .._guard import autocast, check_amp
from .._html import png_bytes, to_uint8, write_bytes, write_text
from .._jobs import (
    RecordStore,
    SettingsMismatch,
    check_job,
    chunk_inputs,
    chunks_of,
    image_seed,
    method_autocast,
    note,
    plan,
    run_chunks,
    timed_explain,
)
from ..data import GridDataset, ItemDataset, SceneDataset
from ..distributed import DistContext
from ..methods import Method, TrainedParts, build_all, resolve_methods
from ..vit.adapter import logits_of
from ._config import (
    ADDED_SETTINGS,
    ROAD_FRACTIONS,
    EvalConfig,
    _patches,
    check_protocol,
    cost_line,
    gallery_positions,
    protocol_of,
    randomization_positions,
    stored_settings,
)
from ._page import write_page
from ._report import (
    RECORD_FORMAT,
    aggregate,
    format_seconds,
    gallery_dir,
    write_tables,
)


def writable_dir(path: str) -> Path:
    """Create ``path`` if needed and check that a file can be written in it.

    Raises:
        OSError: the folder cannot be created or written.
    """
    import os

    out = Path(path)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} is a file")
    out.mkdir(parents=True, exist_ok=True)
    probe = out / f".write_test.{os.getpid()}"
    probe.write_text("ok")
    probe.unlink()
    return out


def _removal(name: str, preprocessing: Any = None):
    """The metrics' ``removal``: ``None`` drops tokens; pixel baselines are meant in
    image space, so ``"black"`` is the model's *normalised* value of a black pixel
    (the metrics' own ``"black"`` is 0 in model-input space, which is mid-grey for
    the default model's mean = std = 0.5 normalisation). Without ``preprocessing``
    the embedded default model's."""
    if name == "tokens":
        return None
    if name == "black":
        if preprocessing is None:
            from ..zoo import preprocess

            return preprocess(torch.zeros(1, 3, 1, 1))
        return preprocessing.normalise(torch.zeros(1, 3, 1, 1))
    return name


def _pointing(
    attr: Tensor,
    gt: Tensor,
    has_gt: Tensor,
    cfg: EvalConfig,
    seeds: Sequence[int],
) -> Tensor:
    """Pointing game against (B, H, W) ground-truth masks with the run's rule;
    NaN where there is none. ``"random"`` draws each image's tied pixel with the
    image's own seed (the same draw in any batch or process)."""
    out = torch.full((attr.shape[0],), float("nan"))
    idx = has_gt.nonzero().flatten()
    if not idx.numel():
        return out
    a, m = attr[idx].cpu(), gt[idx].cpu()
    tol = float(cfg.pointing_tolerance)
    if cfg.pointing == "random":
        hits = [
            metrics.pointing_game(
                a[j : j + 1],
                masks=m[j : j + 1],
                ties="random",
                tolerance=tol,
                seed=int(seeds[int(i)]),
            )
            for j, i in enumerate(idx)
        ]
        out[idx] = torch.cat(hits).float()
    else:
        out[idx] = metrics.pointing_game(
            a, masks=m, ties=cfg.pointing, tolerance=tol
        ).float()
    return out


def _on_ground_truth(fn, attr: Tensor, gt: Tensor, has_gt: Tensor) -> Tensor:
    """``fn(maps, masks)`` on the images that have ground truth; NaN elsewhere."""
    out = torch.full((attr.shape[0],), float("nan"))
    idx = has_gt.nonzero().flatten()
    if idx.numel():
        out[idx] = fn(attr[idx].cpu(), gt[idx].cpu()).float()
    return out


def grid_batch(
    grids: GridDataset, positions: Sequence[int], device: torch.device
) -> Dict[str, Any]:
    """The grids of the given dataset positions: ``ok`` (B,) bool, ``image``
    (B, C, H, W) on ``device``, ``label`` (B,) long on ``device``, ``cell`` (B,)
    long."""
    items = [grids[int(p)] for p in positions]
    return {
        "ok": torch.tensor([bool(it["ok"]) for it in items], dtype=torch.bool),
        "image": torch.stack([it["image"] for it in items]).to(device),
        "label": torch.tensor([it["label"] for it in items], device=device),
        "cell": torch.tensor([it["cell"] for it in items]),
    }


def non_target_classes(
    mode: str,
    keys: Sequence[str],
    target: Tensor,
    num_classes: int,
    seed: int,
    distractor: Optional[Tensor] = None,
) -> Tensor:
    """The class explained for the non-target columns, one per image, (B,) long.

    ``"distractor"``: the distractor's class, or where it is the explained class
    (possible with ``target="pred"``) a random one; ``"random"``: a class other than
    the explained one, uniform, drawn with a seed made from the run's seed and the
    image's key (the same class in any batch, chunk or process).

    Args:
        mode: ``"distractor"`` or ``"random"``.
        keys: The images' keys.
        target: (B,) explained classes.
        num_classes: Number of classes (at least 2).
        seed: The run's seed.
        distractor: (B,) distractor classes (``"distractor"`` only).
    """
    out = []
    for i, key in enumerate(keys):
        t = int(target[i])
        if mode == "distractor" and distractor is not None:
            d = int(distractor[i])
            if d != t:
                out.append(d)
                continue
        g = torch.Generator().manual_seed(image_seed(seed, f"{key}#non-target"))
        j = int(torch.randint(num_classes - 1, (1,), generator=g))
        out.append(j + (j >= t))
    return torch.tensor(out, dtype=torch.long, device=target.device)


def _curve_areas(
    model: torch.nn.Module,
    inputs: Tensor,
    attr: Tensor,
    target: Tensor,
    cfg: EvalConfig,
    common: Dict[str, Any],
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Insertion and deletion areas and curves, (B,), (B,), (B, S), (B, S)."""
    fractions = [i / cfg.curve_steps for i in range(cfg.curve_steps + 1)]
    c = metrics.insertion_deletion_curves(
        model, inputs, attr, target, fractions=fractions, **common
    )
    ins, dele = c.insertion.float(), c.deletion.float()
    return (
        metrics.area_under_curve(c.fractions, ins),
        metrics.area_under_curve(c.fractions, dele),
        ins,
        dele,
    )


def run_evaluation(
    out_dir: str,
    methods: Optional[List[str]] = None,
    cfg: Optional[EvalConfig] = None,
    show_progress: bool = False,
    log: Optional[Callable[[str], None]] = None,
    *,
    model: Any = None,
    dataset: Optional[ItemDataset] = None,
    ctx: Optional[DistContext] = None,
    workers: int = 0,
    class_names: Optional[Sequence[str]] = None,
) -> Optional[Dict[str, Dict[str, Tuple[float, float]]]]:
    """Score methods on a data source's images and write the tables.

    Args:
        out_dir: Output directory (created; must be writable). Records already in it
            for the same settings are reused, so an interrupted run resumes; records
            of other settings are an error.
        methods: Method names (default: all, see :mod:`captum_vit.methods`).
        cfg: Settings (:class:`EvalConfig`); with a ``dataset`` its ``n`` becomes
            the dataset's size.
        show_progress: A tqdm bar over the images (rank 0), with images/s and ETA.
        log: Receives one line per finished (method, chunk), per skipped method and
            per unreadable image (by default the last two go to stdout/stderr).
        model: A :class:`captum_vit.models.LoadedModel` (default: the embedded
            default model with its shipped weights) on ``ctx.device``.
        dataset: A :class:`captum_vit.data.ItemDataset` (default: ``cfg.n`` embedded
            held-out scenes) preprocessed for ``model``.
        ctx: The process's :class:`captum_vit.distributed.DistContext` (default: one
            process on the CPU).
        workers: DataLoader worker processes.
        class_names: Names of the model's classes for the report's gallery
            (default: the model's).

    Returns:
        On rank 0 ``{method: {metric: (mean, ci_half_width)}}``; None on other ranks.

    Raises:
        ValueError: unknown method names, settings out of range, ``target="label"``
            without labels, labels outside the model's classes, more processes than
            images, ``evaluator="surrogate"`` for a model without a ViT Shapley
            surrogate, ``non_target="distractor"`` on data without a distractor, or
            records of other settings in ``out_dir``.
        OSError: ``out_dir`` cannot be created or written.

    Examples::

        >>> table = run_evaluation("out/eval", ["rollout", "genatt"], EvalConfig(n=20))
        >>> table["genatt"]["insertion"]            # (mean, 95% CI half-width)
    """
    from ..models import load_model

    cfg = replace(cfg) if cfg is not None else EvalConfig()
    chosen: List[Method] = resolve_methods(methods)
    ctx = ctx or DistContext()
    device = ctx.device
    check_amp(device, cfg.amp)
    loaded = model if model is not None else load_model("default", device=device)
    if dataset is None:
        cfg.validate()
        dataset = SceneDataset(
            cfg.n,
            loaded.preprocessing,
            seed=cfg.seed,
            default_model=loaded.takes_scenes,
        )
    else:
        cfg.n = len(dataset)
    cfg.validate()
    evaluator = check_protocol(cfg, loaded, dataset)
    out = writable_dir(out_dir)
    check_job(dataset, loaded.num_classes, cfg.target, ctx.world_size)
    settings = {
        "command": "evaluate",
        **stored_settings(cfg),
        "model": loaded.describe(),
        "data": dataset.describe(),
    }
    if cfg.evaluator == "surrogate":
        from ..shapley import classifier_digest

        settings["surrogate_sha256"] = classifier_digest(evaluator)
    removal = _removal(cfg.removal, loaded.preprocessing)
    if isinstance(removal, Tensor):
        removal = removal.to(device)
    trained = TrainedParts.from_mapping(loaded.extras)
    built, unavailable = build_all(chosen, loaded.model, cfg.method_options(), trained)
    if ctx.is_main:
        for name, why in unavailable.items():
            (log or print)(f"{name}: skipped ({why})")
    by_name = {m.name: m for m in chosen}
    store = RecordStore(out, ctx.rank)
    chunks = chunks_of(len(dataset), cfg.chunk)
    protocol = protocol_of(cfg, _patches(loaded))
    try:
        work, reused, total = plan(ctx, store, settings, list(built), chunks)
    except SettingsMismatch as exc:
        raise _with_protocol_hint(exc, store, protocol, loaded) from None
    if show_progress and ctx.is_main and total > reused:
        note(
            cost_line(
                cfg,
                protocol,
                loaded.num_classes,
                dataset.has_distractor,
                total - reused,
            )
        )
    job = _EvalJob(
        built,
        by_name,
        loaded.model,
        evaluator,
        loaded.num_classes,
        cfg,
        removal,
        settings,
        store,
        dataset,
        set(randomization_positions(len(dataset), cfg.randomization)),
        set(gallery_positions(len(dataset), cfg.gallery, cfg.seed)),
        loaded.preprocessing,
        list(class_names if class_names is not None else loaded.class_names),
        {"format": RECORD_FORMAT, "protocol": protocol, "methods": list(built)},
        (
            GridDataset(dataset, cfg.grid_pointing, seed=cfg.seed)
            if cfg.grid_pointing
            else None
        ),
    )
    run_chunks(
        ctx,
        dataset,
        work,
        workers,
        "evaluate",
        show_progress,
        lambda batch, start, positions, left, bar: job.run(
            batch, start, positions, left, log, bar
        ),
    )
    if not ctx.is_main:
        return None
    table = write_tables(
        out,
        list(built),
        settings,
        reused=(reused, total) if reused else None,
        protocol=protocol,
    )
    write_page(out, aggregate(out, list(built), settings), settings, protocol)
    return table


def _with_protocol_hint(
    exc: SettingsMismatch, store: RecordStore, protocol: Optional[str], loaded: Any
) -> SettingsMismatch:
    """The mismatch, plus the ``--protocol`` the folder's records were made with
    when that is another preset (e.g. a folder of the former defaults)."""
    records = store.read() if store.rank == 0 else []
    old = next((r.get("settings") for r in records if r.get("settings")), None)
    fields = set(asdict(EvalConfig())) - set(ADDED_SETTINGS) - {"infidelity_samples"}
    if isinstance(old, dict) and fields <= set(old):
        values = {k: old[k] for k in fields}
        values.update({k: old.get(k, v) for k, v in ADDED_SETTINGS.items()})
        if "infidelity_samples" in old:
            values["infidelity_samples"] = old["infidelity_samples"]
        try:
            then = protocol_of(EvalConfig(**values), _patches(loaded))
        except (TypeError, ValueError):
            then = None
        if then is not None and then != protocol:
            flags = f"--protocol {then}"
            if values["infidelity"] == "off":
                flags += " --infidelity off"
            out = SettingsMismatch(
                f"{exc}; its records follow {flags} (add {flags} to resume it)"
            )
            out.all_ranks = getattr(exc, "all_ranks", False)  # type: ignore
            return out
    return exc


@dataclass
class _EvalJob:
    """What stays the same for every chunk of one evaluation."""

    built: Dict[str, Callable[..., Tensor]]
    by_name: Dict[str, Method]
    model: torch.nn.Module
    evaluator: torch.nn.Module
    num_classes: int
    cfg: EvalConfig
    removal: Any
    settings: dict
    store: RecordStore
    dataset: ItemDataset
    randomized: set
    gallery: set
    preprocessing: Any
    class_names: List[str]
    #: written into every record: the record format, the protocol, the methods
    stamp: Dict[str, Any]
    grids: Optional[GridDataset] = None

    def run(self, batch: Dict[str, Any], start: int, positions, left, log, bar):
        """Score the pending methods ``left`` on one loaded chunk and append one
        record per method."""
        cfg, dataset = self.cfg, self.dataset
        idx, keys, skipped, inputs, target = chunk_inputs(
            batch, self.model, cfg.target, log
        )
        device = inputs.device
        gt = distractor = None
        if dataset.has_ground_truth:
            gt = (batch["gt"][idx], batch["has_gt"][idx])
        if dataset.has_distractor:
            distractor = (
                batch["distractor"][idx].to(device),
                batch["gt_distractor"][idx],
                batch["gt_distractor"][idx].flatten(1).any(1),
            )
        seeds = [image_seed(cfg.seed, k) for k in keys]
        mode = cfg.non_target
        if mode == "auto":
            mode = "distractor" if distractor is not None else "random"
        non_target: Optional[Tensor] = None
        if mode in ("distractor", "random") and keys:
            non_target = non_target_classes(
                mode,
                keys,
                target,
                self.num_classes,
                cfg.seed,
                distractor[0] if distractor is not None else None,
            )
        rand_rows = [
            j for j, i in enumerate(idx.tolist()) if positions[i] in self.randomized
        ]
        grid = None
        if self.grids is not None and keys:
            grid = grid_batch(self.grids, [positions[i] for i in idx.tolist()], device)
        shown = {
            j: positions[i]
            for j, i in enumerate(idx.tolist())
            if positions[i] in self.gallery
        }
        if shown:
            self._gallery_images(batch, idx, keys, inputs, target, shown)
        for name in left:
            bar.set_postfix_str(name, refresh=False)
            t0 = time.time()
            rec: Dict[str, Any] = {}
            if keys:  # else every image of the chunk was unreadable
                rec = self.score(
                    name,
                    inputs,
                    target,
                    seeds,
                    gt,
                    distractor,
                    mode,
                    non_target,
                    rand_rows,
                    grid,
                    shown,
                )
            rec.update(
                method=name,
                start=start,
                keys=keys,
                targets=[int(t) for t in target.cpu()],
                skipped=skipped,
                wall=[t0, time.time()],
                settings=self.settings,
                **self.stamp,
            )
            self.store.append(rec)
            if log is not None:
                secs = rec["seconds"][0] if keys else float("nan")
                log(
                    f"{name}: images {positions[0]}-{positions[-1]} done "
                    f"({format_seconds(secs)} s/image)"
                )

    def score(
        self,
        name: str,
        inputs: Tensor,
        target: Tensor,
        seeds: Sequence[int],
        gt: Optional[Tuple[Tensor, Tensor]],
        distractor: Optional[Tuple[Tensor, Tensor, Tensor]],
        non_target_mode: str,
        non_target: Optional[Tensor],
        rand_rows: List[int],
        grid: Optional[Dict[str, Any]] = None,
        shown: Optional[Dict[int, int]] = None,
    ) -> Dict[str, Any]:
        """Explain one chunk of images with method ``name`` and score it with every
        metric; returns the record's values. The maps of the rows in ``shown``
        (``{row: dataset position}``) are kept for the gallery."""
        cfg, explain, method = self.cfg, self.built[name], self.by_name[name]
        device = inputs.device
        b = inputs.shape[0]

        def method_amp():
            return method_autocast(method, device, cfg.amp)

        attr, seconds = timed_explain(explain, method, inputs, target, seeds, cfg.amp)
        seconds /= b
        attr = attr.detach().float()
        for row, position in (shown or {}).items():
            gallery_map = attr[row].sum(0).cpu().numpy().astype(np.float16)
            buf = io.BytesIO()
            np.save(buf, gallery_map)
            write_bytes(
                gallery_dir(self.store.out, position) / f"{name}.npy", buf.getvalue()
            )
        ev = self.evaluator
        common = dict(
            removal=self.removal, seed=cfg.seed, max_examples_per_batch=cfg.metric_batch
        )
        out: Dict[str, Tensor] = {}
        curves: Dict[str, Tensor] = {}
        with autocast(device, cfg.amp):
            ins, dele, ins_c, del_c = _curve_areas(
                ev, inputs, attr, target, cfg, common
            )
            out.update(insertion=ins, deletion=dele, ins_minus_del=ins - dele)
            out["aopc"] = (del_c[:, :1] - del_c).mean(dim=1)
            curves.update(insertion=ins_c.mean(0), deletion=del_c.mean(0))
            for mode in ("positive", "negative"):
                out[f"aopc_acc_{mode}"] = metrics.aopc(
                    ev,
                    inputs,
                    attr,
                    target,
                    mode=mode,
                    score="accuracy",
                    fractions=cfg.accuracy_fractions(),
                    **common,
                ).float()
            out["faithfulness"] = metrics.faithfulness_correlation(
                ev, inputs, attr, target, n_samples=cfg.faith_samples, **common
            ).float()
            sweep = metrics.sensitivity_n_sweep(
                ev,
                inputs,
                attr,
                target,
                fractions=cfg.sensitivity_fractions(),
                n_samples=cfg.sensitivity_samples,
                **common,
            )
            out["sensitivity_n"] = sweep.mean.float()
            if cfg.infidelity != "off":
                out["infidelity"] = metrics.infidelity(
                    ev,
                    inputs,
                    attr,
                    target,
                    perturbation=cfg.infidelity,
                    n_perturb_samples=cfg.infidelity_samples,
                    **common,
                ).float()
            if cfg.road != "off":
                road = metrics.road_curves(
                    self.model,
                    inputs,
                    attr,
                    target,
                    fractions=ROAD_FRACTIONS,
                    pixels=cfg.road == "pixels",
                    seed=cfg.seed,
                    max_examples_per_batch=cfg.metric_batch,
                )
                out["road_morf"] = road.morf.float().mean(dim=1)
                out["road_lerf"] = road.lerf.float().mean(dim=1)
                curves.update(
                    road_morf=road.morf.float().mean(0),
                    road_lerf=road.lerf.float().mean(0),
                )
        if gt is not None:
            out["pointing"] = _pointing(attr, *gt, cfg, seeds)
            out["energy_pointing"] = _on_ground_truth(
                lambda a, m: metrics.energy_pointing_game(a, masks=m), attr, *gt
            )
            out["segmentation_f1"] = _on_ground_truth(
                lambda a, m: metrics.segmentation_f1(a, masks=m), attr, *gt
            )
        if grid is not None:
            out["grid_pointing"] = self._grid_pointing(
                explain, method_amp, grid, seeds, inputs.shape[-2:]
            )
        attr_d = None
        if distractor is not None:
            d_target, d_gt, d_has = distractor
            with method_amp():
                attr_d = explain(inputs, d_target, seeds=seeds).detach().float()
            out["pointing_distractor"] = _pointing(attr_d, d_gt, d_has, cfg, seeds)
        nt = self._non_target(
            explain,
            method_amp,
            inputs,
            target,
            seeds,
            common,
            non_target_mode,
            non_target,
            attr_d if distractor is not None else None,
            distractor[0] if distractor is not None else None,
        )
        if nt is not None:
            out.update(insertion_nontarget=nt[0], deletion_nontarget=nt[1])
            curves.update(insertion_nontarget=nt[2], deletion_nontarget=nt[3])
        rand = None
        if rand_rows:
            rand = self._randomization(
                explain, method_amp, inputs, target, seeds, attr, rand_rows
            )
            out.update(randomization_spearman=rand[0], randomization_ssim=rand[1])
        elif self.randomized:  # the check is on, for other images of the data
            nan = torch.full((b,), float("nan"))
            out.update(randomization_spearman=nan, randomization_ssim=nan)
        rec: Dict[str, Any] = {
            k: [float(v) for v in t.detach().cpu()] for k, t in out.items()
        }
        rec["seconds"] = [seconds] * b
        for k, c in curves.items():
            rec[f"curve_{k}"] = c.detach().cpu().tolist()
        rec["sensitivity_n_sizes"] = sweep.n.tolist()
        rec["sensitivity_n_curves"] = sweep.curve.float().cpu().tolist()
        if non_target is not None:
            rec["non_targets"] = [int(c) for c in non_target.cpu()]
        if rand is not None:
            rec["randomization_layers"] = rand[2]
            rec["randomization_curves"] = rand[3]
        return rec

    def _grid_pointing(
        self, explain, method_amp, grid: Dict[str, Any], seeds, size
    ) -> Tensor:
        """The grid pointing game on the chunk's grids (NaN where an image's grid
        could not be made); each grid is explained with its image's seed."""
        out = torch.full((grid["ok"].shape[0],), float("nan"))
        rows = grid["ok"].nonzero().flatten()
        if not rows.numel():
            return out
        sel = rows.to(grid["image"].device)
        with method_amp():
            attr = explain(
                grid["image"][sel],
                grid["label"][sel],
                seeds=[seeds[int(j)] for j in rows],
            )
        out[rows] = metrics.grid_pointing_game(
            attr.detach().float().cpu(),
            grid["cell"][rows],
            self.cfg.grid_pointing,
            image_size=tuple(int(v) for v in size),
        )
        return out

    def _gallery_images(
        self,
        batch: Dict[str, Any],
        idx: Tensor,
        keys: List[str],
        inputs: Tensor,
        target: Tensor,
        shown: Dict[int, int],
    ) -> None:
        """Keep the gallery's images of this chunk (as the model sees them) with
        their key, label, explained class and prediction, in ``gallery/<position>/``
        (before any record of the chunk, so a record implies its pictures)."""
        rows = sorted(shown)
        sel = torch.tensor(rows, device=inputs.device)
        with torch.no_grad():
            probs = logits_of(self.model(inputs[sel])).float().softmax(-1).cpu()
        images = self.preprocessing.denormalise(inputs[sel].float().cpu())
        labels = batch["label"][idx].tolist()
        for r, row in enumerate(rows):
            folder = gallery_dir(self.store.out, shown[row])
            pred = int(probs[r].argmax())
            t = int(target[row])
            label = int(labels[row])
            classes = {c for c in (label, t, pred) if c >= 0}
            meta = {
                "key": keys[row],
                "position": shown[row],
                "label": label,
                "target": t,
                "prediction": pred,
                "target_probability": float(probs[r, t]),
                "prediction_probability": float(probs[r, pred]),
                "class_names": {
                    str(c): self.class_names[c]
                    for c in sorted(classes)
                    if c < len(self.class_names)
                },
            }
            write_bytes(folder / "image.png", png_bytes(to_uint8(images[r].numpy())))
            write_text(folder / "meta.json", json.dumps(meta, indent=1) + "\n")

    def _non_target(
        self,
        explain,
        method_amp,
        inputs: Tensor,
        target: Tensor,
        seeds: Sequence[int],
        common: Dict[str, Any],
        mode: str,
        classes: Optional[Tensor],
        attr_d: Optional[Tensor],
        d_target: Optional[Tensor],
    ) -> Optional[Tuple[Tensor, Tensor, Tensor, Tensor]]:
        """Insertion and deletion of non-target explanations: per-image areas and
        mean curves (averaged over every other class with ``mode="all"``)."""
        if mode == "off":
            return None
        if mode == "all":
            per_class = [
                target.new_full(target.shape, j) + (target <= j).long()
                for j in range(self.num_classes - 1)
            ]
        else:
            per_class = [classes]
        sums: List[Tensor] = []
        for c in per_class:
            if attr_d is not None and torch.equal(c, d_target):
                a = attr_d  # the distractor's explanation, already computed
            else:
                with method_amp():
                    a = explain(inputs, c, seeds=seeds).detach().float()
            with autocast(inputs.device, self.cfg.amp):
                res = _curve_areas(self.evaluator, inputs, a, c, self.cfg, common)
            sums = (
                [r.clone() for r in res]
                if not sums
                else [s + r for s, r in zip(sums, res)]
            )
        k = len(per_class)
        ins, dele, ins_c, del_c = (s / k for s in sums)
        return ins, dele, ins_c.mean(0), del_c.mean(0)

    def _randomization(
        self,
        explain,
        method_amp,
        inputs: Tensor,
        target: Tensor,
        seeds: Sequence[int],
        attr: Tensor,
        rows: List[int],
    ) -> Tuple[Tensor, Tensor, List[str], Dict[str, list]]:
        """The cascading randomisation check on the chunk's ``rows``: per-image
        means over the steps (NaN for the other images), the groups, and the
        per-image curves (None for the other images)."""
        sel = torch.tensor(rows, device=inputs.device)
        sub_seeds = [seeds[j] for j in rows]

        def fn(x: Tensor, target: Optional[Tensor] = None) -> Tensor:
            with method_amp():
                return explain(x, target, seeds=sub_seeds)

        res = metrics.model_parameter_randomization(
            self.model,
            fn,
            inputs[sel],
            target[sel],
            attributions=attr[sel],
            seed=self.cfg.seed,
        )
        b = inputs.shape[0]
        means = []
        per_image: Dict[str, list] = {}
        for key, vals in (("spearman", res.spearman), ("ssim", res.ssim)):
            m = torch.full((b,), float("nan"))
            m[torch.tensor(rows)] = vals.float().mean(dim=1).cpu()
            means.append(m)
            full: List[Optional[list]] = [None] * b
            for r, j in enumerate(rows):
                full[j] = vals[r].float().cpu().tolist()
            per_image[key] = full
        return means[0], means[1], list(res.layers), per_image
