"""Scoped torch thread settings, so no function leaks a global thread count."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)``; restore the old value after.

    ``None`` or ``0`` leaves torch's setting alone. Small per-sample work (one MFCC, one
    image) runs many times faster on one thread than on several contended ones.
    """
    if not threads:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
