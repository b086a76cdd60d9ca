"""Checkpoints of a running search: everything needed to resume it with the same result.

A checkpoint holds the strategy (with its random generator state; for NSGA-II the pickled pymoo algorithm),
the evaluation cache, the hypervolume scale and history, and a fingerprint of the settings that must not
change on resume. It is a pickle: load only checkpoints this project wrote (pickle runs code on load). Files
are written atomically (temporary file in the same directory, fsync, rename).
"""

from __future__ import annotations

import os
import pickle
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from search.cache import EvaluationCache
from search.errors import VersionMismatchError
from search.evaluator import Evaluation

CHECKPOINT_VERSION = 1


@dataclass
class Checkpoint:
    """State of a search after ``generation`` completed generations."""

    fingerprint: dict[str, Any]
    generation: int
    strategy: Any
    cache: EvaluationCache
    front: list[Evaluation]
    quality_ref: float | None
    hypervolumes: list[float] = field(default_factory=list)
    stopped: str | None = None
    version: int = CHECKPOINT_VERSION

    def to_bytes(self) -> bytes:
        return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def from_bytes(cls, data: bytes) -> Checkpoint:
        """Inverse of :meth:`to_bytes`; VersionMismatchError for another format."""
        obj = pickle.loads(data)  # our own checkpoints only (see module docstring)
        if not isinstance(obj, cls) or getattr(obj, "version", None) != CHECKPOINT_VERSION:
            raise VersionMismatchError(f"not a version-{CHECKPOINT_VERSION} search checkpoint")
        return obj

    def save(self, path: str | Path) -> None:
        """Write atomically: a reader sees the old file or the new one, never a torn one."""
        write_atomic(Path(path), self.to_bytes())

    @classmethod
    def load(cls, path: str | Path) -> Checkpoint:
        return cls.from_bytes(Path(path).read_bytes())


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
