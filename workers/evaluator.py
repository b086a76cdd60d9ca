"""The in-process evaluator: candidates measured with the calibrated supernet, in this process.

Every candidate is sampled from the same noise (``seed``) on its own schedule and compared with the FP model's
samples from that noise at the long reference schedule: MSE is the default search objective (cheap, low
variance, any model); PSNR is reported beside it; FDD (testbed only: it needs the digits feature extractor) is
selectable and is what the final front is re-scored with. With a feature program the job supplies
(:mod:`supernet.feature_space`) every candidate also gets ``fd``, the Fréchet distance to the FP reference's samples
in that space. The Ray actors run exactly this class.
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

from search.baselines import uniform_bits
from search.candidate import Candidate
from search.errors import ConfigError
from search.evaluator import Evaluation
from supernet.feature_space import FeatureSpace
from supernet.metrics import FDDScorer, frechet_distance, image_metrics, mse
from supernet.model_settings import DTYPES
from supernet.models import features_for, load_model
from supernet.models.base import DiffusionAdapter
from supernet.precision import set_tf32, torch_dtype
from supernet.sampling import uniform_schedule
from workers.evaluation_settings import OBJECTIVES

log = logging.getLogger(__name__)


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
        dtype: compute dtype of the FP reference and the candidates (``model.dtype``): the supernet, calibrated in
            float32, is cast to it.
        allow_tf32: TF32 in CUDA matmuls and convolutions (``model.tf32``).
        threads: torch intra-op threads (``None``: leave as is).
        reference: compute the FP reference (needed for MSE/PSNR; FDD re-scoring turns it off).
        solver: what samples the candidates and the FP reference (``ddim`` or ``dpmsolver++``).
        conditioning: a conditional model's :class:`~supernet.conditioning.Conditioning` as a dict (``None`` for an
            unconditional model).
        prompt_labels: ``{prompt: class}`` when each prompt names a class the feature extractor predicts (the
            digits-sd testbed): every evaluation then records ``prompt_accuracy``, the share of samples whose class
            is the one their prompt names.
        feature_program: a ``torch.export`` feature program file (the job's ``evaluation.features``): every
            evaluation with the FP reference then records ``fd``, the Fréchet distance to the reference's samples in
            that space.
        schedule_reference: also compare every candidate with the FP model at the candidate's own schedule (same
            noise; computed once per schedule): ``quant_mse``, ``quant_psnr``, ``quant_ssim``, … are then the error
            the quantization adds, beside ``mse``, … against the long reference (the total error). Needs the
            reference and decoded samples.
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
    dtype: str = "float32"
    allow_tf32: bool = False
    threads: int | None = None
    reference: bool = True
    solver: str = "ddim"
    conditioning: dict[str, Any] | None = None
    prompt_labels: dict[str, int] | None = None
    feature_program: str | None = None
    schedule_reference: bool = False

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ConfigError("objective", f"must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.samples < 2:
            raise ConfigError("samples", f"must be at least 2, got {self.samples}")
        if self.reference_steps < 1:
            raise ConfigError("reference_steps", f"must be at least 1, got {self.reference_steps}")
        if self.objective != "fdd" and not self.reference:
            raise ConfigError("reference", f"the {self.objective} objective needs the FP reference")
        if self.batch_size < 1:
            raise ConfigError("batch_size", f"must be at least 1, got {self.batch_size}")
        if self.dtype not in DTYPES:
            raise ConfigError("dtype", f"must be one of {list(DTYPES)}, got {self.dtype!r}")
        if self.objective == "fd" and not self.feature_program:
            raise ConfigError("objective", "fd needs a feature program (feature_program)")
        if self.schedule_reference and (not self.reference or self.objective == "latent_mse"):
            raise ConfigError("schedule_reference", "needs the FP reference and decoded samples (not latent_mse)")

    def resolved_features_path(self) -> str | None:
        """The feature extractor to use: the configured one, or the shipped one for the shipped testbed."""
        if self.features_path:
            return self.features_path
        found = features_for(self.model_path)
        return str(found) if found is not None else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class InProcessEvaluator:
    """Evaluates candidates with a calibrated supernet in this process (implements ``search.Evaluator``).

    ``model`` is the adapter the supernet wraps: its sampler runs the quantized denoiser as assembled.
    """

    def __init__(
        self, model: DiffusionAdapter, supernet: Any, config: EvaluatorConfig, scorer: FDDScorer | None = None
    ) -> None:
        self.model = model
        self.supernet = supernet
        self.config = config
        self.scorer = scorer
        set_tf32(config.allow_tf32)
        dtype = torch_dtype(config.dtype)
        if model.dtype != dtype:
            supernet.to(dtype=dtype)
        if config.objective == "fdd" and scorer is None:
            raise ConfigError(
                "objective", "fdd needs a feature extractor (features_path); only the shipped testbed has one built in"
            )
        self.sampler = model.sampler(batch_size=config.batch_size, solver=config.solver)
        #: ``latent_mse`` compares samples before the decoder (cheaper on a latent model).
        self._decode = config.objective != "latent_mse"
        self._reference: torch.Tensor | None = None
        self.space = FeatureSpace.load(config.feature_program) if config.feature_program else None
        self._reference_features: Any = None
        #: FP samples at each candidate schedule seen (``schedule_reference``), keyed by the timesteps.
        self._at_schedule: dict[tuple[int, ...], torch.Tensor] = {}

    def fp_samples(self, schedule: Sequence[int]) -> torch.Tensor:
        """The FP model's samples from the evaluation noise on ``schedule``."""
        with self.supernet.assembled(self.supernet.uniform(32, 32, schedule)):
            return self.sampler.sample(tuple(schedule), self.config.samples, self.config.seed, decode=self._decode)

    @property
    def reference(self) -> torch.Tensor:
        """The FP model's samples from the evaluation noise at the uniform reference schedule (computed once)."""
        if self._reference is None:
            start = time.perf_counter()
            self._reference = self.fp_samples(
                uniform_schedule(self.config.reference_steps, self.model.num_train_timesteps)
            )
            log.info(
                "FP reference: %d samples at %d steps in %.1f s",
                self.config.samples,
                self.config.reference_steps,
                time.perf_counter() - start,
            )
        return self._reference

    @property
    def reference_features(self) -> Any:
        """The FP reference's samples in the job's feature space, ``(N, D)`` (computed once)."""
        if self._reference_features is None:
            if self.space is None:
                raise ConfigError("feature_program", "no feature program was given")
            self._reference_features = self.space.features(self.reference)
        return self._reference_features

    @classmethod
    def from_config(cls, config: EvaluatorConfig) -> InProcessEvaluator:
        """Load the model and the supernet artifact named by ``config``."""
        from supernet.artifact import load_supernet

        if config.threads:
            torch.set_num_threads(config.threads)
        model = load_model(config.model_path, device=config.device, conditioning=config.conditioning)
        supernet = load_supernet(config.supernet_path, model, restorable=False)  # this evaluator owns the model
        features = config.resolved_features_path()
        scorer = FDDScorer.for_testbed(features) if features else None
        return cls(model, supernet, config, scorer)

    @classmethod
    def from_payload(cls, config: EvaluatorConfig, payload: Mapping[str, Mapping[str, bytes]]) -> InProcessEvaluator:
        """Build from file contents shipped through Ray's object store (no shared filesystem needed).

        ``payload`` maps ``"model"`` and ``"supernet"`` to ``{relative path: bytes}`` (see :func:`pack_dir`), and
        ``"features"`` to ``{file name: bytes}`` of the feature program when the job has one.
        """
        root = Path(tempfile.mkdtemp(prefix="tmpq-payload-"))
        model_dir = unpack_dir(payload["model"], root / "model")
        supernet_dir = unpack_dir(payload["supernet"], root / "supernet")
        program = None
        if "features" in payload:
            (name,) = payload["features"]
            program = str(unpack_dir(payload["features"], root / "features") / name)
        local = EvaluatorConfig(
            **{
                **config.to_dict(),
                "model_path": str(model_dir),
                "supernet_path": str(supernet_dir),
                "features_path": config.resolved_features_path(),
                "feature_program": program,
            }
        )
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
                images = self.sampler.sample(
                    candidate.timesteps, self.config.samples, self.config.seed, decode=self._decode
                )
            seconds = time.perf_counter() - start
            if self.config.schedule_reference and uniform_bits(candidate) == (32, 32):
                self._at_schedule.setdefault(candidate.timesteps, images)  # it is the FP model at this schedule
            extra: dict[str, Any] = {"samples": self.config.samples, "seconds": round(seconds, 4)}
            if self.config.reference and not self._decode:
                extra["latent_mse"] = mse(images, self.reference)
            elif self.config.reference:
                extra.update(image_metrics(images, self.reference))
                if self.config.schedule_reference:
                    extra.update(image_metrics(images, self._fp_at(candidate.timesteps), prefix="quant_"))
                if self.space is not None:
                    extra["fd"] = frechet_distance(self.space.features(images), self.reference_features)
            if self.scorer is not None and self.config.objective == "fdd":
                extra["fdd"] = self.scorer.score(images)
            accuracy = self._prompt_accuracy(images) if self._decode else None
            if accuracy is not None:
                extra["prompt_accuracy"] = accuracy
            quality = extra[self.config.objective]
            if not math.isfinite(quality):
                return Evaluation.failure(
                    key, f"quality is not finite ({quality})", cost.bitops, cost.weight_bytes, extra
                )
            return Evaluation(key, float(quality), cost.bitops, cost.weight_bytes, extra)
        except Exception as exc:  # a candidate's failure is data, not a crash of the search
            log.warning("candidate %s failed: %s", key, exc)
            return Evaluation.failure(key, f"{type(exc).__name__}: {exc}")

    def _fp_at(self, schedule: tuple[int, ...]) -> torch.Tensor:
        if schedule not in self._at_schedule:
            self._at_schedule[schedule] = self.fp_samples(schedule)
        return self._at_schedule[schedule]

    def _prompt_accuracy(self, images: torch.Tensor) -> float | None:
        """The share of ``images`` whose predicted class is the one their prompt names (``None`` without labels)."""
        labels, conditioning = self.config.prompt_labels, getattr(self.model, "conditioning", None)
        if not labels or self.scorer is None or conditioning is None:
            return None
        prompts = [conditioning.prompts[i] for i in conditioning.prompt_index(int(images.shape[0]))]
        keep = [i for i, p in enumerate(prompts) if p in labels]
        if not keep:
            return None
        target = torch.tensor([labels[prompts[i]] for i in keep])
        return float((self.scorer.classes(images[keep]) == target).float().mean())


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
