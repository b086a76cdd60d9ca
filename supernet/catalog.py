"""The calibrated supernets on disk, listed from their metadata alone (torch-free: ``tmpq supernets`` loads no
weights).

A supernet artifact is a directory holding :data:`META_FILE` (JSON: bits, settings, calibration, seconds, ...) and
its tensors. They live in the data directory's cache (``$TMPQ_DATA_DIR/supernets``, written by jobs) and, shipped
with a model, in ``<model>/tmpq-supernets`` (:data:`SHIPPED_DIR`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

#: The metadata file of a supernet artifact directory.
META_FILE = "supernet.json"
#: Its tensors (codes, scales, activation tables).
TENSORS_FILE = "supernet.safetensors"
#: A model directory's folder of pre-calibrated supernets.
SHIPPED_DIR = "tmpq-supernets"


def default_cache_dir() -> Path:
    """``$TMPQ_DATA_DIR/supernets``, or ``./data/supernets``."""
    return Path(os.environ.get("TMPQ_DATA_DIR", "data")) / "supernets"


@dataclass(frozen=True)
class SupernetEntry:
    """One artifact as its metadata describes it.

    Attributes:
        name: the directory name (the cache key, :func:`~supernet.identity.artifact_name`).
        path: the directory.
        source: ``cache`` (a data directory's) or ``shipped`` (with a model).
        model_hash: the hash of the model files it was calibrated for.
        bits: the calibrated bit options.
        strategy: the calibration strategy.
        calibration: the calibration settings (as saved).
        settings: the supernet's quantization settings (as saved).
        seconds: calibration seconds per bit option (empty when not recorded).
        size_bytes: bytes on disk (every file of the directory).
        modified: when the metadata was written (UTC).
        report: the calibration report (``supernet.calibration.report``; empty for artifacts written before it).
        problem: why the metadata could not be read (then only ``name``, ``path``, ``source``, ``size_bytes`` hold).
    """

    name: str
    path: Path
    source: str
    model_hash: str = ""
    bits: tuple[int, ...] = ()
    strategy: str = ""
    calibration: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: dict[int, float] = field(default_factory=dict)
    size_bytes: int = 0
    modified: datetime | None = None
    report: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None

    def quality(self) -> dict[int, float]:
        """The report's PSNR (dB) of each uniform bit option against FP (empty without a report)."""
        rows = self.report.get("bits") or {}
        return {int(b): float(r["psnr"]) for b, r in rows.items() if isinstance(r, dict) and "psnr" in r}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "name": self.name,
            "path": str(self.path),
            "source": self.source,
            "model_hash": self.model_hash,
            "bits": list(self.bits),
            "strategy": self.strategy,
            "calibration": self.calibration,
            "settings": self.settings,
            "seconds": {str(b): s for b, s in self.seconds.items()},
            "size_bytes": self.size_bytes,
            "modified": self.modified.isoformat() if self.modified is not None else None,
            "report": self.report,
            "problem": self.problem,
        }


def read_entry(directory: Path, source: str) -> SupernetEntry:
    """The entry of one artifact directory; a missing or unreadable :data:`META_FILE` is reported in ``problem``
    (a half-written or damaged artifact is listed, not skipped: a job would rebuild it)."""
    size = sum(p.stat().st_size for p in directory.iterdir() if p.is_file())
    meta_path = directory / META_FILE
    try:
        meta = json.loads(meta_path.read_text())
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
        calibration = dict(meta.get("calibration") or {})
        seconds = {int(b): float(s) for b, s in (meta.get("calibration_seconds") or {}).items()}
        return SupernetEntry(
            name=directory.name,
            path=directory,
            source=source,
            model_hash=str(meta.get("model_hash", "")),
            bits=tuple(int(b) for b in meta.get("bit_options", ())),
            strategy=str(calibration.get("strategy", "")),
            calibration=calibration,
            settings=dict(meta.get("settings") or {}),
            seconds=seconds,
            size_bytes=size,
            modified=datetime.fromtimestamp(meta_path.stat().st_mtime, tz=timezone.utc),
            report=dict((meta.get("calibration_metadata") or {}).get("report") or {}),
        )
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return SupernetEntry(directory.name, directory, source, size_bytes=size, problem=f"unreadable metadata: {why}")


def list_supernets(cache_dir: Path | None = None, model_dirs: list[Path] | None = None) -> list[SupernetEntry]:
    """Every artifact in ``cache_dir`` (default :func:`default_cache_dir`) and shipped in ``model_dirs``, newest
    first. Only artifact directories (holding :data:`META_FILE` or :data:`TENSORS_FILE`) are listed: the cache's
    ``calibration/`` (FP trajectories) is not one."""
    found: list[SupernetEntry] = []
    roots = [(cache_dir if cache_dir is not None else default_cache_dir(), "cache")]
    roots += [(m / SHIPPED_DIR, "shipped") for m in model_dirs or []]
    for root, source in roots:
        if not root.is_dir():
            continue
        for directory in sorted(p for p in root.iterdir() if p.is_dir()):
            if (directory / META_FILE).exists() or (directory / TENSORS_FILE).exists():
                found.append(read_entry(directory, source))
    epoch = datetime.fromtimestamp(0, tz=timezone.utc)
    return sorted(found, key=lambda e: e.modified or epoch, reverse=True)
