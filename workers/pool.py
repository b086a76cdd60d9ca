"""A pool of Ray evaluation actors behind the ``Evaluator`` protocol.

::

    factory = InProcessFactory(EvaluatorConfig(model_path, supernet_path, samples=64))
    with RayEvaluator(factory, RayConfig(num_actors=4, num_gpus=0.5)) as evaluator:
        runner = SearchRunner(spec, space, evaluator, cost_model)
        runner.run()

Scheduling: a generation's candidates are queued (``candidates_per_task`` per task) and fed to the actors that
are ready, at most ``max_in_flight_per_actor`` tasks per actor, so every actor stays busy and nothing piles up
in Ray (backpressure). Results are keyed by candidate key and returned in candidate order; a result for a key
already settled (a task that ran twice) is counted once and otherwise ignored.

Faults: when an actor dies (killed process, lost node), it is replaced in its slot and its in-flight candidates
are re-queued, one per task, ahead of the rest; a candidate whose actor died under it more than ``max_retries``
times is recorded as failed with the reason. An actor busy with one task for longer than ``task_timeout_s`` is
treated the same way (killed, replaced, its running task's candidates re-queued with a loss; the tasks queued
behind it are re-queued without one). A candidate whose evaluation raises or gives a non-finite quality
comes back from the actor as failed. An actor that cannot build its evaluator, or no actor becoming ready for
``start_timeout_s``, raises :class:`~search.evaluator.EvaluatorUnavailableError`: that is not the candidates'
fault.

The model is never sent with a task: in ``path`` mode the factory carries paths; in ``object_store`` mode the
factory's payload is put in the object store once per pool and handed to each actor (replacements included)
at creation.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from search.candidate import Candidate
from search.evaluator import Evaluation, EvaluatorUnavailableError
from workers.actor import EvaluationActor, EvaluatorFactory, InProcessFactory
from workers.ray_config import RayConfig
from workers.ray_runtime import RayRuntime

__all__ = ["PoolStats", "RayConfig", "RayEvaluator", "SlotState"]

logger = logging.getLogger(__name__)

#: Seconds between checks of the start timeout while waiting on Ray.
POLL_S = 1.0


@dataclass(frozen=True)
class SlotState:
    """One actor slot as seen by the driver.

    Attributes:
        index: slot number (stable across replacements).
        generation: 0 for the first actor of the slot, +1 per replacement.
        ready: the actor built its evaluator and takes tasks.
        in_flight: tasks submitted to the current actor and not yet returned.
        tasks: tasks ever submitted to this slot.
        info: the actor's :meth:`~workers.actor.EvaluationActor.info` when it became ready (pid, node, device,
            threads, memory, …); empty while it starts.
    """

    index: int
    generation: int
    ready: bool
    in_flight: int
    tasks: int
    info: dict[str, Any]


@dataclass(frozen=True)
class PoolStats:
    """Counters of a pool since it was created.

    Attributes:
        actors: slots.
        ready: slots whose actor is ready.
        started: actors created (first ones and replacements).
        replaced: actors replaced after dying.
        tasks: tasks submitted.
        lost_tasks: tasks whose actor died (or whose result was lost) before returning.
        retries: candidates re-queued after a lost task.
        failed: candidates the pool recorded as failed (retries exhausted, task error).
        duplicates: results for candidates already settled (ignored).
        peak_in_flight: the most tasks one actor ever held at once.
        payload_puts: payloads put in the object store (1 in object-store mode, else 0).
        attempts: tasks that carried each candidate key (> 1 after a re-run).
    """

    actors: int
    ready: int
    started: int
    replaced: int
    tasks: int
    lost_tasks: int
    retries: int
    failed: int
    duplicates: int
    peak_in_flight: int
    payload_puts: int
    attempts: dict[str, int]


@dataclass
class _Slot:
    index: int
    generation: int
    handle: Any
    ready_ref: Any
    created: float
    info: dict[str, Any] = field(default_factory=dict)
    tasks: int = 0
    #: When the actor last returned a task (its next queued task started then).
    last_done: float = 0.0

    @property
    def ready(self) -> bool:
        return self.ready_ref is None


@dataclass(frozen=True)
class _Flight:
    slot: int
    generation: int
    keys: tuple[str, ...]
    dispatched: float


@dataclass
class _Batch:
    """The state of one :meth:`RayEvaluator.evaluate` call."""

    candidates: dict[str, Candidate]
    queue: deque[tuple[str, ...]]
    pending: set[str]
    results: dict[str, Evaluation] = field(default_factory=dict)
    losses: Counter[str] = field(default_factory=Counter)

    def settle(self, evaluation: Evaluation) -> bool:
        """Record ``evaluation`` if its key is still pending; False when it is not (a duplicate or stale)."""
        if evaluation.key not in self.pending:
            return False
        self.pending.discard(evaluation.key)
        self.results[evaluation.key] = evaluation
        return True


class RayEvaluator:
    """Evaluates candidates on a pool of Ray actors (implements ``search.evaluator.Evaluator``).

    Connects to (or starts) Ray through :class:`~workers.ray_runtime.RayRuntime` and creates the actors at once;
    they build their evaluators in the background (:meth:`wait_ready` blocks until they have). Not thread-safe:
    one thread calls :meth:`evaluate`; :meth:`stats` and :meth:`slots` may be read from others.

    Args:
        factory: builds each actor's evaluator (picklable); a :class:`~workers.evaluator.EvaluatorConfig` is
            taken as ``InProcessFactory(config)``.
        config: resources and policies; default :class:`RayConfig()` (``$TMPQ_RAY_ADDRESS`` or a local Ray,
            one actor per CPU).

    Raises:
        ~workers.ray_runtime.RayUnavailableError: no cluster at the configured address, or a local Ray could not start.
    """

    def __init__(self, factory: EvaluatorFactory | Any, config: RayConfig | None = None) -> None:
        import ray

        self.factory = factory if isinstance(factory, EvaluatorFactory) else InProcessFactory(factory)
        self.config = config or RayConfig()
        self._lock = threading.Lock()
        self._inflight: dict[Any, _Flight] = {}
        self._attempts: Counter[str] = Counter()
        self._counts: Counter[str] = Counter()
        self._slots: list[_Slot] = []
        self._payload_ref: Any = None
        self._closed = False
        self._runtime = RayRuntime(self.config).start()
        try:
            self._actor_cls = ray.remote(EvaluationActor)
            self._payload_ref = self._put_payload()
            for index in range(self._fit_actors()):
                self._slots.append(self._spawn(index, 0))
        except BaseException:
            self.close()
            raise
        logger.info(
            "Ray pool: %d actors (%g CPU, %g GPU, %d threads each), payload by %s",
            len(self._slots),
            self.config.num_cpus,
            self.config.num_gpus,
            self.config.threads,
            self.config.payload_mode,
        )

    # -- public API -------------------------------------------------------------------------------------

    def evaluate(self, candidates: Sequence[Candidate]) -> list[Evaluation]:
        """One evaluation per candidate, in order (a key asked twice is evaluated once).

        Raises:
            EvaluatorUnavailableError: the pool is closed, an actor cannot build its evaluator, or no actor is
                ready for ``start_timeout_s``.
        """
        self._check_open()
        if not candidates:
            return []
        batch = self._new_batch(candidates)
        stalled_since: float | None = None
        while batch.pending:
            self._dispatch(batch)
            self._wait_one(batch)
            stalled_since = self._check_stall(stalled_since)
        return [batch.results[c.key()] for c in candidates]

    def wait_ready(self, timeout_s: float | None = None) -> list[SlotState]:
        """Block until every actor has built its evaluator; their states.

        Raises:
            EvaluatorUnavailableError: an actor cannot build its evaluator, or ``timeout_s`` (default
                ``start_timeout_s``) passed first.
        """
        import ray

        self._check_open()
        deadline = time.monotonic() + (self.config.start_timeout_s if timeout_s is None else timeout_s)
        while not all(s.ready for s in self._slots):
            left = deadline - time.monotonic()
            if left <= 0:
                raise EvaluatorUnavailableError(self._stall_message("within the start timeout"))
            starting = {s.ready_ref: s for s in self._slots if not s.ready}
            done, _ = ray.wait(list(starting), num_returns=1, timeout=min(left, POLL_S))
            for ref in done:
                self._on_ready(starting[ref], ref)
        return self.slots()

    def slots(self) -> list[SlotState]:
        """The actor slots now (safe to call from another thread)."""
        with self._lock:
            load = self._load()
            return [
                SlotState(s.index, s.generation, s.ready, load[(s.index, s.generation)], s.tasks, dict(s.info))
                for s in list(self._slots)
            ]

    def actor_infos(self, timeout_s: float = 30.0) -> list[dict[str, Any]]:
        """Ask every ready actor for its :meth:`~workers.actor.EvaluationActor.info` now (peak memory, tasks, …).

        Call between evaluations. Actors that do not answer within ``timeout_s`` are left out.
        """
        import ray

        self._check_open()
        ready = [s for s in self._slots if s.ready]
        refs = [s.handle.info.remote() for s in ready]
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        infos = []
        for slot, ref in zip(ready, refs, strict=True):
            if ref in done:
                try:
                    infos.append(ray.get(ref))
                except Exception as exc:  # a dead actor is found (and replaced) by the next evaluate
                    logger.warning("slot %d did not report: %s", slot.index, exc)
        return infos

    @property
    def runtime(self) -> RayRuntime:
        """The Ray connection this pool holds (``joined`` when it connected to a cluster by address)."""
        return self._runtime

    def actors(self) -> list[Any]:
        """The current actor handles, by slot (for operations and tests, e.g. ``ray.kill``)."""
        return [s.handle for s in self._slots]

    def stats(self) -> PoolStats:
        """A snapshot of the pool's counters (safe to call from another thread)."""
        with self._lock:
            c = self._counts
            return PoolStats(
                actors=len(self._slots),
                ready=sum(1 for s in self._slots if s.ready),
                started=c["started"],
                replaced=c["replaced"],
                tasks=c["tasks"],
                lost_tasks=c["lost_tasks"],
                retries=c["retries"],
                failed=c["failed"],
                duplicates=c["duplicates"],
                peak_in_flight=c["peak_in_flight"],
                payload_puts=c["payload_puts"],
                attempts=dict(self._attempts),
            )

    def close(self) -> None:
        """Kill the actors, release the payload and stop Ray if this pool started it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for slot in self._slots:
            _kill(slot.handle)
        self._inflight.clear()
        self._payload_ref = None
        self._runtime.stop()

    def __enter__(self) -> RayEvaluator:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- actors -----------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise EvaluatorUnavailableError("the Ray evaluator is closed")

    def _put_payload(self) -> Any:
        if self.config.payload_mode != "object_store":
            return None
        import ray

        start = time.perf_counter()
        ref = ray.put(self.factory.payload())
        self._counts["payload_puts"] += 1
        logger.info("payload put in the object store in %.2f s", time.perf_counter() - start)
        return ref

    def _fit_actors(self) -> int:
        """``num_actors``, or as many as the cluster's CPUs and GPUs hold."""
        if self.config.num_actors is not None:
            return self.config.num_actors
        import ray

        total = ray.cluster_resources()
        fits = [math.inf]
        if self.config.num_cpus > 0:
            fits.append(total.get("CPU", 0.0) // self.config.num_cpus)
        if self.config.num_gpus > 0:
            fits.append(total.get("GPU", 0.0) // self.config.num_gpus)
        return max(1, int(min(fits)))

    def _spawn(self, index: int, generation: int) -> _Slot:
        cfg = self.config
        options: dict[str, Any] = {
            "num_cpus": cfg.num_cpus,
            "num_gpus": cfg.num_gpus,
            "max_restarts": 0,
            "scheduling_strategy": "SPREAD",
        }
        handle = self._actor_cls.options(**options).remote(
            self.factory, index, cfg.threads, cfg.num_gpus, self._payload_ref
        )
        self._counts["started"] += 1
        return _Slot(index, generation, handle, handle.info.remote(), time.monotonic())

    def _replace(self, index: int, reason: str) -> None:
        old = self._slots[index]
        _kill(old.handle)
        with self._lock:
            self._slots[index] = self._spawn(index, old.generation + 1)
            self._counts["replaced"] += 1
        logger.warning("actor of slot %d (generation %d) is lost; replacing it: %s", index, old.generation, reason)

    def _on_ready(self, slot: _Slot, ref: Any) -> None:
        import ray
        from ray.exceptions import RayActorError, RayError

        try:
            info = ray.get(ref)
        except RayActorError as exc:
            if exc.actor_init_failed:
                raise EvaluatorUnavailableError(f"an evaluation actor could not build its evaluator: {exc}") from exc
            self._replace(slot.index, _reason(exc))
            return
        except RayError as exc:
            self._replace(slot.index, _reason(exc))
            return
        with self._lock:
            slot.info = info
            slot.ready_ref = None
        logger.info(
            "slot %d ready: pid %s on node %s, %s, %.1f s to build",
            slot.index,
            info.get("pid"),
            str(info.get("node_id"))[:12],
            info.get("device"),
            info.get("setup_s", math.nan),
        )

    # -- scheduling -------------------------------------------------------------------------------------

    def _new_batch(self, candidates: Sequence[Candidate]) -> _Batch:
        unique: dict[str, Candidate] = {}
        for c in candidates:
            unique.setdefault(c.key(), c)
        keys = list(unique)
        size = self.config.candidates_per_task
        queue = deque(tuple(keys[i : i + size]) for i in range(0, len(keys), size))
        return _Batch(unique, queue, set(keys))

    def _load(self) -> Counter[tuple[int, int]]:
        return Counter((f.slot, f.generation) for f in self._inflight.values())

    def _dispatch(self, batch: _Batch) -> None:
        """Submit queued tasks to ready actors with room, least loaded first."""
        load = self._load()
        cap = self.config.max_in_flight_per_actor
        while batch.queue:
            free = [s for s in self._slots if s.ready and load[(s.index, s.generation)] < cap]
            if not free:
                return
            slot = min(free, key=lambda s: (load[(s.index, s.generation)], s.tasks))
            keys = tuple(k for k in batch.queue.popleft() if k in batch.pending)
            if not keys:
                continue
            ref = slot.handle.evaluate.remote([batch.candidates[k].to_dict() for k in keys])
            load[(slot.index, slot.generation)] += 1
            with self._lock:
                self._inflight[ref] = _Flight(slot.index, slot.generation, keys, time.monotonic())
                slot.tasks += 1
                self._attempts.update(keys)
                self._counts["tasks"] += 1
                peak = max(self._counts["peak_in_flight"], load[(slot.index, slot.generation)])
                self._counts["peak_in_flight"] = peak

    def _wait_one(self, batch: _Batch) -> None:
        """Wait (at most ``POLL_S``) for one task result or actor start, and handle it."""
        import ray

        starting = {s.ready_ref: s for s in self._slots if not s.ready}
        refs = [*self._inflight, *starting]
        if not refs:
            time.sleep(POLL_S)
            return
        done, _ = ray.wait(refs, num_returns=1, timeout=POLL_S)
        for ref in done:
            if ref in starting:
                self._on_ready(starting[ref], ref)
            else:
                self._on_result(ref, batch)
        self._expire_hung(batch)

    def _expire_hung(self, batch: _Batch) -> None:
        """Kill and replace every actor whose running task is older than ``task_timeout_s``.

        An actor runs its queued tasks one after another, so its running task started at the later of its oldest
        task's dispatch and its last result.
        """
        timeout = self.config.task_timeout_s
        if timeout is None:
            return
        now = time.monotonic()
        for slot in list(self._slots):
            mine = sorted(
                (
                    (ref, f)
                    for ref, f in self._inflight.items()
                    if (f.slot, f.generation) == (slot.index, slot.generation)
                ),
                key=lambda rf: rf[1].dispatched,
            )
            if not mine or now - max(mine[0][1].dispatched, slot.last_done) <= timeout:
                continue
            reason = f"its evaluation ran past task_timeout_s={timeout:g} s"
            with self._lock:
                for ref, _ in mine:
                    del self._inflight[ref]
            self._requeue(mine[0][1], batch, reason)
            for _, queued in reversed(mine[1:]):  # never started: back in the queue without a loss
                batch.queue.appendleft(tuple(k for k in queued.keys if k in batch.pending))
            self._replace(slot.index, reason)

    def _on_result(self, ref: Any, batch: _Batch) -> None:
        import ray
        from ray.exceptions import RayActorError, RayError, RayTaskError

        with self._lock:
            flight = self._inflight.pop(ref)
        slot = self._slots[flight.slot]
        if slot.generation == flight.generation:
            slot.last_done = time.monotonic()
        try:
            rows = ray.get(ref)
        except RayActorError as exc:
            self._requeue(flight, batch, _reason(exc))
            if self._slots[flight.slot].generation == flight.generation:
                self._replace(flight.slot, _reason(exc))
            return
        except RayTaskError as exc:
            self._task_raised(flight, batch, exc)
            return
        except RayError as exc:  # the result object was lost: run it again
            self._requeue(flight, batch, _reason(exc))
            return
        self._accept(rows, flight, batch)

    def _accept(self, rows: list[dict[str, Any]], flight: _Flight, batch: _Batch) -> None:
        returned = set()
        for row in rows:
            evaluation = Evaluation.from_dict(row)
            returned.add(evaluation.key)
            if not batch.settle(evaluation):
                self._count("duplicates")
        for key in flight.keys:
            if key not in returned and key in batch.pending:
                self._fail(batch, key, "the actor returned no result for it")

    def _requeue(self, flight: _Flight, batch: _Batch, reason: str) -> None:
        """Put a lost task's candidates back, one per task, ahead of the queue; fail those out of retries."""
        self._count("lost_tasks")
        for key in reversed(flight.keys):
            if key not in batch.pending:
                continue
            batch.losses[key] += 1
            if batch.losses[key] > self.config.max_retries:
                self._fail(batch, key, f"its worker was lost {batch.losses[key]} times (last: {reason})")
            else:
                batch.queue.appendleft((key,))
                self._count("retries")

    def _task_raised(self, flight: _Flight, batch: _Batch, exc: Exception) -> None:
        """The actor's evaluate raised (it catches candidates' errors, so this is rare): split, then fail."""
        keys = [k for k in flight.keys if k in batch.pending]
        if len(keys) > 1:
            batch.queue.extendleft((k,) for k in reversed(keys))
            return
        cause = getattr(exc, "cause", None) or exc
        for key in keys:
            self._fail(batch, key, f"evaluation task raised {type(cause).__name__}: {cause}")

    def _fail(self, batch: _Batch, key: str, reason: str) -> None:
        logger.warning("candidate %s failed: %s", key, reason)
        batch.settle(Evaluation.failure(key, reason))
        self._count("failed")

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def _check_stall(self, since: float | None) -> float | None:
        """Track how long no actor has been ready; raise past ``start_timeout_s``."""
        if any(s.ready for s in self._slots):
            return None
        now = time.monotonic()
        if since is None:
            return now
        if now - since > self.config.start_timeout_s:
            raise EvaluatorUnavailableError(self._stall_message(f"for {self.config.start_timeout_s:g} s"))
        return since

    def _stall_message(self, when: str) -> str:
        import ray

        ready = sum(1 for s in self._slots if s.ready)
        return (
            f"{ready} of {len(self._slots)} evaluation actors ready {when}; each needs num_cpus="
            f"{self.config.num_cpus:g}, num_gpus={self.config.num_gpus:g}; the cluster has "
            f"{ray.available_resources()} available"
        )


def _kill(handle: Any) -> None:
    import ray

    try:
        ray.kill(handle, no_restart=True)
    except Exception as exc:  # already dead or Ray gone: nothing to free
        logger.debug("ray.kill: %s", exc)


def _reason(exc: BaseException) -> str:
    """A one-line reason from a Ray error (its messages span lines)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = " ".join(lines[:1] + lines[-1:]) if len(lines) > 1 else (lines[0] if lines else "")
    return f"{type(exc).__name__}: {text}"[:400]
