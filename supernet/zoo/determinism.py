"""Deterministic training that leaves torch's process-wide settings as it found them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def deterministic_torch(threads: int | None = None) -> Iterator[None]:
    """Turn on deterministic algorithms (and set the intra-op thread count) for the block; restore both after.

    The testbeds are trained deterministically from a seed; a caller in the same process (a test, the CLI that
    trains and then calibrates) must not inherit the training's settings.
    """
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    was_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        torch.set_num_threads(was_threads)
