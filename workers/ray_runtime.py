"""Owning the Ray connection: start a quiet local Ray, or join a cluster, and undo only what was done.

::

    with RayRuntime(RayConfig()) as runtime:          # local Ray sized to this machine, unless one is connected
        ...
    with RayRuntime(RayConfig(address="10.0.0.5:6379")):  # pre-checked with a short TCP connect, then joined
        ...

A runtime that found Ray already connected leaves it connected on exit; one that connected shuts it down.
When it joins a cluster by address, the job's runtime environment (:meth:`RayRuntime.runtime_env`) ships tmpq's
packages to the workers as ``py_modules``, so nothing has to be installed there by hand. (A Ray connected by
someone else is used as it is: its job must carry the code itself.)
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from types import TracebackType
from typing import Any

from search.evaluator import EvaluatorUnavailableError
from workers.ray_config import ADDRESS_ENV, RayConfig

logger = logging.getLogger(__name__)

#: tmpq's packages a worker needs to unpickle factories and run evaluations.
PACKAGES = ("search", "supernet", "workers")


class RayUnavailableError(EvaluatorUnavailableError):
    """No Ray cluster could be reached or started."""


def split_address(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of ``host:port`` or ``ray://host:port``; ``None`` for ``auto``."""
    if address == "auto":
        return None
    host, _, port = address.removeprefix("ray://").rpartition(":")
    return host.strip("[]"), int(port)


def check_reachable(address: str, timeout_s: float) -> None:
    """Raise :class:`RayUnavailableError` at once when nothing listens at ``address`` (a TCP connect).

    ``ray.init`` would otherwise retry for about a minute before failing.
    """
    target = split_address(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout_s):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise RayUnavailableError(
            f"no Ray cluster answers at {address} ({reason}). Start one with `ray start --head "
            f"--port={target[1]}` on that host, fix --ray-address / {ADDRESS_ENV}, or leave both unset "
            "to run on a local Ray."
        ) from None


def package_dirs(extra: tuple[str, ...] = ()) -> list[str]:
    """Directories of tmpq's packages (and ``extra`` ones) for ``runtime_env["py_modules"]``."""
    root = Path(__file__).resolve().parents[1]
    dirs = [str(root / name) for name in PACKAGES]
    return dirs + [str(Path(p).resolve()) for p in extra]


class RayRuntime:
    """Context manager owning ``ray.init``/``ray.shutdown`` for one job.

    Args:
        config: the job's :class:`RayConfig` (address, local sizing, dashboard, object store).
    """

    def __init__(self, config: RayConfig | None = None) -> None:
        self.config = config or RayConfig()
        self._started = False
        self._joined = False

    @property
    def started(self) -> bool:
        """This runtime called ``ray.init`` (and will call ``ray.shutdown``)."""
        return self._started

    @property
    def joined(self) -> bool:
        """This runtime connected to an existing cluster by address."""
        return self._joined

    def start(self) -> RayRuntime:
        """Connect (or start a local Ray) unless Ray is already connected in this process."""
        import ray

        if ray.is_initialized():
            logger.debug("Ray already connected; leaving it as it is")
            return self
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if self.config.address is None:
            self._init_local()
        else:
            self._join(self.config.address)
        self._started = True
        return self

    def stop(self) -> None:
        """Shut Ray down if, and only if, this runtime started it."""
        if not self._started:
            return
        import ray

        ray.shutdown()
        self._started = False
        self._joined = False

    def runtime_env(self) -> dict[str, Any] | None:
        """The job's runtime environment when joining a cluster: tmpq's packages as ``py_modules``.

        Ray uploads local directories only at the job level (``ray.init``), so every actor of the job gets them.
        """
        if self.config.address is None:
            return None
        return {"py_modules": package_dirs(self.config.py_modules)}

    def __enter__(self) -> RayRuntime:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _init_local(self) -> None:
        import ray

        cfg = self.config
        num_cpus = cfg.local_num_cpus or os.cpu_count() or 1
        # Ray starts its workers at niceness 15; in a local Ray they do this job's main work, so by default they
        # run at the driver's priority instead of yielding to every other process (RAY_worker_niceness overrides).
        os.environ.setdefault("RAY_worker_niceness", "0")
        logger.info("starting a local Ray (%d CPUs, object store %d MiB)", num_cpus, cfg.object_store_bytes >> 20)
        try:
            ray.init(
                address="local",  # a new Ray of its own, never a cluster another process started on this machine
                num_cpus=num_cpus,
                include_dashboard=cfg.include_dashboard,
                object_store_memory=cfg.object_store_bytes,
                logging_level=logging.WARNING,
            )
        except Exception as exc:
            raise RayUnavailableError(f"could not start a local Ray: {exc}") from exc

    def _join(self, address: str) -> None:
        import ray

        check_reachable(address, self.config.connect_timeout_s)
        logger.info("joining the Ray cluster at %s", address)
        try:
            ray.init(address=address, runtime_env=self.runtime_env(), logging_level=logging.WARNING)
        except Exception as exc:
            raise RayUnavailableError(f"could not join the Ray cluster at {address}: {exc}") from exc
        self._joined = True
