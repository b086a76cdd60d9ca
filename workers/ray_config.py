"""Settings of a Ray evaluation job: where the cluster is, how many actors, what each one gets.

Torch- and Ray-free, so the server and the CLI can build and validate one without importing either.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from search.errors import ConfigError
from search.fields import shown

#: Environment variable holding the default cluster address.
ADDRESS_ENV = "TMPQ_RAY_ADDRESS"

#: Where a candidate's model and supernet come from on a worker.
PAYLOAD_MODES = ("path", "object_store")

#: Ray refuses a smaller object store.
MIN_OBJECT_STORE_BYTES = 75 * 2**20

#: The fields of :class:`RayConfig` a job's ``execution.ray`` section may set; the rest (the cluster address, the
#: object store, the dashboard, timeouts of the connection) belong to the operator.
JOB_FIELDS = (
    "num_actors",
    "num_cpus",
    "num_gpus",
    "threads_per_actor",
    "task_timeout_s",
    "max_retries",
    "candidates_per_task",
)

#: Upper bounds of the resource fields (inclusive).
MAX_ACTORS = 1024
MAX_CPUS = 1024.0
MAX_GPUS = 64.0
MAX_THREADS = 256
MAX_TASK_TIMEOUT_S = 7 * 24 * 3600.0
MAX_RETRIES = 100
MAX_CANDIDATES_PER_TASK = 1024

_ADDRESS = re.compile(r"^(ray://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


def default_address() -> str | None:
    """``$TMPQ_RAY_ADDRESS``, or ``None`` (start a local Ray) when it is unset or empty."""
    return os.environ.get(ADDRESS_ENV, "").strip() or None


@dataclass(frozen=True)
class RayConfig:
    """Resources and policies of a :class:`workers.pool.RayEvaluator`.

    Attributes:
        address: ``None`` starts a local Ray sized to this machine; ``"host:port"`` (the GCS), ``"ray://host:port"``
            or ``"auto"`` joins an existing cluster. Defaults to ``$TMPQ_RAY_ADDRESS``.
        num_actors: evaluation actors; ``None`` fits as many as the cluster's CPUs (and GPUs) allow.
        num_cpus: CPUs reserved per actor (fractions allowed).
        num_gpus: GPUs per actor (fractions allowed up to 1; whole numbers above). > 0 runs the model on CUDA.
        threads_per_actor: torch intra-op threads per actor; ``None``: ``max(1, floor(num_cpus))``.
        object_store_bytes: object store of a local Ray (ignored when joining a cluster).
        include_dashboard: start the dashboard with a local Ray.
        local_num_cpus: CPUs of a local Ray; ``None``: all of this machine's.
        max_in_flight_per_actor: tasks queued on one actor at a time (backpressure; 2 hides the round trip).
        max_retries: re-runs of a candidate whose actor died under it, before it is recorded as failed.
        payload_mode: ``"path"`` (every node reads the model and supernet files) or ``"object_store"`` (the driver
            reads them once and ships the bytes through Ray's object store).
        candidates_per_task: candidates sent to an actor in one task.
        start_timeout_s: give up (``EvaluatorUnavailableError``) when no actor is ready for this long while work is
            waiting (e.g. the cluster lacks the requested resources).
        task_timeout_s: an actor that has run one task for longer than this (a hung evaluation: a deadlocked
            kernel, a stuck file system) is killed and replaced; the task's candidates are re-queued and count a
            loss, as if the actor had died (``max_retries``). ``None`` never times out. The default is far above
            any testbed evaluation (under a second per candidate here); raise it for big models on CPU.
        connect_timeout_s: TCP pre-check of the cluster address before ``ray.init``.
        py_modules: extra package directories shipped to a joined cluster besides tmpq's own.
    """

    address: str | None = field(default_factory=default_address)
    num_actors: int | None = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    threads_per_actor: int | None = None
    object_store_bytes: int = 128 * 2**20
    include_dashboard: bool = False
    local_num_cpus: int | None = None
    max_in_flight_per_actor: int = 2
    max_retries: int = 2
    payload_mode: str = "path"
    candidates_per_task: int = 1
    start_timeout_s: float = 300.0
    task_timeout_s: float | None = 1800.0
    connect_timeout_s: float = 2.0
    py_modules: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.address is not None:
            object.__setattr__(self, "address", _check_address(self.address))
        _check_int("num_actors", self.num_actors, 1, optional=True, high=MAX_ACTORS)
        _check_number("num_cpus", self.num_cpus, 0.0, high=MAX_CPUS)
        _check_number("num_gpus", self.num_gpus, 0.0, high=MAX_GPUS)
        if self.num_gpus > 1 and not float(self.num_gpus).is_integer():
            raise ConfigError("num_gpus", f"fractions are only allowed below 1, got {shown(self.num_gpus)}")
        if self.num_cpus == 0 and self.num_gpus == 0:
            raise ConfigError("num_cpus", "an actor must reserve some CPU or GPU")
        _check_int("threads_per_actor", self.threads_per_actor, 1, optional=True, high=MAX_THREADS)
        _check_int("object_store_bytes", self.object_store_bytes, MIN_OBJECT_STORE_BYTES)
        _check_int("local_num_cpus", self.local_num_cpus, 1, optional=True)
        _check_int("max_in_flight_per_actor", self.max_in_flight_per_actor, 1)
        _check_int("max_retries", self.max_retries, 0, high=MAX_RETRIES)
        _check_int("candidates_per_task", self.candidates_per_task, 1, high=MAX_CANDIDATES_PER_TASK)
        if self.payload_mode not in PAYLOAD_MODES:
            raise ConfigError("payload_mode", f"must be one of {list(PAYLOAD_MODES)}, got {shown(self.payload_mode)}")
        _check_number("start_timeout_s", self.start_timeout_s, 0.0, strict=True)
        if self.task_timeout_s is not None:
            _check_number("task_timeout_s", self.task_timeout_s, 0.0, strict=True, high=MAX_TASK_TIMEOUT_S)
        _check_number("connect_timeout_s", self.connect_timeout_s, 0.0, strict=True)
        if isinstance(self.py_modules, str) or not all(isinstance(p, str) and p for p in self.py_modules):
            raise ConfigError("py_modules", "must be a sequence of package directories")
        object.__setattr__(self, "py_modules", tuple(self.py_modules))
        if not isinstance(self.include_dashboard, bool):
            raise ConfigError("include_dashboard", f"must be a bool, got {shown(self.include_dashboard)}")

    @classmethod
    def for_job(cls, job: Mapping[str, Any] | None = None, **operator: Any) -> RayConfig:
        """A job's ``execution.ray`` fields (only :data:`JOB_FIELDS`) on top of the operator's settings.

        ``operator`` holds the fields only the operator sets (``address`` — absent: ``$TMPQ_RAY_ADDRESS`` —,
        ``object_store_bytes``, ...). The job's fields are validated by :func:`check_job_fields`.
        """
        return cls(**{**operator, **check_job_fields(job or {})})

    @property
    def threads(self) -> int:
        """Torch threads per actor (resolved default)."""
        if self.threads_per_actor is not None:
            return self.threads_per_actor
        return max(1, math.floor(self.num_cpus))

    @property
    def local(self) -> bool:
        """No address: a local Ray is started when none is connected."""
        return self.address is None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for job records and logs)."""
        data = asdict(self)
        data["py_modules"] = list(self.py_modules)
        return data


def _check_address(address: object) -> str:
    if not isinstance(address, str) or not address.strip():
        raise ConfigError("address", f"must be 'host:port', 'ray://host:port' or 'auto', got {shown(address)}")
    address = address.strip()
    if address == "auto":
        return address
    match = _ADDRESS.match(address)
    if match is None or not 0 < int(match.group(3)) < 65536:
        raise ConfigError("address", f"must be 'host:port', 'ray://host:port' or 'auto', got {shown(address)}")
    return address


def _check_int(name: str, value: object, low: int, *, optional: bool = False, high: int | None = None) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ConfigError(name, f"must be an integer {bound}, got {shown(value)}")


def _check_number(name: str, value: object, low: float, *, strict: bool = False, high: float | None = None) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or (strict and value == low) or (high is not None and value > high):
        relation = ">" if strict else ">="
        bound = f" and <= {high:g}" if high is not None else ""
        raise ConfigError(name, f"must be a finite number {relation} {low:g}{bound}, got {shown(value)}")


def check_job_fields(values: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a job's ``ray`` fields with :class:`RayConfig`'s own rules; returns them as given.

    A key outside :data:`JOB_FIELDS` (``address`` included: the cluster is the operator's) is refused, naming it.
    """
    if not isinstance(values, Mapping) or not all(isinstance(k, str) for k in values):
        raise ConfigError("", f"expected a mapping with string keys, got {type(values).__name__}")
    for key in values:
        if key not in JOB_FIELDS:
            why = "the Ray cluster is the operator's (TMPQ_RAY_ADDRESS), not a job's" if key == "address" else ""
            raise ConfigError(key, why or f"unknown field (expected one of {list(JOB_FIELDS)})")
    RayConfig(address=None, **values)
    return dict(values)


@dataclass(frozen=True)
class ExecutionSettings:
    """Where a job's evaluations run (the ``execution`` section of a job spec).

    Attributes:
        ray: the job's Ray resources, any of :data:`JOB_FIELDS` (validated by :class:`RayConfig`'s rules); empty:
            the defaults. The cluster address is the operator's (``TMPQ_RAY_ADDRESS``), never a job's.
        version: format version of this section.
    """

    ray: Mapping[str, Any] = field(default_factory=dict)
    version: int = 1

    def __post_init__(self) -> None:
        if self.version != 1:
            raise ConfigError("version", f"{shown(self.version)} is not supported (expected 1)")
        try:
            checked = check_job_fields(self.ray)
        except ConfigError as exc:
            raise ConfigError(f"ray.{exc.field}" if exc.field else "ray", exc.reason) from None
        object.__setattr__(self, "ray", checked)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExecutionSettings:
        """From a plain mapping; unknown keys, wrong types and bad values raise ConfigError naming the field."""
        if not isinstance(data, Mapping):
            raise ConfigError("", f"expected a mapping, got {type(data).__name__}")
        for key in data:
            if key not in ("ray", "version"):
                raise ConfigError(str(key), "unknown field (expected one of ['ray'])")
        ray = data.get("ray")
        return cls(ray={} if ray is None else ray, version=data.get("version", 1))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-ready form."""
        return {"ray": dict(self.ray), "version": self.version}
