"""The runner's one call into the search: :func:`execute_job`.

It imports :mod:`workers.driver` lazily (the driver imports torch and ray; the server never does at module level).
The protocol between the two is documented in :mod:`workers.protocol`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from search.errors import TmpqError

if TYPE_CHECKING:
    from workers.jobspec import JobSpec
    from workers.protocol import JobSink, ResumeState

#: The signature of :func:`execute_job` (a runner may be given another one, e.g. in tests).
ExecuteFn = Callable[["JobSpec", "JobSink", "ResumeState | None"], None]


class DriverUnavailable(TmpqError):
    """``workers.driver`` cannot be imported (not installed, or a dependency is missing)."""


def execute_job(
    spec: JobSpec,
    sink: JobSink,
    resume: ResumeState | None,
    *,
    evaluator: str | None = None,
    ray_address: str | None = None,
) -> None:
    """Run one job to its end with ``workers.driver.run_job(spec, sink, resume)``.

    ``evaluator`` (``ray`` / ``inprocess``; ``None``: the driver's default) and ``ray_address`` (the cluster;
    ``None``: ``$TMPQ_RAY_ADDRESS`` or a local Ray) are the operator's, from the runner's ``Settings``.
    Returns when the search finished; raises :class:`~workers.protocol.JobInterrupted` when the sink stopped it, and
    anything else when it failed.
    """
    try:
        from workers.driver import DriverOptions, run_job
    except ImportError as exc:
        raise DriverUnavailable(f"the search driver cannot be imported: {exc}") from exc
    run_job(spec, sink, resume, options=DriverOptions(evaluator=evaluator, ray_address=ray_address))
