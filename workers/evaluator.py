"""The in-process evaluator: candidates measured with the calibrated supernet, in this process.

Every candidate is sampled from the same noise (``seed``) on its own schedule and compared with the FP model's
samples from that noise at the long reference schedule: MSE is the default search objective (cheap, low
variance, any model); PSNR is reported beside it; FDD (testbed only: it needs the digits feature extractor) is
selectable and is what the final front is re-scored with. The Ray actors run exactly this class.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from search.candidate import Candidate
from search.errors import ConfigError
from search.evaluator import Evaluation
from supernet.metrics import FDDScorer, mse, psnr
from supernet.sampling import uniform_schedule
from supernet.zoo.features import FEATURES_DIR
from supernet.zoo.loader import DiffusionModel, load_model
from supernet.zoo.testbed import TESTBED_DIR

log = logging.getLogger(__name__)

OBJECTIVES = ("mse", "fdd")


@dataclass(frozen=True)
class EvaluatorConfig:
    """Everything an evaluator needs, picklable, so a Ray actor on another node can build the same one.

    Attributes:
        model_path: the diffusers checkpoint directory.
        supernet_path: the calibrated supernet artifact directory (``supernet.artifact``).
        samples: images per candidate (same noise for every candidate).
        seed: the noise seed.
        reference_steps: uniform DDIM steps of the FP reference.
        objective: ``mse`` (vs the FP reference) or ``fdd`` (vs real data; needs a feature extractor).
        features_path: feature extractor for FDD; defaults to the shipped digits classifier for the testbed.
        batch_size: images per forward.
        device: ``cpu`` or ``cuda[:i]``.
        threads: torch intra-op threads (``None``: leave as is).
        reference: compute the FP reference (needed for MSE/PSNR; FDD re-scoring turns it off).
    """

    model_path: str
    supernet_path: str
    samples: int = 64
    seed: int = 0
    reference_steps: int = 100
    objective: str = "mse"
    features_path: str | None = None
    batch_size: int = 64
    device: str = "cpu"
    threads: int | None = None
    reference: bool = True

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ConfigError("objective", f"must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.samples < 2:
            raise ConfigError("samples", f"must be at least 2, got {self.samples}")
        if self.reference_steps < 1:
            raise ConfigError("reference_steps", f"must be at least 1, got {self.reference_steps}")
        if self.objective == "mse" and not self.reference:
            raise ConfigError("reference", "the mse objective needs the FP reference")
        if self.batch_size < 1:
            raise ConfigError("batch_size", f"must be at least 1, got {self.batch_size}")

    def resolved_features_path(self) -> str | None:
        """The feature extractor to use: the configured one, or the shipped one for the shipped testbed."""
        if self.features_path:
            return self.features_path
        if Path(self.model_path).resolve() == TESTBED_DIR.resolve():
            return str(FEATURES_DIR)
        return None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class InProcessEvaluator:
    """Evaluates candidates with a calibrated supernet in this process (implements ``search.Evaluator``)."""

    def __init__(self, model: DiffusionModel, supernet: Any, config: EvaluatorConfig,
                 scorer: FDDScorer | None = None) -> None:
        self.model = model
        self.supernet = supernet
        self.config = config
        self.scorer = scorer
        if config.objective == "fdd" and scorer is None:
            raise ConfigError("objective", "fdd needs a feature extractor (features_path); only the shipped testbed "
                              "has one built in")
        self.sampler = model.sampler(batch_size=config.batch_size)
        self._reference: torch.Tensor | None = None

    @property
    def reference(self) -> torch.Tensor:
        """The FP model's samples from the evaluation noise at the uniform reference schedule (computed once)."""
        if self._reference is None:
            start = time.perf_counter()
            schedule = uniform_schedule(self.config.reference_steps, self.model.num_train_timesteps)
            with self.supernet.assembled(self.supernet.uniform(32, 32, schedule)):
                self._reference = self.sampler.sample(schedule, self.config.samples, self.config.seed)
            log.info("FP reference: %d samples at %d steps in %.1f s", self.config.samples,
                     self.config.reference_steps, time.perf_counter() - start)
        return self._reference

    @classmethod
    def from_config(cls, config: EvaluatorConfig) -> InProcessEvaluator:
        """Load the model and the supernet artifact named by ``config``."""
        from supernet.artifact import load_supernet

        if config.threads:
            torch.set_num_threads(config.threads)
        model = load_model(config.model_path, device=config.device)
        supernet = load_supernet(config.supernet_path, model)
        features = config.resolved_features_path()
        scorer = FDDScorer.for_testbed(features) if features else None
        return cls(model, supernet, config, scorer)

    @classmethod
    def from_payload(cls, config: EvaluatorConfig, payload: Mapping[str, Mapping[str, bytes]]) -> InProcessEvaluator:
        """Build from file contents shipped through Ray's object store (no shared filesystem needed).

        ``payload`` maps ``"model"`` and ``"supernet"`` to ``{relative path: bytes}`` (see :func:`pack_dir`).
        """
        root = Path(tempfile.mkdtemp(prefix="tmpq-payload-"))
        model_dir = unpack_dir(payload["model"], root / "model")
        supernet_dir = unpack_dir(payload["supernet"], root / "supernet")
        local = EvaluatorConfig(**{**config.to_dict(), "model_path": str(model_dir),
                                   "supernet_path": str(supernet_dir),
                                   "features_path": config.resolved_features_path()})
        return cls.from_config(local)

    def evaluate(self, candidates: Sequence[Candidate]) -> list[Evaluation]:
        """One evaluation per candidate, in order; a failing candidate is returned with ``error`` set."""
        return [self._evaluate_one(c) for c in candidates]

    def _evaluate_one(self, candidate: Candidate) -> Evaluation:
        key = candidate.key()
        try:
            cost = self.supernet.cost(candidate)
            start = time.perf_counter()
            with self.supernet.assembled(candidate):
                images = self.sampler.sample(candidate.timesteps, self.config.samples, self.config.seed)
            seconds = time.perf_counter() - start
            extra: dict[str, Any] = {"samples": self.config.samples, "seconds": round(seconds, 4)}
            if self.config.reference:
                extra["mse"] = mse(images, self.reference)
                extra["psnr"] = _finite_or_none(psnr(images, self.reference))
            if self.scorer is not None and self.config.objective == "fdd":
                extra["fdd"] = self.scorer.score(images)
            quality = extra["fdd"] if self.config.objective == "fdd" else extra["mse"]
            if not math.isfinite(quality):
                return Evaluation.failure(key, f"quality is not finite ({quality})", cost.bitops,
                                          cost.weight_bytes, extra)
            return Evaluation(key, float(quality), cost.bitops, cost.weight_bytes, extra)
        except Exception as exc:  # a candidate's failure is data, not a crash of the search
            log.warning("candidate %s failed: %s", key, exc)
            return Evaluation.failure(key, f"{type(exc).__name__}: {exc}")


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def pack_dir(path: str | Path) -> dict[str, bytes]:
    """Every file under ``path`` as ``{relative posix path: bytes}``."""
    root = Path(path)
    return {f.relative_to(root).as_posix(): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file()}


def unpack_dir(files: Mapping[str, bytes], dest: str | Path) -> Path:
    """Write a :func:`pack_dir` mapping under ``dest`` (refusing paths that escape it)."""
    root = Path(dest).resolve()
    for rel, data in files.items():
        target = (root / rel).resolve()
        if root not in target.parents:
            raise ValueError(f"payload path {rel!r} escapes the destination")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return root
