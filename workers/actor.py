"""The Ray evaluation actor and the factory protocol it builds its evaluator with.

An actor is created once per slot of a :class:`workers.pool.RayEvaluator`. At creation it receives a small,
picklable :class:`EvaluatorFactory` (and, in ``object_store`` mode, the model and supernet files as bytes,
resolved by Ray from one ``ObjectRef`` shared by every actor), sets its torch threads, picks its device and
builds its evaluator once. Each task then carries only candidate dicts and returns evaluation dicts.

This module does not import Ray: the pool wraps :class:`EvaluationActor` with ``ray.remote`` at creation time,
so the same class also runs in-process (e.g. to check that both paths give bit-identical results).
"""

from __future__ import annotations

import logging
import os
import resource
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from search.candidate import Candidate
from search.evaluator import Evaluation, Evaluator

logger = logging.getLogger(__name__)

#: What the driver ships to every actor in ``object_store`` mode (the factory defines its layout).
Payload = Mapping[str, Any]


@dataclass(frozen=True)
class WorkerContext:
    """Where an evaluator is being built.

    Attributes:
        device: ``"cpu"`` or ``"cuda"`` (an actor with GPUs gets Ray's ``CUDA_VISIBLE_DEVICES``).
        threads: torch intra-op threads (already set when the factory is called).
        slot: the pool slot the actor serves (stable across replacements).
    """

    device: str = "cpu"
    threads: int = 1
    slot: int = 0


@runtime_checkable
class EvaluatorFactory(Protocol):
    """Builds one evaluator per actor. Must be picklable and importable on every node (keep it a small dataclass).

    ``payload`` runs on the driver, once per pool, only in ``object_store`` mode; ``build`` runs in the actor.
    """

    def payload(self) -> Payload:
        """The files the evaluator needs, read on the driver (object-store mode)."""
        ...

    def build(self, context: WorkerContext, payload: Payload | None) -> Evaluator:
        """The evaluator; ``payload`` is ``None`` in path mode (read the files from the shared paths)."""
        ...


@dataclass(frozen=True)
class InProcessFactory:
    """Factory of :class:`workers.evaluator.InProcessEvaluator`: the supernet evaluator the search uses.

    The actor's device and threads override the config's (``num_gpus > 0`` runs on CUDA).
    """

    config: Any  # workers.evaluator.EvaluatorConfig (not imported here: it pulls in torch)

    def payload(self) -> Payload:
        """The model directory, the supernet artifact directory and the job's feature program file (when it has
        one), as ``{name: {relative path: bytes}}``."""
        from workers.evaluator import pack_dir

        payload = {"model": pack_dir(self.config.model_path), "supernet": pack_dir(self.config.supernet_path)}
        program = getattr(self.config, "feature_program", None)
        if program:
            payload["features"] = {Path(program).name: Path(program).read_bytes()}
        return payload

    def build(self, context: WorkerContext, payload: Payload | None) -> Evaluator:
        """Load the model and supernet from the config's paths, or from the shipped bytes."""
        from workers.evaluator import InProcessEvaluator

        config = self.config
        names = {f.name for f in fields(config)}
        overrides = {k: v for k, v in (("device", context.device), ("threads", context.threads)) if k in names}
        config = replace(config, **overrides)
        if payload is None:
            return InProcessEvaluator.from_config(config)
        return InProcessEvaluator.from_payload(config, payload)


def resolve_device(num_gpus: float) -> str:
    """``"cuda"`` when the actor holds a GPU and torch sees one, else ``"cpu"``."""
    if num_gpus <= 0:
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    logger.warning("num_gpus=%s but torch sees no CUDA device; evaluating on the CPU", num_gpus)
    return "cpu"


