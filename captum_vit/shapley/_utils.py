"""Small helpers shared by the ViT Shapley modules."""

from __future__ import annotations

import hashlib
import random
from contextlib import contextmanager
from typing import (
    Any,
    Callable,
    Dict,
    Iterator,
    List,
    NamedTuple,
    Optional,
    Sequence,
    Tuple,
    Union,
)

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor
from torch.utils.data import Dataset

from .._guard import eval_mode  # noqa: F401  (shared with the methods)

Device = Union[str, torch.device, None]


def model_device(model: nn.Module, device: Device = None) -> torch.device:
    """``device`` if given, else the device of the model's first parameter (CPU)."""
    if device is not None:
        return torch.device(device)
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A CPU generator seeded from ``(seed, step, stream)``: runs resume exactly."""
    g = torch.Generator()
    g.manual_seed((int(seed) * 1_000_003 + int(step) * 7919 + int(stream)) % (2**63))
    return g


def _unpack(item: Any) -> Tuple[Tensor, bool, str]:
    """``(image, ok, error)`` of a dataset item: a tensor, a tuple/list whose first
    entry is the image (``(image, label)``), or a dict with ``image`` (and ``ok``,
    ``error`` for unreadable files, as :class:`captum_vit.data.ImageDataset` gives)."""
    if isinstance(item, dict):
        return (
            torch.as_tensor(item["image"]),
            bool(item.get("ok", True)),
            str(item.get("error", "")),
        )
    if isinstance(item, (tuple, list)):
        item = item[0]
    return torch.as_tensor(item), True, ""


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator, Python's ``random`` and NumPy's global generator
    (what data augmentation draws from) for the block; restore them afterwards."""
    py, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % (2**32))
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(np_state)


def item_seed(seed: int, position: int) -> int:
    """The seed of the ``position``-th example of a run seeded with ``seed``: the
    augmentation of an example never depends on the process or batch it is in."""
    digest = hashlib.sha256(f"{int(seed)}:{int(position)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**63)


class ImageSource:
    """Indexable images for the trainers: a tensor or a map-style dataset.

    Dataset items may be a tensor, a tuple/list whose first entry is the image (e.g.
    ``(image, label)``; labels are ignored) or a dict with ``image`` (the items of
    :mod:`captum_vit.data`, whose ``ok=False`` marks an unreadable file).

    Args:
        data: (N, C, H, W) tensor of model inputs, or a ``torch.utils.data.Dataset``.
        name: Argument name for error messages.
    """

    def __init__(self, data: Union[Tensor, Dataset], name: str = "data") -> None:
        if isinstance(data, Tensor):
            if data.dim() != 4 or data.shape[0] == 0:
                raise ValueError(
                    f"{name}: expected a non-empty (N, C, H, W) image tensor, got "
                    f"{tuple(data.shape)}"
                )
            if not data.is_floating_point():
                raise TypeError(
                    f"{name}: expected floating-point (preprocessed) images, got "
                    f"{data.dtype}"
                )
        elif not (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
            raise TypeError(
                f"{name}: expected an (N, C, H, W) tensor or a map-style Dataset, got "
                f"{type(data).__name__}"
            )
        if len(data) == 0:
            raise ValueError(f"{name}: is empty")
        self.data = data
        self.name = name

    def __len__(self) -> int:
        return len(self.data)

    @property
    def is_tensor(self) -> bool:
        """Whether the images are one tensor (read without a DataLoader)."""
        return isinstance(self.data, Tensor)

    def get(self, index: Sequence[int], device: Device = None) -> Tensor:
        """Images at ``index`` as one (b, C, H, W) float tensor (a dataset's random
        transform, if any, is drawn under a fixed seed: the caller's random state
        is left alone)."""
        if isinstance(self.data, Tensor):
            x = self.data[torch.as_tensor(index, dtype=torch.long)]
        else:
            with seeded(0):
                x = torch.stack([_unpack(self.data[int(i)])[0] for i in index])
        return self._check(x).to(device=device, dtype=torch.float32)

    def _check(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(
                f"{self.name}: items must be (C, H, W) images, got a batch of shape "
                f"{tuple(x.shape)}"
            )
        return x

    def describe(self) -> Any:
        """What identifies the data in a checkpoint's settings."""
        describe = getattr(self.data, "describe", None)
        return describe() if callable(describe) else {"images": len(self)}


class _SeededItems(Dataset):
    """Reads ``(index, seed, tag)`` requests: the item at ``index``, made (and
    augmented) under ``seed``, as ``{"image", "ok", "error", "tag"}``."""

    def __init__(self, data: Dataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, request: Tuple[int, int, int]) -> Dict[str, Any]:
        index, seed, tag = request
        with seeded(seed):
            image, ok, error = _unpack(self.data[int(index)])
        return {"image": image.float(), "ok": ok, "error": error, "tag": int(tag)}


class _RequestSampler(torch.utils.data.Sampler):
    """Yields prepared lists of requests (one list per micro-batch), lazily."""

    def __init__(
        self, make: Callable[[], Iterator[List[Tuple[int, int, int]]]], n: int
    ):
        self.make, self.n = make, n

    def __iter__(self) -> Iterator[List[Tuple[int, int, int]]]:
        return self.make()

    def __len__(self) -> int:
        return self.n


class Micro(NamedTuple):
    """A micro-batch: images on the device, their ``ok`` flags and their tags
    (position in the step's global batch, or in the validation set)."""

    images: Tensor
    ok: Tensor
    tags: List[int]


def read_micro_batches(
    source: ImageSource,
    requests: Callable[[], Iterator[List[Tuple[int, int, int]]]],
    count: int,
    device: torch.device,
    workers: int = 0,
    on_skip: Optional[Callable[[str], None]] = None,
) -> Iterator[Micro]:
    """Read micro-batches of ``(index, seed, tag)`` requests, in order.

    A tensor source is indexed directly; a dataset goes through
    :func:`captum_vit._loader.make_loader` (a DataLoader with ``workers`` processes and
    pinned memory on GPUs), every item read under its own seed.

    Args:
        source: The images.
        requests: Makes the iterator of request lists (one list per micro-batch).
        count: How many lists it yields.
        device: Where the images go.
        workers: DataLoader worker processes.
        on_skip: Called with the reason of every unreadable image.
    """
    if source.is_tensor:
        for reqs in requests():
            x = source.get([r[0] for r in reqs], device)
            ok = torch.ones(len(reqs), dtype=torch.bool, device=device)
            yield Micro(x, ok, [int(r[2]) for r in reqs])
        return
    from .._loader import make_loader

    loader = make_loader(
        _SeededItems(source.data),
        _RequestSampler(requests, count),
        workers=workers,
        pin_memory=device.type == "cuda",
    )
    for batch in loader:
        if on_skip is not None:
            for ok, err in zip(batch["ok"].tolist(), batch["error"]):
                if not ok:
                    on_skip(err)
        x = source._check(batch["image"]).to(device, torch.float32, non_blocking=True)
        yield Micro(x, batch["ok"].to(device), batch["tag"].tolist())


def cosine_factor(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor: linear warm-up to 1, then cosine decay to 0."""
    import math

    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))
