"""Step checkpoints of the ViT Shapley trainers (:mod:`.training`).

A run's checkpoint file ``<stem>.pt`` holds its newest step: the weights, the
optimiser and GradScaler states, the history, the best-validation weights (only
while they are not the step's own weights) and the run's *fingerprint*, the
settings that identify it. A run resumes from it only with the same kind and
fingerprint. The older steps kept (``keep_checkpoints``) lie beside it as
``<stem>.step<S>.pt``. When a run ends, the newest is cut down to the returned
weights and the history (:meth:`StepCheckpoints.finish`), so that the same call
returns at once.

Every file is written to a temporary name and then renamed (:func:`save`), so an
interruption leaves the previous checkpoint whole.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn
from torch import Tensor

from .._settings import settings_diff

__all__ = ["FORMAT", "VERSION", "StepCheckpoints", "save", "state_copy"]

#: The ``format`` entry of every checkpoint.
FORMAT = "captum_vit.shapley.training"
#: Bumped when the payload changes; older checkpoints are refused.
VERSION = 2


def save(path: Path, payload: Dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` through a temporary file and a rename.

    Args:
        path: The checkpoint file (its folder is made if missing).
        payload: What :func:`torch.save` writes.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def state_copy(model: nn.Module) -> Dict[str, Tensor]:
    """A detached CPU copy of ``model``'s state dict.

    Args:
        model: Any module.

    Returns:
        The copied state dict.
    """
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def load(path: Path, kind: str, fingerprint: Dict[str, Any]) -> Dict[str, Any]:
    """Read a checkpoint made by a ``kind`` run with these settings.

    Args:
        path: The checkpoint file.
        kind: ``"surrogate"`` or ``"explainer"``.
        fingerprint: The settings that identify the run.

    Returns:
        The payload.

    Raises:
        ValueError: not a training checkpoint, another kind of run, an older
            format, or other settings (at most five named, with both values).
    """
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"checkpoint: {path} is not a captum-vit training checkpoint")
    if payload.get("kind") != kind:
        raise ValueError(
            f"checkpoint: {path} belongs to a {payload.get('kind')} run, not {kind}"
        )
    if payload.get("version") != VERSION:
        raise ValueError(
            f"checkpoint: {path} was written by an older captum-vit training loop; "
            "delete it to start again"
        )
    saved = payload.get("fingerprint", {})
    if saved != fingerprint:
        raise ValueError(
            f"checkpoint: {path} was written by a run with other settings ("
            + settings_diff(saved, fingerprint)
            + "); resume with the same settings, or delete the file to start again"
        )
    return payload


def older(path: Path, step: int) -> Path:
    """Where the step-``step`` checkpoint goes when a newer one replaces it.

    Args:
        path: The run's checkpoint file.
        step: The older checkpoint's step.

    Returns:
        ``<stem>.step<step, 8 digits><suffix>`` beside ``path``.
    """
    return path.with_name(f"{path.stem}.step{step:08d}{path.suffix}")


def older_all(path: Path) -> List[Path]:
    """The older step checkpoints beside ``path``, oldest first.

    Args:
        path: The run's checkpoint file.

    Returns:
        Their paths.
    """
    return sorted(path.parent.glob(f"{path.stem}.step*{path.suffix}"))


def prune(path: Path, keep: int) -> None:
    """Remove all but the newest ``keep`` older step checkpoints beside ``path``.

    Args:
        path: The run's checkpoint file.
        keep: Older checkpoints to keep.
    """
    files = older_all(path)
    for file in files[: max(0, len(files) - keep)]:
        file.unlink()


class StepCheckpoints:
    """The checkpoint files of one run.

    Args:
        path: The run's checkpoint file (the newest step).
        kind: ``"surrogate"`` or ``"explainer"``.
        fingerprint: The settings that identify the run.
        keep: Step checkpoints kept, the newest included (``0``: all of them go
            when the run ends).

    Attributes:
        step: The step of the checkpoint at :attr:`path`, as this process last read
            or wrote it (None: none yet).
    """

    def __init__(
        self, path: Path, kind: str, fingerprint: Dict[str, Any], keep: int
    ) -> None:
        self.path = path
        self.kind = kind
        self.fingerprint = fingerprint
        self.keep = keep
        self.step: Optional[int] = None

    def read(self) -> Optional[Dict[str, Any]]:
        """The newest checkpoint's payload, None when there is none.

        Raises:
            ValueError: as :func:`load`.
        """
        if not self.path.is_file():
            return None
        payload = load(self.path, self.kind, self.fingerprint)
        self.step = int(payload["step"])
        return payload

    def _payload(
        self, step: int, seconds: float, model: nn.Module, **rest: Any
    ) -> Dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "kind": self.kind,
            "fingerprint": self.fingerprint,
            "step": step,
            "seconds": seconds,
            "model": state_copy(model),
            **rest,
        }

    def write(
        self,
        step: int,
        seconds: float,
        model: nn.Module,
        optimizer: Dict[str, Any],
        scaler: Optional[Dict[str, Any]],
        history: Dict[str, Any],
        best: Optional[Dict[str, Tensor]],
        best_step: Optional[int],
    ) -> None:
        """The checkpoint of ``step``; the one it replaces (of :attr:`step`) is
        kept beside it when ``keep`` > 1, and the older ones are pruned to
        ``keep - 1``.

        Args:
            step: The step just done.
            seconds: Training and validation seconds so far.
            model: The trained model (its weights are copied).
            optimizer: The optimiser's state dict.
            scaler: The GradScaler's state dict (None without one).
            history: The run's history so far.
            best: The best-validation weights (written only when they are not
                ``model``'s, i.e. when ``best_step`` is not ``step``).
            best_step: Their step.
        """
        if self.keep > 1 and self.step not in (None, step) and self.path.is_file():
            self.path.replace(older(self.path, self.step))
        save(
            self.path,
            self._payload(
                step,
                seconds,
                model,
                optimizer=optimizer,
                scaler=scaler,
                history=history,
                best=None if best_step == step else best,
                best_step=best_step,
            ),
        )
        self.step = step
        prune(self.path, max(self.keep, 1) - 1)

    def finish(
        self, step: int, seconds: float, model: nn.Module, history: Dict[str, Any]
    ) -> None:
        """At the end of a run: the newest checkpoint becomes the returned weights
        and the history (no optimiser state, no second copy of the weights), so
        that the same call returns at once; with ``keep`` 0 every checkpoint goes.

        Args:
            step: The last step.
            seconds: Training and validation seconds.
            model: The returned model.
            history: The run's history.
        """
        if self.keep == 0:
            for path in [self.path, *older_all(self.path)]:
                path.unlink(missing_ok=True)
            return
        save(
            self.path,
            self._payload(
                step,
                seconds,
                model,
                optimizer=None,
                scaler=None,
                history=history,
                best=None,
                best_step=None,
                finished=True,
            ),
        )
