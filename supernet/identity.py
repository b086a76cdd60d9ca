"""The identity of a calibrated supernet artifact, torch-free: one function for every caller.

An artifact is keyed by the model's file hash, the calibrated bit-widths, the supernet's structure settings and
the calibration settings. The job driver (which caches it), the export route and the demo (which look it up) all
name it through :func:`supernet_artifact_name`, so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from supernet.calibration.settings import CalibrationSettings
from supernet.settings import SupernetSettings, canonical_key
from supernet.zoo.modeldir import model_hash

#: Format version of supernet artifacts (part of their cache key).
FORMAT_VERSION = 1


def quantized_bits(bit_options: Iterable[int]) -> list[int]:
    """The widths a supernet calibrates among a job's bit options (2..8; 16 means "leave in FP"), ascending."""
    return sorted({int(b) for b in bit_options if 2 <= int(b) <= 8})


def conditioned_identity(model_hash: str, condition_key: str | None) -> str:
    """What a model's artifacts are keyed by: its hash, and for a conditional model the key of the prompts and
    guidance it was calibrated on (``<hash>.<condition key>``)."""
    return f"{model_hash}.{condition_key}" if condition_key else model_hash


def cache_key(
    model_hash: str, bit_options: Iterable[int], settings: SupernetSettings, calib_settings: CalibrationSettings
) -> str:
    """The cache identity of a supernet artifact."""
    return canonical_key(
        {
            "format_version": FORMAT_VERSION,
            "model_hash": model_hash,
            "bit_options": sorted({int(b) for b in bit_options}),
            "settings": settings.to_dict(),
            "calibration": calib_settings.cache_dict(),
        }
    )


def artifact_name(
    model_hash: str, bit_options: Iterable[int], settings: SupernetSettings, calib_settings: CalibrationSettings
) -> str:
    """The directory name of an artifact in the cache (and in a model's shipped ``tmpq-supernets/``)."""
    return f"{model_hash}-{cache_key(model_hash, bit_options, settings, calib_settings)}"


def supernet_artifact_name(
    model_dir: str | Path,
    bit_options: Iterable[int],
    calibration: CalibrationSettings,
    *,
    known_hash: str | None = None,
    settings: SupernetSettings | None = None,
    condition_key: str | None = None,
) -> str:
    """The artifact name of a job's supernet.

    Args:
        model_dir: the model's diffusers directory.
        bit_options: the job's bit options (FP options are dropped).
        calibration: the job's calibration settings.
        known_hash: the directory's :func:`~supernet.zoo.modeldir.model_hash` when the caller has it already (a
            loaded model carries it), to skip hashing the weights again.
        settings: the supernet's structure settings (default: the defaults every job uses).
        condition_key: a conditional job's :meth:`~supernet.model_settings.ModelSettings.condition_key` (the
            supernet is calibrated on its prompts).
    """
    identity = conditioned_identity(known_hash or model_hash(Path(model_dir)), condition_key)
    return artifact_name(identity, quantized_bits(bit_options), settings or SupernetSettings(), calibration)
