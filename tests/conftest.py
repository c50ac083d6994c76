"""Shared fixtures. The plain helpers (tiny models, oracles, state snapshots) live in
``helpers.py``; test files import them with ``from helpers import ...``."""

from __future__ import annotations

from typing import Iterator

import pytest
import torch
from helpers import FAMILIES

# Tiny models gain nothing from a second thread, and on a busy 2-core machine two
# threads stall each other (~8x slower); one thread keeps the suite fast and steady.
torch.set_num_threads(1)


@pytest.fixture(params=list(FAMILIES))
def family(request) -> str:
    """Each timm family of ``helpers.FAMILIES`` in turn."""
    return request.param


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread (no OpenMP barriers on busy CPUs).

    A test module asks for it with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``; the thread count is
    restored when the module ends.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
