"""What the search needs from a worker: the :class:`Evaluator` protocol and its result, :class:`Evaluation`.

Workers implement the protocol (in-process with the torch supernet, or a pool of Ray actors); the search only
calls :meth:`Evaluator.evaluate`. A candidate that fails (an exception, a NaN) is still returned, with
``error`` set: it is recorded and treated as infeasible, never dropped.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

from search.candidate import Candidate
from search.cost import CostModel
from search.errors import TmpqError
from search.spec import COSTS

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Evaluation:
    """The measured objectives of one candidate.

    Attributes:
        key: ``Candidate.key()`` of the evaluated candidate.
        quality: lower is better (e.g. MSE against the FP reference); NaN or inf when it failed.
        bitops: total BitOps of the schedule (from the cost model).
        weight_bytes: weight storage of the assembled network.
        extra: other metrics (PSNR, FDD, seconds, …), JSON-ready values.
        error: why the evaluation failed; ``None`` when it succeeded.
        latency_ms: predicted milliseconds of the schedule's denoiser steps on the job's run-time backend, from
            its measured latency table (NaN when the job has none).
    """

    key: str
    quality: float
    bitops: float
    weight_bytes: float
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    latency_ms: float = math.nan

    @property
    def ok(self) -> bool:
        """Succeeded with a finite quality."""
        return self.error is None and math.isfinite(self.quality)

    def cost(self, axis: str = "bitops") -> float:
        """The cost objective on ``axis``: ``bitops`` or ``latency`` (milliseconds)."""
        if axis == "bitops":
            return self.bitops
        if axis == "latency":
            return self.latency_ms
        raise ValueError(f"unknown cost axis {axis!r} (expected one of {COSTS})")

    @classmethod
    def failure(
        cls,
        key: str,
        error: str,
        bitops: float = math.nan,
        weight_bytes: float = math.nan,
        extra: Mapping[str, Any] | None = None,
    ) -> Evaluation:
        """A failed evaluation (quality NaN, ``error`` set)."""
        return cls(key, math.nan, bitops, weight_bytes, dict(extra or {}), error)

    def sanitized(self) -> Evaluation:
        """This evaluation, with ``error`` set when the quality is not a finite number."""
        if self.error is None and not (isinstance(self.quality, int | float) and math.isfinite(self.quality)):
            return replace(self, error=f"quality is not finite: {self.quality!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (NaN qualities become ``None``)."""
        quality = self.quality if math.isfinite(self.quality) else None
        return {
            "key": self.key,
            "quality": quality,
            "bitops": self.bitops,
            "weight_bytes": self.weight_bytes,
            "extra": dict(self.extra),
            "error": self.error,
            "latency_ms": self.latency_ms if math.isfinite(self.latency_ms) else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Evaluation:
        """Inverse of :meth:`to_dict`."""
        quality = data.get("quality")
        latency = data.get("latency_ms")
        return cls(
            key=str(data["key"]),
            quality=math.nan if quality is None else float(quality),
            bitops=float(data["bitops"]),
            weight_bytes=float(data["weight_bytes"]),
            extra=dict(data.get("extra") or {}),
            error=data.get("error"),
            latency_ms=math.nan if latency is None else float(latency),
        )


@runtime_checkable
class Evaluator(Protocol):
    """Measures candidates. Must return one :class:`Evaluation` per candidate (any order; matched by key),
    catching per-candidate failures into ``Evaluation.error`` rather than raising."""

    def evaluate(self, candidates: Sequence[Candidate]) -> list[Evaluation]:
        """Evaluate every candidate; the same candidate must always get the same quality (fixed noise)."""
        ...


class EvaluatorUnavailableError(TmpqError):
    """Raised by an evaluator for a failure that is not the candidates' fault (e.g. the worker pool is gone).

    The search stops with this error instead of recording the candidates as failed.
    """


def evaluate_safely(evaluator: Evaluator, candidates: Sequence[Candidate], cost_model: CostModel) -> list[Evaluation]:
    """One sanitised :class:`Evaluation` per candidate, in order, whatever the evaluator does.

    An exception from a batch is retried candidate by candidate; a candidate whose evaluation raises, is
    missing from the result, or has a non-finite quality is recorded as failed. BitOps and weight bytes are
    always the cost model's (a differing value from the evaluator is logged).
    :class:`EvaluatorUnavailableError` propagates.
    """
    if not candidates:
        return []
    try:
        results = list(evaluator.evaluate(list(candidates)))
    except EvaluatorUnavailableError:
        raise
    except Exception as exc:
        if len(candidates) == 1:
            results = [Evaluation.failure(candidates[0].key(), f"{type(exc).__name__}: {exc}")]
        else:
            logger.warning("evaluating a batch of %d failed (%s); retrying one by one", len(candidates), exc)
            results = [e for c in candidates for e in evaluate_safely(evaluator, [c], cost_model)]
    by_key = {e.key: e for e in results if isinstance(e, Evaluation)}
    return [
        priced(
            by_key.get(c.key()) or Evaluation.failure(c.key(), "the evaluator returned no result"),
            c,
            cost_model,
        )
        for c in candidates
    ]


def priced(evaluation: Evaluation, candidate: Candidate, cost_model: CostModel) -> Evaluation:
    """``evaluation`` sanitised, with the cost model's BitOps, weight bytes and latency for ``candidate``."""
    cost = cost_model.cost(candidate)
    reported = evaluation.bitops
    if evaluation.ok and math.isfinite(reported) and not math.isclose(reported, cost.bitops, rel_tol=1e-6):
        logger.warning(
            "candidate %s: evaluator reports %.6g BitOps, cost model %.6g; using the cost model",
            candidate.key(),
            reported,
            cost.bitops,
        )
    return replace(
        evaluation.sanitized(), bitops=cost.bitops, weight_bytes=cost.weight_bytes, latency_ms=cost.latency_ms
    )