def evaluate_batch(evaluator: Evaluator, candidates: Sequence[Candidate]) -> list[Evaluation]:
    """One sanitised evaluation per candidate, in order: a raising batch is retried one by one, a raising or
    missing candidate and a non-finite quality are recorded as failures (never dropped, never raised)."""
    if not candidates:
        return []
    try:
        results = list(evaluator.evaluate(list(candidates)))
    except Exception as exc:
        if len(candidates) == 1:
            logger.warning("candidate %s failed: %s", candidates[0].key(), exc)
            return [Evaluation.failure(candidates[0].key(), f"{type(exc).__name__}: {exc}")]
        return [e for c in candidates for e in evaluate_batch(evaluator, [c])]
    by_key = {e.key: e for e in results if isinstance(e, Evaluation)}
    missing = "the evaluator returned no result"
    return [(by_key.get(c.key()) or Evaluation.failure(c.key(), missing)).sanitized() for c in candidates]


def evaluate_dicts(evaluator: Evaluator, candidates: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """:func:`evaluate_batch` over ``Candidate.to_dict`` forms, returning ``Evaluation.to_dict`` forms.

    A dict that is not a valid candidate comes back as a failure keyed by ``"invalid:<index>"``.
    """
    parsed: list[Candidate] = []
    invalid: list[dict[str, Any]] = []
    for i, data in enumerate(candidates):
        try:
            parsed.append(Candidate.from_dict(data))
        except Exception as exc:
            invalid.append(Evaluation.failure(f"invalid:{i}", f"{type(exc).__name__}: {exc}").to_dict())
    return [e.to_dict() for e in evaluate_batch(evaluator, parsed)] + invalid


class EvaluationActor:
    """Evaluates batches of candidates with an evaluator built once (wrapped with ``ray.remote`` by the pool).

    Args:
        factory: builds the evaluator.
        slot: the pool slot this actor serves.
        threads: torch intra-op threads.
        num_gpus: GPUs reserved for this actor (> 0: build on CUDA).
        payload: the factory's payload in object-store mode (Ray resolves the top-level ``ObjectRef``).
    """

    def __init__(
        self,
        factory: EvaluatorFactory,
        slot: int,
        threads: int,
        num_gpus: float = 0.0,
        payload: Payload | None = None,
    ) -> None:
        start = time.perf_counter()
        import torch

        torch.set_num_threads(threads)
        self.context = WorkerContext(resolve_device(num_gpus), threads, slot)
        self.evaluator = factory.build(self.context, payload)
        self.setup_s = time.perf_counter() - start
        self.payload_bytes = _payload_size(payload)
        self.tasks = 0
        logger.info("slot %d: evaluator ready on %s in %.1f s", slot, self.context.device, self.setup_s)

    def info(self) -> dict[str, Any]:
        """Who and where this actor is, and what it holds (the pool's readiness probe): slot, pid, where its
        code was imported from, node, device, threads, build seconds, payload bytes, tasks, peak memory, CPU seconds."""
        import torch

        node_id = None
        try:
            import ray

            if ray.is_initialized():
                node_id = ray.get_runtime_context().get_node_id()
        except ImportError:  # in-process use
            pass
        on_gpu = self.context.device.startswith("cuda")
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "slot": self.context.slot,
            "pid": os.getpid(),
            "code": os.path.dirname(os.path.abspath(__file__)),
            "node_id": node_id,
            "device": self.context.device,
            "threads": torch.get_num_threads(),
            "setup_s": round(self.setup_s, 3),
            "payload_bytes": self.payload_bytes,
            "tasks": self.tasks,
            "max_rss_bytes": usage.ru_maxrss * 1024,
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "gpu_max_allocated_bytes": torch.cuda.max_memory_allocated() if on_gpu else None,
        }

    def evaluate(self, candidates: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Evaluation dicts for candidate dicts (see :func:`evaluate_dicts`)."""
        self.tasks += 1
        return evaluate_dicts(self.evaluator, candidates)


def _payload_size(payload: Any) -> int:
    if payload is None:
        return 0
    if isinstance(payload, bytes | bytearray | memoryview):
        return len(payload)
    if isinstance(payload, Mapping):
        return sum(_payload_size(v) for v in payload.values())
    return 0
