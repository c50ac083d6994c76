"""Feeding fixed batches of dataset positions to a run: the DataLoader and its collate.

The resumable jobs and the ViT Shapley trainers load exactly the batches they planned
(the chunks of a job, the steps of a trainer) from any dataset of dict items
(:class:`captum_vit.data.ItemDataset` and the trainers' own). This module imports
nothing from ``captum_vit``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Union

import torch
from torch import Tensor


def collate_items(items: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Stack a list of items into a batch: tensors and numbers stacked, strings as
    lists."""
    out: Dict[str, Any] = {}
    for k in items[0]:
        vals = [it[k] for it in items]
        if isinstance(vals[0], Tensor):
            out[k] = torch.stack(vals)
        elif isinstance(vals[0], bool):
            out[k] = torch.tensor(vals, dtype=torch.bool)
        elif isinstance(vals[0], int):
            out[k] = torch.tensor(vals, dtype=torch.long)
        else:
            out[k] = vals
    return out


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # workers decode; the main process computes


def make_loader(
    dataset: torch.utils.data.Dataset,
    batches: Union[Sequence[Sequence[int]], torch.utils.data.Sampler],
    workers: int = 0,
    pin_memory: bool = False,
) -> torch.utils.data.DataLoader:
    """A DataLoader yielding exactly the given batches of indices, in order.

    Args:
        dataset: An :class:`~captum_vit.data.ItemDataset`.
        batches: Lists of dataset indices (e.g. this rank's chunks), or a
            ``torch.utils.data.Sampler`` yielding them (long or lazily made runs).
        workers: Worker processes decoding images (0: in the calling process).
        pin_memory: Pin batches for fast host-to-GPU copies.

    Returns:
        A ``torch.utils.data.DataLoader`` of collated batches (:func:`collate_items`).
    """
    if not isinstance(batches, torch.utils.data.Sampler):
        batches = [list(b) for b in batches]
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=int(workers),
        pin_memory=bool(pin_memory),
        collate_fn=collate_items,
        worker_init_fn=_worker_init if workers else None,
        persistent_workers=False,
    )
