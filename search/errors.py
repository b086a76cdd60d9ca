"""The project's error hierarchy: one base class, specific subclasses.

Lives in ``search`` because it is the torch-free base layer every other package may import.
The server maps each class to an HTTP status in one handler.
"""

from __future__ import annotations


class TmpqError(Exception):
    """Base class of every error tmpq raises on purpose."""


class ConfigError(TmpqError):
    """A user-supplied setting is invalid. ``field`` names it."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class InvalidCandidate(TmpqError):
    """A candidate does not fit the space or the supernet (unknown site, bit-width not offered, bad schedule)."""


class ModelLoadError(TmpqError):
    """A model directory is missing, not a diffusers checkpoint, or of an unsupported class."""

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class ScheduleError(TmpqError):
    """A sampling schedule is empty, out of range or not strictly descending."""


class VersionMismatchError(TmpqError):
    """A stored artifact was written by an incompatible format version or for another model."""


class StoreError(TmpqError):
    """A database operation failed; the transaction was rolled back."""


class NotFound(TmpqError):
    """A job, candidate or artifact does not exist."""


class Conflict(TmpqError):
    """The request conflicts with the current state (e.g. a reused submission id with another payload)."""


class StorageError(TmpqError):
    """A file or directory tmpq must write could not be written (disk full, read-only, no permission).

    ``path`` names the directory or file; the message says what was being written and why it failed.
    """

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason
