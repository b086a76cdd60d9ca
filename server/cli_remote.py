"""The ``tmpq`` commands that talk to a tmpq server: ``submit``, ``jobs``, ``status``, ``cancel``, ``front``,
``export`` and ``measure``.

They are thin faces over :class:`server.client.TmpqClient` (scripts can make the same calls). The server URL and
token come from ``--url``/``--token`` or ``$TMPQ_URL``/``$TMPQ_API_TOKEN``. Errors reach ``server.cli.main`` as
exceptions: a bad field (locally, or the server's 400/422) is a ``ConfigError`` → exit 2 with one line naming it;
any other server error, an unreachable server or a job that did not succeed is a ``TmpqError`` → exit 1.

Only argparse is imported at module level; httpx, rich and yaml are imported by the commands.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.errors import ConfigError, TmpqError
from server.cli import EXIT_OK
from supernet.settings import RUNTIME_BACKENDS

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from server.client import TmpqClient

#: Job states, for ``tmpq jobs --state``.
STATES = ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")
#: Sort keys of the front (``tmpq front --sort``).
SORT_KEYS = ("bitops", "quality", "weight_bytes", "steps", "latency_ms")
#: Spec fields that only mean something to a local ``tmpq search`` (not sent to the server).
LOCAL_ONLY_FIELDS = ("output",)

#: Width of tables written into a pipe or file (no terminal to ask).
PIPE_WIDTH = 160

_TIMESTEPS_WIDTH = 40
#: Largest batch ``tmpq measure --batch-size`` takes (the server's limit).
MAX_MEASURE_BATCH = 1024
_MIB = 1024 * 1024


class JobDidNotSucceed(TmpqError):
    """``--wait`` saw the job end FAILED or CANCELLED (exit 1)."""


# -- argument types -----------------------------------------------------------------------------------------


def _number(kind: str, *, minimum: float | None = None) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or (minimum is not None and value < minimum):
            bound = f" ≥ {minimum:g}" if minimum is not None else ""
            raise argparse.ArgumentTypeError(f"expected a finite number{bound} ({kind}), got {text!r}")
        return value

    parse.__name__ = kind  # argparse names the type in some messages
    return parse


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _batch_size(text: str) -> int:
    value = _positive_int(text)
    if value > MAX_MEASURE_BATCH:
        raise argparse.ArgumentTypeError(f"expected a batch of 1 to {MAX_MEASURE_BATCH}, got {text!r}")
    return value


def _positive_seconds(text: str) -> float:
    value = _number("seconds", minimum=0)(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


_bitops = _number("BitOps, e.g. 2.5e9", minimum=0)
_bytes = _number("bytes", minimum=0)
_quality = _number("quality")
_milliseconds = _number("milliseconds", minimum=0)


# -- shared helpers -----------------------------------------------------------------------------------------


def _client(args: argparse.Namespace) -> TmpqClient:
    from server.client import TmpqClient

    return TmpqClient(args.url, args.token)


def _console(*, stderr: bool = False) -> Console:
    """A rich console on stdout (or stderr); into a pipe or file it is :data:`PIPE_WIDTH` wide unless
    ``$COLUMNS`` says otherwise (rich's 80 would squeeze the tables)."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    isatty = getattr(stream, "isatty", None)
    piped = not (isatty is not None and isatty())
    width = PIPE_WIDTH if piped and not os.environ.get("COLUMNS") else None
    return Console(stderr=stderr, highlight=False, width=width)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def _fmt(value: Any, spec: str = ".4g", missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def _when(timestamp: str | None) -> str:
    """``2025-01-02T03:04:05.678Z`` → ``2025-01-02 03:04:05``."""
    return timestamp[:19].replace("T", " ") if timestamp else "-"


def spec_value(spec: Mapping[str, Any], dotted: str, default: Any = None) -> Any:
    """A field of a job's spec by its dotted name (``"search.algorithm"``), in either spec version
    (``workers.jobspec.spec_field``)."""
    from workers.jobspec import spec_field

    return spec_field(spec, dotted, default)


def _model_name(spec: Mapping[str, Any]) -> str:
    return Path(str(spec_value(spec, "model.path", "?"))).name or "?"


def _generation_text(progress: Mapping[str, Any]) -> str:
    """``3/10`` (generations stored / asked for) or ``-/10`` before the first one."""
    generation, total = progress.get("generation"), progress.get("generations")
    done = "-" if generation is None else str(generation + 1)
    return f"{done}/{total}" if total is not None else done


def _progress_text(progress: Mapping[str, Any]) -> str:
    return (
        f"generation {_generation_text(progress)}, evaluated {progress.get('evaluated', 0)}, "
        f"failed {progress.get('failed', 0)}, hypervolume {_fmt(progress.get('hypervolume'))}"
    )


def duration_text(seconds: float) -> str:
    """``45s``, ``1m20s``, ``2h05m``: an elapsed time (whole seconds, truncated)."""
    total = max(0, math.floor(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def eta_text(seconds: float) -> str:
    """``~45s``, ``~3m``, ``~1h05m``: a time left, rounded half up (to minutes from one minute up)."""
    total = max(0, math.floor(seconds + 0.5))
    if total < 60:
        return f"~{total}s"
    minutes = math.floor(total / 60 + 0.5)
    hours, minutes = divmod(minutes, 60)
    return f"~{hours}h{minutes:02d}m" if hours else f"~{minutes}m"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def supernet_text(summary: Mapping[str, Any] | None) -> str | None:
    """One line for a job's calibrated supernet (its ``calibration`` summary), or None without one, e.g.
    ``calibrated in 1m52s (estimated ~2m) · W4A4 20.1 dB · W8A8 38.2 dB against FP at 10 steps · worst at W4:
    up_blocks.1 · range check passed``. The web page (``server/static/activity.js``) writes the same line."""
    if not isinstance(summary, Mapping):
        return None
    source = summary.get("source")
    seconds = [v for v in (summary.get("seconds") or {}).values() if _is_number(v)]
    if source == "calibrated" and seconds:
        head = f"calibrated in {duration_text(sum(seconds))}"
        if _is_number(summary.get("estimate_s")):
            head += f" (estimated {eta_text(summary['estimate_s'])})"
    else:
        head = f"from the {source}" if isinstance(source, str) and source else "supernet"
    parts = [head]
    report = summary.get("report")
    if isinstance(report, Mapping) and isinstance(report.get("skipped"), str):
        parts.append(f"no report: {report['skipped']}")
    elif isinstance(report, Mapping) and isinstance(report.get("bits"), Mapping):
        rows = sorted(
            ((int(b), r) for b, r in report["bits"].items() if str(b).isdigit() and isinstance(r, Mapping)),
            key=lambda item: item[0],
        )
        quality = [f"W{b}A{b} {r['psnr']:.1f} dB" for b, r in rows if _is_number(r.get("psnr"))]
        if quality:
            steps = report.get("steps")
            parts.append(" · ".join(quality) + (f" against FP at {steps} steps" if _is_number(steps) else ""))
        worst = [(b, r["worst"][0]) for b, r in rows[:1] if r.get("worst") and isinstance(r["worst"][0], Mapping)]
        for b, site in worst:
            parts.append(f"worst at W{b}: {site.get('name')}")
        check = report.get("range_check")
        if isinstance(check, Mapping) and isinstance(check.get("passed"), bool):
            parts.append("range check passed" if check["passed"] else "range check FAILED")
    else:
        parts.append("no calibration report")
    return " · ".join(parts)


def _calibration_text(calibration: Mapping[str, Any]) -> str:
    """``calibrating W6 (2/3): reconstruction 7/12, round 1, 1m20s elapsed, ~3m left``."""
    head = "calibrating"
    bits, index, count = calibration.get("bits"), calibration.get("bit_index"), calibration.get("bit_count")
    if _is_number(bits):
        head += f" W{int(bits)}"
        if _is_number(index) and _is_number(count) and count > 0:
            head += f" ({int(index) + 1}/{int(count)})"
    parts = []
    phase, step, total = calibration.get("phase"), calibration.get("step"), calibration.get("total")
    if isinstance(phase, str) and phase:
        counted = _is_number(step) and _is_number(total) and total > 0 and phase != "done"
        parts.append(f"{phase} {int(step)}/{int(total)}" if counted else phase)
    if _is_number(calibration.get("round")) and calibration["round"]:
        parts.append(f"round {int(calibration['round'])}")
    if _is_number(calibration.get("elapsed_s")):
        parts.append(f"{duration_text(calibration['elapsed_s'])} elapsed")
    if _is_number(calibration.get("eta_s")):
        parts.append(f"{eta_text(calibration['eta_s'])} left")
    return f"{head}: {', '.join(parts)}" if parts else head


def activity_text(activity: Mapping[str, Any] | None) -> str | None:
    """One line for what a running job is doing (its ``progress.activity``), or None when it reported nothing.

    A calibration in progress is spelled out from its numbers (``calibrating W6 (2/3): reconstruction 7/12, round 1,
    1m20s elapsed, ~3m left``); anything else is the driver's message (else its stage). The web page
    (``server/static/activity.js``) writes the same line.
    """
    if not isinstance(activity, Mapping):
        return None
    calibration = activity.get("calibration")
    if isinstance(calibration, Mapping) and calibration.get("source") == "calibrating":
        return _calibration_text(calibration)
    message, stage = activity.get("message"), activity.get("stage")
    if isinstance(message, str) and message.strip():
        return " ".join(message.split())
    return stage if isinstance(stage, str) and stage else None


def _job_activity(job: Mapping[str, Any]) -> str | None:
    """The activity line of a RUNNING job, else None."""
    if job.get("state") != "RUNNING":
        return None
    return activity_text((job.get("progress") or {}).get("activity"))


def _add_remote_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="the tmpq server (default: $TMPQ_URL, else http://127.0.0.1:8000)")
    p.add_argument("--token", help="the server's bearer token (default: $TMPQ_API_TOKEN; the variable is safer)")


def _add_candidate_args(p: argparse.ArgumentParser) -> None:
    """The ``JOB CANDIDATE`` positionals of the commands that act on one candidate."""
    p.add_argument("job", type=int, metavar="JOB", help="the job id")
    p.add_argument("candidate", metavar="CANDIDATE", help="a candidate key, or 'knee' (the knee of the job's front)")


def _add_json_flag(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--json", action="store_true", help=f"print {what} as JSON instead of a table")


# -- submit / wait ------------------------------------------------------------------------------------------


def read_job_file(path: str | Path) -> dict[str, Any]:
    """The mapping to submit from a job YAML (the file ``tmpq search --config`` takes).

    The file is validated locally first (``JobSpec.from_yaml``: a bad field is a ``ConfigError`` naming it, before
    anything is sent); the mapping is returned as written, in the sectioned (version 2) layout: a version-1 file
    is upgraded (``workers.jobspec.upgrade_spec_dict``, which drops its local-only ``output``).
    """
    import yaml

    from workers.jobspec import JobSpec, upgrade_spec_dict

    JobSpec.from_yaml(path)
    data = yaml.safe_load(Path(path).read_text()) or {}
    body = {k: v for k, v in upgrade_spec_dict(data).items() if k not in LOCAL_ONLY_FIELDS}
    try:  # what YAML has and JSON has not (dates, NaN) in the fields checked later (calibration)
        json.dumps(body, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError("spec", f"{path} holds a value JSON cannot carry: {exc}") from None
    return body


def wait_for_job(client: TmpqClient, job: Mapping[str, Any], *, poll_s: float, as_json: bool) -> int:
    """Show a live progress bar (on stderr) until the job is terminal; 0 when it SUCCEEDED, else
    :class:`JobDidNotSucceed` (exit 1) with the job's error."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    job_id = job["id"]
    with Progress(
        TextColumn("[bold]job {task.fields[job]}[/] {task.fields[state]}"),
        BarColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=_console(stderr=True),
    ) as bar:
        task = bar.add_task("", total=None, job=job_id, state=job["state"], info="")

        def on_progress(current: dict[str, Any]) -> None:
            progress = current["progress"]
            generation = progress.get("generation")
            activity = _job_activity(current)
            searching = (progress.get("activity") or {}).get("stage") == "searching"
            bar.update(
                task,
                total=progress.get("generations"),
                completed=0 if generation is None else generation + 1,
                state=current["state"],
                info=activity if activity and not searching else _progress_text(progress),
            )

        try:
            final = client.wait(job_id, poll_s=poll_s, on_progress=on_progress)
        except KeyboardInterrupt:
            raise TmpqError(
                f"stopped waiting; job {job_id} goes on on the server (tmpq status {job_id}, tmpq cancel {job_id})"
            ) from None
    if as_json:
        _print_json(final)
    state, progress = final["state"], final["progress"]
    if state != "SUCCEEDED":
        reason = f": {final['error']}" if final.get("error") else ""
        raise JobDidNotSucceed(f"job {job_id} {state}{reason}")
    if not as_json:
        _console().print(
            f"job {job_id} SUCCEEDED: {_progress_text(progress)}, {progress.get('front_size', 0)} points on the "
            f"front (tmpq front {job_id})"
        )
    return EXIT_OK


def _cmd_submit(args: argparse.Namespace) -> int:
    body = read_job_file(args.spec)
    with _client(args) as client:
        job = client.submit(body, submission_id=args.submission_id)
        if args.wait:
            if not args.json:
                _console().print(f"job {job['id']} submitted ({job['state']})")
            return wait_for_job(client, job, poll_s=args.poll, as_json=args.json)
    if args.json:
        _print_json(job)
    else:
        _console().print(f"job {job['id']} submitted ({job['state']})")
    return EXIT_OK


# -- jobs / status / cancel ---------------------------------------------------------------------------------


def _cmd_jobs(args: argparse.Namespace) -> int:
    with _client(args) as client:
        page = client.jobs(state=args.state, limit=args.limit, offset=args.offset)
    if args.json:
        _print_json(page)
        return EXIT_OK
    from rich.table import Table

    items = page["items"]
    table = Table(title=f"{len(items)} of {page['total']} jobs (newest first)")
    columns = ["id", "state", "model", "algorithm", "generation", "evaluated", "failed", "front", "HV", "created"]
    activities = [_job_activity(job) for job in items]
    if any(activities):
        columns.append("activity")
    for col in columns:
        left = col in ("state", "model", "algorithm", "created", "activity")
        table.add_column(col, justify="left" if left else "right", no_wrap=col in ("id", "state", "created"))
    for job, activity in zip(items, activities, strict=True):
        progress, spec = job["progress"], job["spec"]
        state = job["state"] + (" (cancelling)" if job["cancel_requested"] and job["state"] == "RUNNING" else "")
        table.add_row(
            str(job["id"]),
            state,
            _model_name(spec),
            str(spec_value(spec, "search.algorithm", "-")),
            _generation_text(progress),
            str(progress["evaluated"]),
            str(progress["failed"]),
            str(progress["front_size"]),
            _fmt(progress["hypervolume"]),
            _when(job["created_at"]),
            *([activity or ""] if "activity" in columns else []),
        )
    _console().print(table)
    return EXIT_OK


def _print_job(job: Mapping[str, Any]) -> None:
    from rich.table import Table

    spec, progress = job["spec"], job["progress"]
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    state = job["state"] + (" (cancel requested)" if job["cancel_requested"] and job["state"] == "RUNNING" else "")
    rows: list[tuple[str, str]] = [
        ("job", str(job["id"])),
        ("state", state),
        ("submission id", job.get("submission_id") or "-"),
        ("model", str(spec_value(spec, "model.path", "-"))),
        (
            "algorithm",
            f"{spec_value(spec, 'search.algorithm', '-')}, population {spec_value(spec, 'search.population', '-')}",
        ),
        ("objective", str(spec_value(spec, "evaluation.objective", "-"))),
        ("budget", _fmt(spec_value(spec, "search.budget"), "")),
        ("generation", _generation_text(progress)),
        ("evaluated", f"{progress['evaluated']} ({progress['failed']} failed)"),
        ("front", f"{progress['front_size']} points"),
        ("hypervolume", _fmt(progress["hypervolume"])),
        ("created", _when(job.get("created_at"))),
        ("started", _when(job.get("started_at"))),
        ("finished", _when(job.get("finished_at"))),
    ]
    activity = _job_activity(job)
    if activity:
        rows.append(("activity", activity))
    if job.get("runner"):
        rows.append(("runner", f"{job['runner']} (attempt {job.get('attempts')})"))
    if job.get("error"):
        rows.append(("error", str(job["error"])))
    supernet = supernet_text(job.get("calibration"))
    if supernet:
        rows.append(("supernet", supernet))
    for warning in job.get("warnings") or ():
        rows.append(("warning", str(warning)))
    for name, value in rows:
        grid.add_row(name, value)
    _console().print(grid)


def _cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.job(args.job)
        if args.wait:
            return wait_for_job(client, job, poll_s=args.poll, as_json=args.json)
    if args.json:
        _print_json(job)
    else:
        _print_job(job)
    return EXIT_OK


def _cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.cancel(args.job)
    if args.json:
        _print_json(job)
    elif job["state"] == "RUNNING":
        _console().print(f"job {job['id']}: cancel requested; it stops after its current generation")
    else:
        _console().print(f"job {job['id']}: {job['state']}")
    return EXIT_OK


# -- front --------------------------------------------------------------------------------------------------


def _timesteps_text(point: Mapping[str, Any]) -> str:
    text = ",".join(str(t) for t in point.get("candidate", {}).get("timesteps", []))
    return text if len(text) <= _TIMESTEPS_WIDTH else text[: _TIMESTEPS_WIDTH - 3] + "..."


def _gbitops(value: float | None) -> str:
    return _fmt(None if value is None else value / 1e9, ".4g")


_UNIFORM_BITS = re.compile(r"^W(\d+)A(\d+)$")


def fp_bitops(client: TmpqClient, job: Mapping[str, Any]) -> float | None:
    """BitOps of the model in floating point (W32A32) at the job's largest K, from a stored uniform baseline.

    BitOps = Σ MACs · b_w · b_a · K, so any uniform WbAb baseline (the search seeds them in generation 0) gives
    Σ MACs exactly. ``None`` when no baseline is stored yet.
    """
    steps = spec_value(job["spec"], "search.steps")
    k_max = max(steps) if isinstance(steps, list) and steps else steps
    if not isinstance(k_max, int):
        return None
    for item in client.candidates(job["id"], generation=0, limit=1000)["items"]:
        match = _UNIFORM_BITS.match(str(item.get("bits", "")))
        if item.get("is_baseline") and match and item.get("bitops") and item.get("steps"):
            per_mac_step = int(match[1]) * int(match[2]) * int(item["steps"])
            return float(item["bitops"]) / per_mac_step * 32 * 32 * k_max
    return None


def best_measurement(point: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]] | None:
    """``(backend, measurement)`` of the candidate's fastest measured backend (the largest end-to-end speed-up
    against FP, ``speedup_vs_reference``), or None when it was never measured."""
    runtime = point.get("runtime")
    if not isinstance(runtime, Mapping):
        return None
    measured = [
        (str(backend), m)
        for backend, m in runtime.items()
        if isinstance(m, Mapping) and _is_number(m.get("speedup_vs_reference"))
    ]
    return max(measured, key=lambda entry: (entry[1]["speedup_vs_reference"], entry[0])) if measured else None


def _memory_measured(m: Mapping[str, Any]) -> bool:
    return _is_number(m.get("memory_ratio")) and _is_number(m.get("fp_peak_rss_bytes")) and m["fp_peak_rss_bytes"] > 0


def measured_text(point: Mapping[str, Any]) -> str:
    """``1.45x/11.8x, mem 0.90x (cpu-int8)``: the fastest measured backend's speed-up per step and end to end
    against FP, and its peak memory against FP's; empty when the candidate was never measured."""
    best = best_measurement(point)
    if best is None:
        return ""
    backend, m = best
    memory = f", mem {m['memory_ratio']:.2f}x" if _memory_measured(m) else ""
    return f"{_fmt(m.get('speedup_per_step'), '.3g')}x/{m['speedup_vs_reference']:.3g}x{memory} ({backend})"


def _knee_measured_text(knee: Mapping[str, Any]) -> str:
    best = best_measurement(knee)
    if best is None:
        return ""
    backend, m = best
    memory = f", memory {m['memory_ratio']:.2f}x" if _memory_measured(m) else ""
    return (
        f"; measured on {backend} (batch {m.get('batch_size', '?')}): {_fmt(m.get('speedup_per_step'), '.3g')}x per "
        f"step, {m['speedup_vs_reference']:.3g}x vs FP at {m.get('reference_steps', '?')} steps{memory}"
    )


def print_front(
    front: Mapping[str, Any], job: Mapping[str, Any], *, console: Console | None = None, fp_cost: float | None = None
) -> None:
    """The front as a rich table: key, K, timesteps, bits, quality, PSNR, the re-scored FDD (when any point has
    it), GBitOps, the predicted milliseconds on the job's latency backend (when measured), the speed-ups and memory
    ``tmpq measure`` measured (when any point was: :func:`measured_text`), the relative cost (BitOps /
    ``fp_cost``, the FP model at the largest K, when given) and whether the point is a uniform baseline; the knee
    (if asked) marked, with its measurement when it has one."""
    from rich.table import Table

    items: Sequence[Mapping[str, Any]] = front["items"]
    knee = front.get("knee")
    knee_key = knee["key"] if knee else None
    objective = str(spec_value(job["spec"], "evaluation.objective", "quality"))
    generation = front.get("generation")
    after = f"generation {generation + 1}" if generation is not None else "no generation yet"
    reference_steps = spec_value(job["spec"], "evaluation.reference_steps", 100)
    measured = any(best_measurement(p) is not None for p in items)
    caption = f"quality = {objective} (lower is better); GBitOps = 1e9 BitOps"
    if measured:
        caption += (
            f"; measured = speed-up per step / vs FP at {reference_steps} steps, peak memory vs FP (tmpq measure; "
            "the fastest backend)"
        )
    if front.get("fp_components"):
        caption += f"; {', '.join(front['fp_components'])} in floating point"
    table = Table(title=f"job {job['id']} ({job['state']}, {after}): {front['count']} front points", caption=caption)

    def has(name: str) -> bool:
        return any(p.get("objectives", {}).get(name) is not None for p in items)

    # (header, cell, left-aligned, never wrapped): key and bits stay whole, the timesteps give way first
    columns: list[tuple[str, Callable[[Mapping[str, Any]], str], bool, bool]] = []
    if knee_key is not None:
        columns.append(("", lambda p: "knee" if p["key"] == knee_key else "", True, True))
    columns += [
        ("key", lambda p: str(p["key"]), True, True),
        ("K", lambda p: str(p["steps"]), False, True),
        ("timesteps", _timesteps_text, True, False),
        ("bits", lambda p: str(p["bits"]), True, True),
        (objective, lambda p: _fmt(p.get("quality")), False, True),
        ("PSNR dB", lambda p: _fmt(p.get("objectives", {}).get("psnr"), ".1f"), False, False),
    ]
    if has("quant_psnr"):  # against FP at the point's own schedule: the error the bits add
        columns.append(("quant. PSNR dB", lambda p: _fmt(p["objectives"].get("quant_psnr"), ".1f"), False, False))
    if has("ssim"):
        columns.append(("SSIM", lambda p: _fmt(p["objectives"].get("ssim"), ".3f"), False, False))
    if has("fdd_rescored"):
        columns.append(("FDD re-scored", lambda p: _fmt(p["objectives"].get("fdd_rescored"), ".4g"), False, False))
    for name, header in (("prompt_accuracy_rescored", "prompt acc. re-scored"), ("prompt_accuracy", "prompt acc.")):
        if has(name):  # the re-scored share (more samples) when there is one
            columns.append((header, lambda p, name=name: _fmt(p["objectives"].get(name), ".3f"), False, False))
            break
    columns.append(("GBitOps", lambda p: _gbitops(p.get("bitops")), False, True))
    if any(p.get("latency_ms") is not None for p in items):
        backend = spec_value(job["spec"], "evaluation.latency_backend", "")
        columns.append((f"ms ({backend})", lambda p: _fmt(p.get("latency_ms"), ".4g"), False, True))
    if measured:
        columns.append(("measured", measured_text, True, True))
    if fp_cost:
        columns.append(
            (
                "rel. cost",
                lambda p: _fmt(p["bitops"] / fp_cost if p.get("bitops") is not None else None, ".3g"),
                False,
                False,
            )
        )
    elif has("relative_cost"):
        columns.append(("rel. cost", lambda p: _fmt(p["objectives"].get("relative_cost"), ".3g"), False, False))
    columns.append(("is_baseline", lambda p: "yes" if p.get("is_baseline") else "", True, False))
    for name, _, left, no_wrap in columns:
        table.add_column(name, justify="left" if left else "right", no_wrap=no_wrap)
    for point in items:
        table.add_row(*(cell(point) for _, cell, _, _ in columns), style="bold" if point["key"] == knee_key else None)
    console = console or _console()
    console.print(table)
    if front.get("fp_references"):
        console.print(fp_reference_table(front["fp_references"], objective, fp_cost))
    if knee:
        console.print(
            f"knee: {knee['key']} ({knee['bits']}, K={knee['steps']}, {objective} {_fmt(knee.get('quality'))}, "
            f"{_gbitops(knee.get('bitops'))} GBitOps"
            + (f", {_fmt(knee['latency_ms'], '.4g')} ms" if knee.get("latency_ms") is not None else "")
            + ")"
            + _knee_measured_text(knee)
        )


def fp_reference_table(points: Sequence[Mapping[str, Any]], objective: str, fp_cost: float | None = None) -> Table:
    """The FP model on the front's schedules as a rich table: how much of each point's error is the steps' (FP at
    the same K, no quantization), against the long FP reference."""
    from rich.table import Table

    table = Table(
        title="FP at the front's schedules (no quantization): the error of fewer steps alone",
        caption="a front point's quant. PSNR is against FP on its own schedule; its PSNR against the long reference",
    )
    columns: list[tuple[str, Callable[[Mapping[str, Any]], str]]] = [
        ("K", lambda p: str(p.get("steps", "-"))),
        ("timesteps", lambda p: _timesteps_text({"candidate": p})),
        (objective, lambda p: _fmt(p.get("quality"))),
        ("PSNR dB", lambda p: _fmt(p.get("psnr"), ".1f")),
        ("SSIM", lambda p: _fmt(p.get("ssim"), ".3f")),
        ("mean drift", lambda p: _fmt(p.get("mean_drift"), ".3f")),
    ]
    if any(p.get("fdd_rescored") is not None for p in points):
        columns.append(("FDD re-scored", lambda p: _fmt(p.get("fdd_rescored"), ".4g")))
    columns.append(("GBitOps", lambda p: _gbitops(p.get("bitops"))))
    if fp_cost:
        columns.append(("rel. cost", lambda p: _fmt(p["bitops"] / fp_cost if p.get("bitops") else None, ".3g")))
    for name, _ in columns:
        table.add_column(name, justify="left" if name == "timesteps" else "right")
    for point in points:
        table.add_row(*(cell(point) for _, cell in columns))
    return table


def _cmd_front(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.job(args.job)
        front = client.front(
            args.job,
            max_bitops=args.max_bitops,
            max_steps=args.max_steps,
            max_weight_bytes=args.max_weight_bytes,
            max_quality=args.max_quality,
            max_latency_ms=args.max_latency_ms,
            sort=args.sort,
            order="desc" if args.desc else "asc",
            knee=args.knee,
        )
        png = client.front_png(args.job, budget=args.max_bitops or None) if args.plot else None
        fp_cost = None if args.json else fp_bitops(client, job)
    if args.json:
        _print_json(front)
    else:
        print_front(front, job, fp_cost=fp_cost)
    if png is not None:
        path = Path(args.plot)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(png)
        except OSError as exc:
            raise ConfigError("--plot", f"cannot write {path}: {exc.strerror}") from None
        print(f"wrote {path}", file=sys.stderr if args.json else sys.stdout)
    return EXIT_OK


# -- export -------------------------------------------------------------------------------------------------


def _megabytes(value: Any) -> str:
    return _fmt(None if value is None else value / 1e6, ".3g") + " MB"


def _cmd_export(args: argparse.Namespace) -> int:
    out = Path(args.out)
    with _client(args) as client:
        client.export(args.job, args.candidate, out, overwrite=args.force, backend=args.backend)
    manifest_path = out / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise TmpqError(f"the export in {out} has no readable manifest.json: {exc}") from None
    if args.json:
        _print_json({"out": str(out), **manifest})
        return EXIT_OK
    sizes = manifest.get("sizes", {})
    ratio = sizes.get("ratio_to_fp32")
    candidate = manifest.get("candidate", {})
    print(
        f"exported candidate {manifest.get('candidate_key')} of job {args.job} ({manifest.get('bits')}, "
        f"K={len(candidate.get('timesteps', []))}) to {out}: weights {_megabytes(sizes.get('weights_file_bytes'))}, "
        f"{_fmt(ratio, '.3f')} of FP32 ({_megabytes(sizes.get('fp32_weights_bytes'))}); backend "
        f"{manifest.get('backend', 'reference')}; sample with supernet.export.load({str(out)!r}).sample(64, seed=0)"
    )
    return EXIT_OK


# -- measure ------------------------------------------------------------------------------------------------


def _mib(value: Any) -> str:
    return _fmt(None if value is None else value / _MIB, ".1f") + " MiB"


def _times(value: Any) -> str:
    return _fmt(value, ".3g") + "x"


def measurement_lines(candidate: Mapping[str, Any], job_id: int, backend: str) -> list[str]:
    """What ``tmpq measure`` prints of a candidate's measurement on ``backend`` (its ``runtime[backend]``)."""
    m = (candidate.get("runtime") or {}).get(backend)
    if not isinstance(m, Mapping):
        raise TmpqError(f"the server's answer holds no measurement of candidate {candidate.get('key')} on {backend}")
    steps, reference = m.get("steps", candidate.get("steps")), m.get("reference_steps")
    lines = [
        f"measured candidate {candidate.get('key')} of job {job_id} ({candidate.get('bits')}, K={steps}) on "
        f"{m.get('backend', backend)}, batch {m.get('batch_size')}, {m.get('threads')} threads, against FP32:",
        f"  per step     {_times(m.get('speedup_per_step'))} FP32 ({_fmt(m.get('step_ms'), '.4g')} ms vs "
        f"{_fmt(m.get('fp_step_ms'), '.4g')} ms)",
        f"  end to end   {_times(m.get('speedup_vs_reference'))} FP at {reference} steps "
        f"({_fmt(m.get('sample_ms'), '.4g')} ms for K={steps} vs {_fmt(m.get('fp_sample_ms'), '.4g')} ms)",
    ]
    if _memory_measured(m):
        lines.append(
            f"  peak memory  {_mib(m.get('peak_rss_bytes'))} vs {_mib(m.get('fp_peak_rss_bytes'))} FP32 "
            f"({m['memory_ratio']:.2f}x)"
        )
    weights, fp_weights = m.get("weight_bytes"), m.get("fp_weight_bytes")
    if _is_number(weights) and _is_number(fp_weights) and fp_weights > 0:
        lines.append(f"  weights      {_mib(weights)} vs {_mib(fp_weights)} FP32 ({weights / fp_weights:.2f}x)")
    return lines


def _cmd_measure(args: argparse.Namespace) -> int:
    slow = " (minutes: it compiles)" if args.backend == "cpu-int8" else " (about a minute)"
    print(f"measuring on the server{slow}...", file=sys.stderr, flush=True)
    with _client(args) as client:
        candidate = client.measure(args.job, args.candidate, backend=args.backend, batch_size=args.batch_size)
    if args.json:
        measurement = (candidate.get("runtime") or {}).get(args.backend)
        _print_json({"job_id": args.job, "key": candidate.get("key"), "measurement": measurement})
        return EXIT_OK
    print("\n".join(measurement_lines(candidate, args.job, args.backend)))
    return EXIT_OK


# -- registration -------------------------------------------------------------------------------------------


def add_remote_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``submit``, ``jobs``, ``status``, ``cancel``, ``front``, ``export`` and ``measure`` on the ``tmpq``
    sub-parsers."""
    p = sub.add_parser(
        "submit",
        help="submit a job spec (YAML) to a tmpq server",
        description="Validate the job spec locally, submit it to the server and print the job id. With --wait, "
        "follow it with a progress bar until it ends (exit 0 when it SUCCEEDED, 1 when it FAILED or was "
        "CANCELLED).",
    )
    p.add_argument("spec", metavar="job.yaml", help="the job spec (the same YAML `tmpq search --config` takes)")
    p.add_argument("--submission-id", help="idempotency key: submitting the same spec with it again gives the same job")
    p.add_argument("--wait", action="store_true", help="follow the job until it ends (progress bar on stderr)")
    p.add_argument("--poll", type=_positive_seconds, default=1.0, metavar="SECONDS", help="poll interval of --wait")
    _add_json_flag(p, "the job")
    _add_remote_flags(p)
    p.set_defaults(handler=_cmd_submit)

    p = sub.add_parser("jobs", help="list the server's jobs", description="The server's jobs, newest first.")
    p.add_argument(
        "--state",
        action="append",
        type=str.upper,
        choices=STATES,
        help="only jobs in this state (repeatable)",
    )
    p.add_argument("--limit", type=_positive_int, default=50, help="at most this many jobs (default 50, max 500)")
    p.add_argument("--offset", type=int, default=0, help="skip this many jobs")
    _add_json_flag(p, "the page")
    _add_remote_flags(p)
    p.set_defaults(handler=_cmd_jobs)

    p = sub.add_parser("status", help="show a job's state and progress", description="A job's state and progress.")
    p.add_argument("job", type=int, metavar="JOB", help="the job id")
    p.add_argument("--wait", action="store_true", help="follow the job until it ends (exit 0 only if it SUCCEEDED)")
    p.add_argument("--poll", type=_positive_seconds, default=1.0, metavar="SECONDS", help="poll interval of --wait")
    _add_json_flag(p, "the job")
    _add_remote_flags(p)
    p.set_defaults(handler=_cmd_status)

    p = sub.add_parser(
        "cancel",
        help="cancel a job",
        description="Cancel a job: a PENDING one at once, a RUNNING one after its current generation. A job that "
        "already SUCCEEDED or FAILED cannot be cancelled (exit 1).",
    )
    p.add_argument("job", type=int, metavar="JOB", help="the job id")
    _add_json_flag(p, "the job")
    _add_remote_flags(p)
    p.set_defaults(handler=_cmd_cancel)

    p = sub.add_parser(
        "front",
        help="show a job's Pareto front (optionally within budgets, with its knee, as a plot)",
        description="The job's current Pareto front (quality vs BitOps), the points within the given limits.",
    )
    p.add_argument("job", type=int, metavar="JOB", help="the job id")
    p.add_argument("--max-bitops", type=_bitops, metavar="X", help="only points with BitOps ≤ X (e.g. 2.5e9)")
    p.add_argument("--max-steps", type=_positive_int, metavar="K", help="only points with at most K sampling steps")
    p.add_argument("--max-weight-bytes", type=_bytes, metavar="B", help="only points whose weights take ≤ B bytes")
    p.add_argument("--max-quality", type=_quality, metavar="Q", help="only points with quality ≤ Q (lower is better)")
    p.add_argument(
        "--max-latency-ms",
        type=_milliseconds,
        metavar="MS",
        help="only points whose measured latency (ms of denoising on the job's latency backend) is ≤ MS",
    )
    p.add_argument("--sort", choices=SORT_KEYS, default="bitops", help="sort key (default bitops; ties by key)")
    p.add_argument("--desc", action="store_true", help="sort in descending order")
    p.add_argument("--knee", action="store_true", help="mark the knee point of the selected points")
    p.add_argument("--plot", metavar="PATH", help="also write the job's Pareto plot (PNG) to PATH")
    _add_json_flag(p, "the front")
    _add_remote_flags(p)
    p.set_defaults(handler=_cmd_front)

    p = sub.add_parser(
        "export",
        help="export a candidate as a runnable quantized model directory",
        description="Export a candidate of a job as a directory diffusers-style code can load: the UNet with the "
        "candidate's quantized weights (packed integer codes + scales, safetensors), the per-site bit-widths and "
        "activation parameters per timestep, a DDIM scheduler config with the candidate's timesteps, and a manifest. "
        "The server builds it from the job's calibrated supernet (this needs the server's write token, --token or "
        "$TMPQ_API_TOKEN, when it has one). Load it with supernet.export.load(DIR) (on the --backend it records).",
    )
    _add_candidate_args(p)
    p.add_argument("--out", required=True, metavar="DIR", help="the directory to write (must not exist or be empty)")
    p.add_argument("--force", action="store_true", help="replace the contents of a non-empty --out directory")
    p.add_argument(
        "--backend",
        choices=RUNTIME_BACKENDS,
        default="reference",
        help="the run-time backend load(DIR) uses: reference (fake quantization, what the search scored) or cpu-int8 "
        "(int8 kernels on x86 CPUs, compiled; see docs/runtime.md)",
    )
    _add_json_flag(p, "the export's manifest")
    _add_remote_flags(p)
    p.set_defaults(handler=_cmd_export)

    p = sub.add_parser(
        "measure",
        help="measure a candidate's export against FP on the server: speed-up per step and end to end, memory",
        description="Measure a candidate's export on the server against the job's FP32 model, side by side: one "
        "denoiser step at the batch (the speed-up per step), sampling one batch end to end (the candidate's K steps "
        "against FP at the job's evaluation.reference_steps), the peak resident memory of a fresh process and the "
        "weight bytes. The server builds the export for --backend first if it was not built, keeps the measurement "
        "with the candidate (the web page and tmpq front show it) and runs one measurement at a time. Needs the "
        "server's write token (--token or $TMPQ_API_TOKEN) when it has one.",
    )
    _add_candidate_args(p)
    p.add_argument(
        "--backend",
        choices=RUNTIME_BACKENDS,
        default="cpu-int8",
        help="what runs the export: cpu-int8 (int8 kernels on an x86 CPU, compiled: minutes; the default) "
        "or reference (fake quantization in float32: what the search scored, no faster than FP)",
    )
    p.add_argument(
        "--batch-size",
        type=_batch_size,
        default=64,
        metavar="N",
        help=f"the batch every timing runs at (1 to {MAX_MEASURE_BATCH}, default 64)",
    )
    _add_json_flag(p, "the measurement")
    _add_remote_flags(p)
    p.set_defaults(handler=_cmd_measure)
