"""An in-process cache of each job's whole Pareto front, valid while the job's ``results_version`` is unchanged.

The version goes up with every stored generation, and candidates, flags and hypervolume change only then, so a
front request costs one primary-key read (the version) plus filtering a few dozen points in memory; the points'
JSON is serialised once per stored generation instead of once per request. Entries are per job (every budget
filter is served from the same entry), at most ``max_jobs`` of them, least recently used evicted; a front larger
than ``max_points`` is not kept (each request then reads it from the store).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pydantic_core import to_json
from starlette.concurrency import run_in_threadpool

from search.errors import NotFound
from server.baselines import DEFAULT_NUM_TRAIN_TIMESTEPS
from server.records import CandidateRecord, FrontRecord
from server.schemas import CandidateOut
from server.store import Store


@dataclass(frozen=True)
class CachedFront:
    """A job's whole front as of ``results_version``, with each point's JSON (a ``CandidateOut``)."""

    job_id: int
    generation: int | None
    results_version: int
    points: tuple[CandidateRecord, ...]
    fragments: dict[str, bytes]
    fp_components: tuple[str, ...] = ()
    fp_references: bytes = b"[]"

    @classmethod
    def build(
        cls,
        front: FrontRecord,
        *,
        num_train_timesteps: int = DEFAULT_NUM_TRAIN_TIMESTEPS,
        fp_components: tuple[str, ...] = (),
    ) -> CachedFront:
        """The entry of a stored front; ``num_train_timesteps`` is the T of the job's model (``is_baseline``),
        ``fp_components`` the model's components kept in floating point."""
        fragments = {
            p.key: CandidateOut.from_record(p, num_train_timesteps=num_train_timesteps).model_dump_json().encode()
            for p in front.points
        }
        references = to_json(list(front.fp_references))  # pydantic's own serialiser: as FrontOut writes it
        return cls(
            front.job_id, front.generation, front.results_version, front.points, fragments, fp_components, references
        )

    def render(self, points: Sequence[CandidateRecord], knee: CandidateRecord | None) -> bytes:
        """The ``FrontOut`` JSON of ``points`` (byte-identical to ``FrontOut(...).model_dump_json()``)."""
        items = b",".join(self.fragments[p.key] for p in points)
        knee_json = self.fragments[knee.key] if knee is not None else b"null"
        head = f'{{"job_id":{self.job_id},"generation":{json.dumps(self.generation)},"count":{len(points)},"items":['
        tail = b',"fp_components":' + json.dumps(list(self.fp_components), separators=(",", ":")).encode()
        tail += b',"fp_references":' + self.fp_references
        return head.encode() + items + b'],"knee":' + knee_json + tail + b"}"


class FrontCache:
    """Per-job front cache over a :class:`Store`; :meth:`get` is for worker threads, :meth:`aget` for the event
    loop (it reads the version with a :class:`server.readers.VersionReader`). ``train_timesteps(job_id)`` gives the
    T of a job's model for the points' ``is_baseline`` (default: 1000)."""

    def __init__(
        self,
        store: Store,
        *,
        max_jobs: int = 64,
        max_points: int = 20_000,
        train_timesteps: Callable[[int], int] | None = None,
    ) -> None:
        self.store = store
        self.train_timesteps = train_timesteps
        self.max_jobs = max_jobs
        self.max_points = max_points
        self._entries: OrderedDict[int, CachedFront] = OrderedDict()
        self._lock = threading.Lock()
        self._reader = store.version_reader()

    async def aclose(self) -> None:
        """Release the version reader's connection (call on the event loop that used it)."""
        if self._reader is not None:
            await self._reader.aclose()

    async def aget(self, job_id: int) -> CachedFront:
        """The job's current whole front; the version is read without a worker thread, a rebuild runs in one."""
        if self._reader is None:
            return await run_in_threadpool(self.get, job_id)
        try:
            version = await self._reader(job_id)
        except NotFound:
            self.forget(job_id)
            raise
        entry = self._lookup(job_id, version)
        return entry if entry is not None else await run_in_threadpool(self._refresh, job_id)

    def get(self, job_id: int) -> CachedFront:
        """The job's current whole front; :class:`NotFound` for an unknown job."""
        version = self._checked(self.store.results_version, job_id)
        entry = self._lookup(job_id, version)
        return entry if entry is not None else self._refresh(job_id)

    def forget(self, job_id: int) -> None:
        """Drop a job's entry."""
        with self._lock:
            self._entries.pop(job_id, None)

    def _checked(self, read_version: Callable[[int], int], job_id: int) -> int:
        try:
            return read_version(job_id)
        except NotFound:
            self.forget(job_id)
            raise

    def _lookup(self, job_id: int, version: int) -> CachedFront | None:
        with self._lock:
            entry = self._entries.get(job_id)
            if entry is None or entry.results_version != version:
                return None
            self._entries.move_to_end(job_id)
            return entry

    def _refresh(self, job_id: int) -> CachedFront:
        # The store reads the version before the points, so the entry's label is never newer than its content.
        front = self.store.front(job_id)
        steps = self.train_timesteps(job_id) if self.train_timesteps is not None else DEFAULT_NUM_TRAIN_TIMESTEPS
        fp = getattr(self.train_timesteps, "fp_components", None)
        entry = CachedFront.build(front, num_train_timesteps=steps, fp_components=fp(job_id) if fp else ())
        if len(entry.points) <= self.max_points:
            with self._lock:
                current = self._entries.get(job_id)
                if current is None or current.results_version <= entry.results_version:
                    self._entries[job_id] = entry
                    self._entries.move_to_end(job_id)
                while len(self._entries) > self.max_jobs:
                    self._entries.popitem(last=False)
        return entry
