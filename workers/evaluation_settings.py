"""The ``evaluation`` section of a job spec: :class:`EvaluationSettings`, torch-free (the server validates it).

How each candidate is measured: the objective, how many samples from the same noise, the FP reference schedule,
how many samples re-score the final front with FDD, the batch size, and the run-time backend whose latency is
measured (a per-site table, once per machine and batch size) so the search can rank candidates by milliseconds.
"""

from __future__ import annotations

import dataclasses
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.errors import ConfigError, ModelLoadError
from search.fields import check_known, read_choice, read_int, shown
from supernet.model_settings import resolve_model_path
from supernet.settings import LATENCY_BACKENDS

EVALUATION_SETTINGS_VERSION = 1
#: ``latent_mse`` compares the samples before the VAE decodes them: cheaper on a latent model (no decode); ``fd`` is
#: the Fréchet distance to the FP reference's samples in the feature space the job supplies (``features``).
OBJECTIVES = ("mse", "latent_mse", "fdd", "fd")

MAX_SAMPLES = 10_000
MAX_RESCORE_SAMPLES = 50_000
MAX_REFERENCE_STEPS = 100_000
MAX_BATCH_SIZE = 4096
#: FDD re-scoring of the final front when the model has a feature extractor and the job does not say.
DEFAULT_RESCORE_SAMPLES = 1024


@dataclass(frozen=True)
class EvaluationSettings:
    """How candidates are measured (the ``evaluation`` section).

    Attributes:
        objective: ``mse`` (against the FP model's decoded samples from the same noise, prompts and solver at
            ``reference_steps``; any model), ``latent_mse`` (the same before decoding: no VAE pass on a latent model)
            ``fdd`` (Fréchet distance to real data in a feature extractor's space; only models that have one) or ``fd``
            (Fréchet distance to the FP reference's decoded samples in the space of ``features``).
        samples: images per candidate evaluation, the same noise for every candidate (2..10,000).
        reference_steps: uniform DDIM steps of the FP reference (≤ the model's training timesteps).
        rescore_samples: images the final front is re-scored with (FDD; 0 = no re-scoring; needs a feature
            extractor). ``None`` (the default) resolves against the model: :data:`DEFAULT_RESCORE_SAMPLES` when it
            has a feature extractor, else 0.
        batch_size: images per forward pass.
        features: a feature extractor the user supplies, a ``torch.export`` program file (see
            :mod:`supernet.feature_space`), absolute or under the model root; every evaluation then records ``fd``.
        latency_backend: a run-time backend (``cpu-int8``) to measure a per-site latency table on (cached per
            machine and batch size): every candidate then records ``latency_ms``, its predicted milliseconds of
            denoising on that backend, and ``search.cost: latency`` can minimise it. ``None``: no latency.
        latency_batch_size: the batch size the latency is measured at (``None``: ``batch_size``).
        version: format version of this section.
    """

    objective: str = "mse"
    samples: int = 64
    reference_steps: int = 100
    rescore_samples: int | None = None
    batch_size: int = 64
    features: str | None = None
    latency_backend: str | None = None
    latency_batch_size: int | None = None
    version: int = EVALUATION_SETTINGS_VERSION

    def __post_init__(self) -> None:
        if self.version != EVALUATION_SETTINGS_VERSION:
            raise ConfigError(
                "version", f"{shown(self.version)} is not supported (expected {EVALUATION_SETTINGS_VERSION})"
            )
        read_choice(self.objective, "objective", OBJECTIVES)
        read_int(self.samples, "samples", 2, MAX_SAMPLES)
        read_int(self.reference_steps, "reference_steps", 1, MAX_REFERENCE_STEPS)
        if self.rescore_samples is not None:
            read_int(self.rescore_samples, "rescore_samples", 0, MAX_RESCORE_SAMPLES)
            if self.rescore_samples == 1:
                raise ConfigError("rescore_samples", "a Fréchet distance needs at least 2 samples (or 0: off)")
        read_int(self.batch_size, "batch_size", 1, MAX_BATCH_SIZE)
        if self.features is not None and (not isinstance(self.features, str) or not self.features.strip()):
            raise ConfigError("features", f"expected the path of a feature program file, got {shown(self.features)}")
        if self.latency_backend is not None:
            read_choice(self.latency_backend, "latency_backend", LATENCY_BACKENDS)
        if self.latency_batch_size is not None:
            read_int(self.latency_batch_size, "latency_batch_size", 1, MAX_BATCH_SIZE)
            if self.latency_backend is None:
                raise ConfigError("latency_batch_size", "is set but latency_backend is not (nothing is measured)")
        if self.objective == "fd" and self.features is None:
            raise ConfigError("objective", "fd needs a feature space: set evaluation.features to a program file")
        if self.objective == "fd" and self.samples < 4:
            raise ConfigError("samples", "a Fréchet distance needs at least 4 samples per candidate")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvaluationSettings:
        """From a plain mapping; unknown keys, wrong types and bad values raise ConfigError naming the field."""
        if not isinstance(data, Mapping):
            raise ConfigError("", f"expected a mapping, got {type(data).__name__}")
        check_known(data, tuple(f.name for f in dataclasses.fields(cls)), "")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-ready form."""
        return dataclasses.asdict(self)

    @property
    def latency_batch(self) -> int:
        """The batch size the latency table is measured at."""
        return self.latency_batch_size if self.latency_batch_size is not None else self.batch_size

    def replace(self, **changes: Any) -> EvaluationSettings:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def resolved_features(self, model_root: str | Path) -> EvaluationSettings:
        """These settings with ``features`` as an absolute, symlink-free path to a file under ``model_root`` (a
        relative one is taken relative to it) that is a zip archive, as ``torch.export.save`` writes; ConfigError naming
        ``features`` otherwise. Loading the program (torch) is left to the job, before calibration."""
        if self.features is None:
            return self
        try:
            path = resolve_model_path(self.features, model_root)
        except ModelLoadError as exc:
            raise ConfigError("features", exc.reason) from None
        if not path.is_file():
            raise ConfigError("features", f"{self.features} is not a file")
        if not zipfile.is_zipfile(path):
            raise ConfigError(
                "features", f"{self.features} is not a torch.export program (torch.export.save writes a zip archive)"
            )
        return self.replace(features=str(path))

    def resolved_for_model(self, num_train_timesteps: int, has_features: bool) -> EvaluationSettings:
        """These settings checked against the model, with ``rescore_samples`` resolved.

        Raises ConfigError for what the model cannot run: a reference schedule longer than its training
        timesteps, FDD (objective or re-scoring) without a feature extractor.
        """
        if self.reference_steps > num_train_timesteps:
            raise ConfigError(
                "reference_steps", f"{self.reference_steps} is more than the model's {num_train_timesteps} timesteps"
            )
        if self.objective == "fdd" and not has_features:
            raise ConfigError(
                "objective",
                "fdd needs a feature extractor and this model has none (only the shipped testbed has one); use mse",
            )
        if self.rescore_samples is None:
            return self.replace(rescore_samples=DEFAULT_RESCORE_SAMPLES if has_features else 0)
        if self.rescore_samples and not has_features:
            raise ConfigError(
                "rescore_samples",
                "re-scoring with FDD needs a feature extractor and this model has none (only the shipped testbed "
                "has one); set it to 0 or leave it out",
            )
        return self
