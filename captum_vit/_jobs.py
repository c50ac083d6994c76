"""What the resumable, sharded dataset jobs (evaluate, explain a folder) share.

A job splits its images into fixed chunks (``chunk`` consecutive dataset positions,
the same for any number of processes) and runs every method on every chunk. Each
(method, chunk) result is one JSON line in the rank's own records file
(``records.jsonl`` for rank 0, ``records.rank{R}.jsonl`` for the others), written and
flushed as soon as it is done. On start, rank 0 reads every records file in the folder
and tells the ranks what is done; what is left is split over the ranks by position, so
a job killed at any point and started again, with any number of processes, skips
finished work and loses none. Records made with other settings stop the job with a
one-line :class:`SettingsMismatch`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

import torch

from ._guard import Interrupted, autocast
from ._loader import make_loader
from ._settings import differing, settings_diff
from ._utils import progress_bar
from .distributed import DistContext, shard
from .vit.adapter import logits_of


class SettingsMismatch(ValueError):
    """Records in the output folder were made with other settings."""


def image_seed(seed: int, key: str) -> int:
    """A seed for one image from the run's seed and the image's key: the same
    wherever (rank, batch, run) the image is processed."""
    digest = hashlib.sha256(f"{int(seed)}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**63)


def chunks_of(n: int, size: int) -> List[List[int]]:
    """Dataset positions ``0..n-1`` in consecutive chunks of ``size``."""
    return [list(range(s, min(s + size, n))) for s in range(0, n, size)]


class RecordStore:
    """The records files of one output folder, as seen by one rank.

    Args:
        out: The output folder.
        rank: This process's rank (selects the file it appends to).
    """

    def __init__(self, out: Path, rank: int = 0) -> None:
        self.out = Path(out)
        self.rank = int(rank)

    def path(self, rank: Optional[int] = None) -> Path:
        r = self.rank if rank is None else rank
        return self.out / ("records.jsonl" if r == 0 else f"records.rank{r}.jsonl")

    def files(self) -> List[Path]:
        """Every records file in the folder (any earlier number of processes)."""
        return sorted(self.out.glob("records*.jsonl"))

    def read(self) -> List[dict]:
        """All records of all files; lines cut by an interruption are ignored."""
        out: List[dict] = []
        for path in self.files():
            with path.open() as fh:
                for line in fh:
                    line = line.strip()
                    if not line:
                        continue
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:  # a line cut by an interruption
                        continue
                    if isinstance(rec, dict):
                        out.append(rec)
        return out

    def append(self, record: dict) -> None:
        """Append one record and flush it to disk at once.

        The line is made before the file is opened and written in one call, so an
        interruption (Ctrl-C) leaves the record whole or absent. A last line cut
        by a harder stop (a killed process) is ended first, so that it cannot
        swallow this record.
        """
        line = json.dumps(record) + "\n"
        path = self.path()
        cut = False
        if path.is_file() and path.stat().st_size:
            with path.open("rb") as fh:
                fh.seek(-1, 2)
                cut = fh.read(1) != b"\n"
        with path.open("a") as fh:
            fh.write(("\n" if cut else "") + line)
            fh.flush()


def check_settings(records: Sequence[dict], settings: dict, out: Path) -> None:
    """Raise :class:`SettingsMismatch` if any record was made with other settings.

    The message names at most five differing settings, with both values.
    """
    for rec in records:
        other = rec.get("settings")
        if other == settings:
            continue
        other = other if isinstance(other, dict) else {}
        raise SettingsMismatch(
            f"--out {str(out)!r} holds records made with other settings ("
            + settings_diff(other, settings, _show)
            + "); use another --out, or the same settings to resume"
        )


def _show(v: Any) -> str:
    """A record's setting as the message writes it: strings as they are, the rest
    as JSON."""
    return v if isinstance(v, str) else json.dumps(v)


def done_keys(records: Sequence[dict]) -> Set[Tuple[str, int]]:
    """``(method, chunk start)`` of every record."""
    return {(r["method"], int(r["start"])) for r in records if "method" in r}


def plan(
    ctx: DistContext,
    store: RecordStore,
    settings: dict,
    methods: Sequence[str],
    chunks: Sequence[Sequence[int]],
) -> Tuple[List[Tuple[int, List[int], List[str]]], int, int]:
    """Decide what this rank computes.

    Every rank's settings must be equal (same model, data and options). Rank 0
    reads the records (every rank gets its reading, so all agree even while others
    start writing), checks their settings, and the chunks with methods left to do
    are split over the ranks by position.

    Returns:
        ``(work, reused, total)``: this rank's ``(start, positions, methods)``
        items, and over all ranks the (method, image) results found done and the
        number requested.

    Raises:
        SettingsMismatch: on every rank, when records of other settings exist.
    """

    def read() -> Tuple[Optional[str], List[Tuple[str, int]]]:
        records = store.read()
        try:
            check_settings(records, settings, store.out)
        except SettingsMismatch as exc:
            return str(exc), []
        return None, sorted(done_keys(records))

    ranks = ctx.all_gather(settings)
    if any(other != settings for other in ranks):
        bad = next(r for r, other in enumerate(ranks) if other != settings)
        keys = differing(ranks[bad], settings)
        exc = SettingsMismatch(
            f"the processes disagree on the settings ({', '.join(keys[:5])} differ "
            f"between rank {ctx.rank} and rank {bad}): every rank must see the same "
            "model, data and options"
        )
        exc.all_ranks = True  # type: ignore[attr-defined]
        raise exc
    error, done_list = ctx.broadcast(
        read() if ctx.is_main or not ctx.distributed else None
    )
    if error is not None:
        exc = SettingsMismatch(error)
        exc.all_ranks = True  # type: ignore[attr-defined]
        raise exc
    done = set(done_list)
    pending = []
    reused = total = 0
    for positions in chunks:
        start = positions[0]
        left = [m for m in methods if (m, start) not in done]
        reused += (len(methods) - len(left)) * len(positions)
        total += len(methods) * len(positions)
        if left:
            pending.append((start, list(positions), left))
    return shard(pending, ctx.rank, ctx.world_size), reused, total


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work (for honest timings)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def method_autocast(method: Any, device: torch.device, amp: Optional[str]):
    """``--amp`` autocast for a perturbation method's forward passes; gradient and
    attention methods run in full precision."""
    return autocast(device, amp) if method.perturbation else contextlib.nullcontext()


def timed_explain(
    explain: Callable[..., torch.Tensor],
    method: Any,
    inputs: torch.Tensor,
    target: torch.Tensor,
    seeds: Sequence[int],
    amp: Optional[str],
) -> Tuple[torch.Tensor, float]:
    """``explain(inputs, target, seeds=seeds)`` under :func:`method_autocast`, and
    its wall-clock seconds (queued GPU work included)."""
    device = inputs.device
    synchronize(device)
    t0 = time.perf_counter()
    with method_autocast(method, device, amp):
        attr = explain(inputs, target, seeds=seeds)
    synchronize(device)
    return attr, time.perf_counter() - t0


def chunk_inputs(
    batch: Dict[str, Any],
    model: torch.nn.Module,
    target: Any,
    log: Optional[Callable[[str], None]],
) -> Tuple[torch.Tensor, List[str], Dict[str, str], torch.Tensor, torch.Tensor]:
    """The readable images of a loaded chunk and the classes to explain.

    Every unreadable image gets one ``"warning: skipped <key>: <error>"`` line (to
    ``log``, else stderr).

    Args:
        batch: The chunk from the job's loader.
        model: The model (on the device the images go to).
        target: ``"pred"`` (the model's prediction), ``"label"`` or a class index.
        log: Receives the warnings.

    Returns:
        ``(idx, keys, skipped, inputs, targets)``: the positions in the chunk of the
        readable images, their keys, ``{key: error}`` of the others, the readable
        images on the model's device and their (B,) classes.
    """
    device = next(model.parameters()).device
    ok = batch["ok"]
    skipped = {
        k: e for k, e, o in zip(batch["key"], batch["error"], ok.tolist()) if not o
    }
    for k, e in skipped.items():
        (log or note)(f"warning: skipped {k}: {e}")
    idx = ok.nonzero().flatten()
    keys = [batch["key"][int(i)] for i in idx]
    inputs = batch["image"][idx].to(device, non_blocking=True)
    if target == "pred" and keys:
        targets = predicted(model, inputs)
    elif target in ("pred", "label"):
        targets = batch["label"][idx].to(device)
    else:
        targets = torch.full((len(keys),), int(target), device=device)
    return idx, keys, skipped, inputs, targets


def run_chunks(
    ctx: DistContext,
    dataset: Any,
    work: Sequence[Tuple[int, List[int], List[str]]],
    workers: int,
    desc: str,
    show_progress: bool,
    run_chunk: Callable[..., None],
) -> None:
    """Load this rank's chunks of :func:`plan` and call ``run_chunk(batch, start,
    positions, methods, bar)`` on each, with a bar over the images on rank 0; then
    wait for every rank.

    Raises:
        Interrupted: on Ctrl-C, saying how many of the data's images are done
            (every method recorded) and that the same command resumes.
    """
    loader = make_loader(
        dataset, [w[1] for w in work], workers, pin_memory=ctx.device.type == "cuda"
    )
    pending = sum(len(w[1]) for w in work)
    bar = progress_bar(  # images/s and ETA; plain lines when not on a terminal
        total=pending,
        desc=desc + (f" (rank 0 of {ctx.world_size})" if ctx.world_size > 1 else ""),
        unit="img",
        enabled=show_progress and ctx.is_main,
    )
    finished = 0
    try:
        for (start, positions, left), batch in zip(work, loader):
            run_chunk(batch, start, positions, left, bar)
            finished += len(positions)
            bar.update(len(positions))
    except KeyboardInterrupt:
        if ctx.world_size > 1:  # this rank knows only its own share
            where = f"after {finished} image(s) of this run on rank {ctx.rank}"
        else:
            where = (
                f"after {len(dataset) - pending + finished} of {len(dataset)} images"
            )
        raise Interrupted(
            f"interrupted {where}; every finished record is kept: run the same "
            "command again to resume"
        ) from None
    finally:
        bar.close()
    ctx.barrier()


def predicted(model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The model's predicted class per image, (B,) long."""
    with torch.no_grad():
        return logits_of(model(inputs)).argmax(-1)


def note(line: str) -> None:
    """Print a line to stderr without breaking a tqdm bar."""
    from tqdm.auto import tqdm

    tqdm.write(line, file=sys.stderr)


def check_job(dataset: Any, num_classes: int, target: Any, world_size: int) -> None:
    """The checks every dataset job makes before any work (same on every rank).

    Raises:
        ValueError: ``target="label"`` on data without labels, labels outside the
            model's classes, a class index out of range, or more processes than
            images.
    """
    if target == "label":
        if not dataset.has_labels:
            raise ValueError(
                "--target label: the data has no labels; use --target pred, or give "
                "labels (an ImageFolder tree or --labels CSV)"
            )
        dataset.check_labels(num_classes)
    elif target != "pred" and not 0 <= int(target) < num_classes:
        raise ValueError(f"--target: class {target} out of range [0, {num_classes})")
    if world_size > len(dataset):
        raise ValueError(
            f"more processes ({world_size}) than images ({len(dataset)}): use at most "
            "one process per image"
        )
