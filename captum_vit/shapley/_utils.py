"""Small helpers shared by the ViT Shapley modules."""

from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch
import torch.nn as nn
from torch import Tensor
from torch.utils.data import Dataset

from .._guard import eval_mode  # noqa: F401  (shared with the methods)
from .._utils import check_int, check_number

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


class ImageSource:
    """Indexable images for the trainers: a tensor or a map-style dataset.

    Dataset items may be a tensor or a tuple/list whose first entry is the image (e.g.
    ``(image, label)``); labels are ignored.

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

    def get(self, index: Sequence[int], device: Device = None) -> Tensor:
        """Images at ``index`` as one (b, C, H, W) float tensor."""
        if isinstance(self.data, Tensor):
            x = self.data[torch.as_tensor(index, dtype=torch.long)]
        else:
            items = []
            for i in index:
                item = self.data[int(i)]
                if isinstance(item, (tuple, list)):
                    item = item[0]
                items.append(torch.as_tensor(item))
            x = torch.stack(items)
        if x.dim() != 4:
            raise ValueError(
                f"{self.name}: items must be (C, H, W) images, got a batch of shape "
                f"{tuple(x.shape)}"
            )
        return x.to(device=device, dtype=torch.float32)

    def batches(
        self, batch_size: int, seed: int, epoch: int, shuffle: bool = True
    ) -> List[List[int]]:
        """The epoch's index batches, a deterministic function of (seed, epoch)."""
        n = len(self)
        if shuffle:
            order = torch.randperm(n, generator=step_generator(seed, epoch, 17))
        else:
            order = torch.arange(n)
        return [order[i : i + batch_size].tolist() for i in range(0, n, batch_size)]


def cosine_factor(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor: linear warm-up to 1, then cosine decay to 0."""
    import math

    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def check_positive_int(name: str, value: int, minimum: int = 1) -> int:
    """Validate an integer hyper-parameter (integer-like, ``>= minimum``)."""
    return check_int(name, value, minimum)


def check_float(name: str, value: float, low: float, high: Optional[float] = None):
    """Validate a float hyper-parameter: finite, in ``[low, high]``."""
    return check_number(name, value, low, high)
