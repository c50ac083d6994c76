"""torch.distributed helpers for dataset-scale jobs launched with ``torchrun``.

One convention for every job (``evaluate``, ``explain --data``, training): the same
command runs in one process, or under ``torchrun --nproc_per_node=N`` (and several
machines through torchrun's rendezvous). :func:`init_distributed` reads torchrun's
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), picks the rank's device
(``cuda:LOCAL_RANK`` when there is a GPU, else the CPU) and starts the process group
(nccl on GPUs, gloo on CPU). :class:`DistContext` carries rank, world size and device,
and the few collectives the jobs need: a barrier, broadcast and gather of Python
objects, and :meth:`DistContext.agree`, which makes a one-line user error on any rank
the error of every rank (no rank is left waiting at a collective).

Work is split with :func:`shard`: deterministic, by position, so a restart with a
different number of processes can re-split what is left.

Examples::

    >>> from captum_vit.distributed import init_distributed, shard
    >>> ctx = init_distributed("auto")          # single process: rank 0 of 1, no group
    >>> mine = shard(list(range(10)), ctx.rank, ctx.world_size)
    >>> ctx.barrier(); ctx.close()
"""

from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple, Type, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

#: Seconds a collective waits for the other ranks (``CAPTUM_VIT_DIST_TIMEOUT``
#: overrides). Ranks finish within about one chunk of each other; a rank that dies
#: makes torchrun stop the others.
DEFAULT_TIMEOUT_S = 1800


def parse_device(spec: Optional[str], local_rank: int = 0) -> torch.device:
    """Resolve ``--device``: ``None``/``"auto"`` (the rank's GPU if there is one,
    else the CPU), ``"cpu"``, ``"cuda"`` (``cuda:LOCAL_RANK``) or ``"cuda:K"``.

    Raises:
        ValueError: another form, or a GPU that is not there (one line, naming
            ``--device``).

    Examples::

        >>> parse_device("cpu")
        device(type='cpu')
    """
    if spec in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", str(spec))
    if m is None:
        raise ValueError(f"--device: expected cpu, cuda or cuda:K, got {spec!r}")
    if not torch.cuda.is_available():
        raise ValueError(f"--device {spec}: CUDA is not available on this machine")
    count = torch.cuda.device_count()
    index = int(m.group(1)) if m.group(1) is not None else local_rank % count
    if index >= count:
        raise ValueError(f"--device {spec}: this machine has {count} GPU(s)")
    return torch.device("cuda", index)


def shard(items: Sequence[T], rank: int, world_size: int) -> List[T]:
    """The items of ``rank``: every ``world_size``-th one from position ``rank``.

    Deterministic and balanced to within one item; the union over ranks is every
    item exactly once.
    """
    return list(items[rank::world_size])


@dataclass
class DistContext:
    """Where this process stands in a (possibly one-process) job.

    Attributes:
        rank: Global rank (0 = the one that merges and writes).
        world_size: Number of processes.
        local_rank: Rank on this machine (selects the GPU).
        device: This rank's device.
        backend: ``"nccl"``, ``"gloo"`` or None without a process group.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: Optional[str] = None

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether a process group is running."""
        return self.backend is not None

    def barrier(self) -> None:
        """Wait for every rank (no-op in one process)."""
        if self.distributed:
            if self.backend == "nccl":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (picklable objects)."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self._obj_device())
        return box[0]

    def all_gather(self, obj: Any) -> List[Any]:
        """Every rank's ``obj``, in rank order."""
        if not self.distributed:
            return [obj]
        out: List[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over the ranks, in place (nothing to do in one process).
        With nccl it must be on this rank's GPU.

        Returns:
            ``tensor``.
        """
        if self.distributed:
            dist.all_reduce(tensor)
        return tensor

    def agree(self, fn: Callable[[], T], errors: Tuple[Type[BaseException], ...]) -> T:
        """Run ``fn`` on every rank; if it raised one of ``errors`` on any rank,
        raise the lowest rank's error on every rank (so all stop together with the
        same one-line message instead of waiting at the next collective).

        Args:
            fn: The work (e.g. loading the model and checking the data).
            errors: Exception types that are user errors.

        Returns:
            ``fn()``'s result on this rank.
        """
        result: Any = None
        failure: Optional[Tuple[str, str]] = None
        own: Optional[BaseException] = None
        try:
            result = fn()
        except errors as exc:
            own = exc
            failure = (type(exc).__name__, str(exc))
        failures = self.all_gather(failure)
        for f in failures:
            if f is not None:
                if own is not None and (type(own).__name__, str(own)) == f:
                    exc = own
                else:
                    cls = next((e for e in errors if e.__name__ == f[0]), errors[0])
                    exc = cls(f[1])
                exc.all_ranks = True  # type: ignore[attr-defined]
                raise exc
        return result

    def _obj_device(self) -> Optional[torch.device]:
        return self.device if self.backend == "nccl" else None

    def close(self) -> None:
        """Leave the process group (safe to call twice)."""
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()
        self.backend = None


def env_world() -> Tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment
    (``(0, 1, 0)`` outside torchrun)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return rank, world, local


def init_distributed(
    device: Optional[str] = None, timeout_s: Optional[float] = None
) -> DistContext:
    """Join torchrun's process group (if launched by torchrun with more than one
    process) and pick this rank's device.

    Args:
        device: ``--device`` (see :func:`parse_device`); default: the rank's GPU if
            there is one, else the CPU.
        timeout_s: Collective timeout in seconds (default
            ``CAPTUM_VIT_DIST_TIMEOUT`` or :data:`DEFAULT_TIMEOUT_S`).

    Returns:
        A :class:`DistContext`; in one process no group is started.

    Raises:
        ValueError: a bad ``--device``.
    """
    rank, world, local = env_world()
    dev = parse_device(device, local)
    ctx = DistContext(rank=rank, world_size=world, local_rank=local, device=dev)
    if world > 1:
        if timeout_s is None:
            timeout_s = float(
                os.environ.get("CAPTUM_VIT_DIST_TIMEOUT", DEFAULT_TIMEOUT_S)
            )
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        if not dist.is_initialized():
            kw = {"device_id": dev} if dev.type == "cuda" else {}
            dist.init_process_group(
                backend=backend,
                timeout=datetime.timedelta(seconds=timeout_s),
                **kw,
            )
        ctx.backend = backend
        ctx.rank, ctx.world_size = dist.get_rank(), dist.get_world_size()
    return ctx
