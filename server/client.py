"""A small Python client of the tmpq REST API (``/api/v1``), the one the ``tmpq`` CLI itself uses.

Torch-free and Ray-free: it needs only httpx. Every method returns the server's JSON (plain dicts), except
:meth:`TmpqClient.front_png` (PNG bytes), :meth:`TmpqClient.export` (the directory it wrote) and
:meth:`TmpqClient.delete` (nothing)::

    from server.client import TmpqClient

    with TmpqClient("http://127.0.0.1:8000", token="...") as client:
        job = client.submit({"model": "digits-ddpm-16", "steps": [8, 10], "generations": 5})
        done = client.wait(job["id"], on_progress=lambda j: print(j["progress"]))
        front = client.front(job["id"], max_bitops=2.5e9, knee=True)
        client.export(job["id"], "knee", "out/knee")  # then supernet.export.load("out/knee").sample(64, seed=0)
        measured = client.measure(job["id"], "knee", backend="cpu-int8")["runtime"]["cpu-int8"]  # on the server

Errors: the server's error answers raise :class:`ApiError` (its message readable and naming the field; a bad
field or model is the subclass :class:`ApiValidationError`, which is also a ``ConfigError``); a server that
cannot be reached raises :class:`ApiUnavailable` naming the URL.
"""

from __future__ import annotations

import math
import os
import shutil
import time
import uuid
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from search.errors import ConfigError, TmpqError
from server.version import API_PREFIX
from supernet.settings import check_backend

#: Server URL used when neither ``base_url`` nor ``$TMPQ_URL`` is given.
DEFAULT_URL = "http://127.0.0.1:8000"
URL_ENV = "TMPQ_URL"
TOKEN_ENV = "TMPQ_API_TOKEN"

#: Job states that never change again.
TERMINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})

#: HTTP statuses that mean "the request's input is bad" (:class:`ApiValidationError`).
VALIDATION_STATUSES = frozenset({400, 422})

#: Statuses :meth:`TmpqClient.wait` polls through (a proxy or the database briefly away).
TRANSIENT_STATUSES = frozenset({502, 503, 504})

_MAX_DETAILS = 3


class ApiError(TmpqError):
    """The server answered with an error.

    Attributes:
        status: the HTTP status code.
        message: the server's reason, readable (one line).
        field: the field it names (``"population"``, ``"steps[1]"``, ``"max_bitops"``), when it names one.
        details: the server's ``detail`` entries as sent (for FastAPI's 422 shape: dicts with ``loc`` and ``msg``).
    """

    def __init__(self, status: int, message: str, field: str | None = None, details: list[Any] | None = None) -> None:
        # Not super(): in ApiValidationError the next class is ConfigError, whose __init__ takes (field, reason).
        TmpqError.__init__(self, f"{field}: {message}" if field else message)
        self.status = status
        self.message = message
        self.field = field
        self.details = list(details or [])

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        """The error a non-2xx response stands for: :class:`ApiValidationError` for 400 and 422, else
        :class:`ApiError`."""
        status = response.status_code
        try:
            body = response.json()
        except ValueError:
            body = None
        field, message, details = _describe(status, body, response)
        error_cls = ApiValidationError if status in VALIDATION_STATUSES else ApiError
        return error_cls(status, message, field, details)


class ApiValidationError(ApiError, ConfigError):
    """400 or 422: the request's input is bad (a field of the spec or query, or the model path).

    Also a :class:`~search.errors.ConfigError`, so callers that handle bad settings handle it too (the CLI exits 2).
    """

    def __init__(self, status: int, message: str, field: str | None = None, details: list[Any] | None = None) -> None:
        ApiError.__init__(self, status, message, field, details)
        self.reason = message


class ApiUnavailable(TmpqError):
    """The server could not be reached (connection refused, DNS failure, timeout).

    Attributes:
        url: the URL that was tried.
    """

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach the tmpq server at {url}: {reason}")
        self.url = url
        self.reason = reason


class WaitTimeout(TmpqError):
    """:meth:`TmpqClient.wait` gave up before the job reached a terminal state.

    Attributes:
        job: the job as last seen.
    """

    def __init__(self, job: Mapping[str, Any], timeout_s: float) -> None:
        super().__init__(f"job {job.get('id')} is still {job.get('state')} after {timeout_s:g} s")
        self.job = dict(job)


def _field_of(loc: Any) -> str | None:
    """``["body", "steps", 1]`` → ``"steps[1]"``, ``["query", "limit"]`` → ``"limit"``, ``["body"]`` → None."""
    if not isinstance(loc, list | tuple):
        return None
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or None


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _describe(status: int, body: Any, response: httpx.Response) -> tuple[str | None, str, list[Any]]:
    """``(field, message, details)`` of an error response."""
    detail = body.get("detail") if isinstance(body, Mapping) else None
    if isinstance(detail, list) and detail:  # FastAPI's validation shape: [{"loc": [...], "msg": ...}, ...]
        entries = [d for d in detail if isinstance(d, Mapping)]
        parts = []
        for i, entry in enumerate(entries[:_MAX_DETAILS]):  # the first one's field is the error's field
            name = _field_of(entry.get("loc"))
            msg = _one_line(entry.get("msg", "invalid value"))
            parts.append(f"{name}: {msg}" if i and name else msg)
        first_field = _field_of(entries[0].get("loc")) if entries else None
        message = "; ".join(parts) if parts else _one_line(str(detail))
        if len(entries) > _MAX_DETAILS:
            message += f" (and {len(entries) - _MAX_DETAILS} more)"
        return first_field, message, list(detail)
    if isinstance(body, Mapping) and "path" in body and "reason" in body:  # a ModelLoadError (400)
        return "model", _one_line(f"{body['path']}: {body['reason']}"), [body]
    if isinstance(detail, str):
        message = _one_line(detail)
    else:
        text = _one_line(response.text)[:200]
        message = f"HTTP {status} {response.reason_phrase}" + (f": {text}" if text else "")
    if status == 401:
        message = f"authentication required: {message} (set {TOKEN_ENV})"
    elif status == 403:
        message = f"authentication failed: {message}"
    return None, message, [detail] if detail is not None else []


def _normalise_url(base_url: str) -> str:
    """``base_url`` without a trailing slash or ``/api/v1``; ConfigError when it is not an http(s) URL."""
    url = base_url.strip().rstrip("/")
    if url.endswith(API_PREFIX):
        url = url[: -len(API_PREFIX)]
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ConfigError("url", f"{base_url!r} is not a valid URL ({exc})") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigError("url", f"expected an http:// or https:// URL, got {base_url!r}")
    return url


def _states(state: str | Iterable[str] | None) -> list[str] | None:
    if state is None:
        return None
    values = [state] if isinstance(state, str) else list(state)
    return [str(s).upper() for s in values] or None


def _check_out_dir(out: Path, overwrite: bool) -> None:
    """ConfigError (field ``out``) unless ``out`` is absent or an empty directory (or ``overwrite``)."""
    if out.exists() and not out.is_dir():
        raise ConfigError("out", f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError("out", f"{out} is not empty (choose another directory, or overwrite: --force)")


def _unpack_export(archive: Path, dest: Path) -> Path:
    """Extract an export archive under ``dest``; returns the export directory (the archive's one top folder, or
    ``dest`` itself). Refuses members that would land outside ``dest``."""
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
        for name in names:
            parts = PurePosixPath(name).parts
            if not parts or name.startswith("/") or ".." in parts:
                raise TmpqError(f"the export archive holds an unsafe path {name!r}")
        zf.extractall(dest)
    tops = {PurePosixPath(n).parts[0] for n in names}
    if len(tops) == 1 and (dest / next(iter(tops))).is_dir():
        return dest / next(iter(tops))
    return dest


def _number(value: float | None) -> str | None:
    if value is None:
        return None
    return repr(int(value)) if isinstance(value, int) else repr(float(value))


class TmpqClient:
    """A client of one tmpq server. Use it as a context manager (or call :meth:`close`).

    Args:
        base_url: the server, e.g. ``http://127.0.0.1:8000`` (a trailing ``/api/v1`` is accepted). Default:
            ``$TMPQ_URL``, else :data:`DEFAULT_URL`.
        token: the bearer token the server requires (``TMPQ_API_TOKEN`` on the server). Default:
            ``$TMPQ_API_TOKEN``; an empty string means none.
        timeout: seconds to wait for each request.
        transport: an httpx transport (tests, proxies); default: httpx's own.

    Raises:
        ConfigError: ``base_url`` is not an http(s) URL.
    """

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        timeout: float = 30,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = _normalise_url(base_url or os.environ.get(URL_ENV) or DEFAULT_URL)
        token = token if token is not None else os.environ.get(TOKEN_ENV)
        self.token = token or None
        self.timeout = timeout
        headers = {"Accept": "application/json", "User-Agent": "tmpq-client"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        self._http = httpx.Client(
            base_url=self.base_url + API_PREFIX, headers=headers, timeout=timeout, transport=transport
        )

    def __repr__(self) -> str:
        return f"TmpqClient({self.base_url!r}, token={'***' if self.token else None})"

    def __enter__(self) -> TmpqClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    # -- plumbing -----------------------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        accept: str | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        """Send one request (waiting ``timeout`` seconds, default the client's); ApiError for an error answer,
        ApiUnavailable when the server cannot be reached."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        headers = {"Accept": accept} if accept else None
        wait = self.timeout if timeout is None else timeout
        try:
            response = self._http.request(method, path, params=query, json=json, headers=headers, timeout=wait)
        except httpx.TimeoutException:
            raise ApiUnavailable(self.base_url, f"no answer within {wait:g} s") from None
        except httpx.RequestError as exc:  # connection refused, DNS, TLS, protocol errors
            raise ApiUnavailable(self.base_url, _one_line(str(exc)) or type(exc).__name__) from None
        if response.is_error:
            raise ApiError.from_response(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise ApiError(response.status_code, f"the server's answer to {method} {path} is not JSON") from None

    # -- jobs ---------------------------------------------------------------------------------------------

    def submit(self, spec: Mapping[str, Any], submission_id: str | None = None) -> dict[str, Any]:
        """Submit a search spec (the mapping ``tmpq search --config`` reads); returns the PENDING job.

        With ``submission_id``, submitting the same spec again returns the same job instead of a new one (another
        spec with it is an :class:`ApiError` 409). A bad field raises :class:`ApiValidationError` naming it.
        """
        body = dict(spec)
        if submission_id is not None:
            body["submission_id"] = submission_id
        return self._json("POST", "/jobs", json=body)

    def jobs(self, state: str | Iterable[str] | None = None, limit: int = 50, offset: int = 0) -> dict[str, Any]:
        """A page of jobs, newest first (``{"items", "total", "limit", "offset"}``), optionally only those in
        ``state`` (one state or several: PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED)."""
        return self._json("GET", "/jobs", params={"state": _states(state), "limit": limit, "offset": offset})

    def job(self, job_id: int) -> dict[str, Any]:
        """One job: spec, state, progress (generation, generations, evaluated, failed, front_size, hypervolume)."""
        return self._json("GET", f"/jobs/{int(job_id)}")

    def cancel(self, job_id: int) -> dict[str, Any]:
        """Cancel a job: a PENDING one becomes CANCELLED at once, a RUNNING one stops after its current generation
        (``cancel_requested`` is then true). A SUCCEEDED or FAILED job is an :class:`ApiError` 409."""
        return self._json("POST", f"/jobs/{int(job_id)}/cancel")

    def delete(self, job_id: int) -> None:
        """Delete a finished job and all its results (an unfinished one is an :class:`ApiError` 409)."""
        self._request("DELETE", f"/jobs/{int(job_id)}")

    def wait(
        self,
        job_id: int,
        poll_s: float = 1.0,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        timeout_s: float | None = None,
        *,
        retry_s: float = 30.0,
    ) -> dict[str, Any]:
        """Poll a job every ``poll_s`` seconds until it is SUCCEEDED, FAILED or CANCELLED; returns it then.

        ``on_progress(job)`` is called with every polled job (the terminal one too). Raises :class:`WaitTimeout`
        after ``timeout_s`` seconds (None: wait for ever). A server that stops answering (or answers 502, 503 or
        504) is polled again for up to ``retry_s`` seconds before its error is raised, so a long wait survives a
        server restart.
        """
        if not (poll_s > 0 and math.isfinite(poll_s)):
            raise ConfigError("poll_s", f"must be a positive number of seconds, got {poll_s!r}")
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        failing_since: float | None = None
        while True:
            try:
                job = self.job(job_id)
            except (ApiUnavailable, ApiError) as exc:
                if isinstance(exc, ApiError) and exc.status not in TRANSIENT_STATUSES:
                    raise
                now = time.monotonic()
                failing_since = now if failing_since is None else failing_since
                if now - failing_since + poll_s > retry_s:
                    raise
                time.sleep(poll_s)
                continue
            failing_since = None
            if on_progress is not None:
                on_progress(job)
            if job.get("state") in TERMINAL_STATES:
                return job
            if deadline is not None and time.monotonic() + poll_s > deadline:
                raise WaitTimeout(job, timeout_s or 0.0)
            time.sleep(poll_s)

    # -- results ------------------------------------------------------------------------------------------

    def front(
        self,
        job_id: int,
        max_bitops: float | None = None,
        max_steps: int | None = None,
        max_weight_bytes: float | None = None,
        max_quality: float | None = None,
        sort: str = "bitops",
        knee: bool = False,
        order: str = "asc",
        max_latency_ms: float | None = None,
    ) -> dict[str, Any]:
        """The job's current Pareto front within the given limits (``{"job_id", "generation", "count", "items",
        "knee"}``; each item a candidate with ``key``, ``candidate``, ``bits``, ``steps``, ``quality``,
        ``bitops``, ``weight_bytes``, ``latency_ms``, ``objectives``, ``is_baseline``, ...).

        Args:
            max_bitops: only points with BitOps ≤ this (a number, e.g. ``2.5e9``).
            max_steps: only points with at most this many sampling steps.
            max_weight_bytes: only points whose weights take ≤ this many bytes.
            max_quality: only points with quality ≤ this (lower is better).
            sort: ``bitops``, ``quality``, ``weight_bytes``, ``steps`` or ``latency_ms`` (ties by key).
            knee: also return the knee point of the selected points (``"knee"``; null otherwise).
            order: ``asc`` or ``desc``.
            max_latency_ms: only points whose measured latency (ms of denoising on the job's latency backend) is ≤
                this; points of a job that measured none are left out.
        """
        params = {
            "max_bitops": _number(max_bitops),
            "max_steps": max_steps,
            "max_weight_bytes": _number(max_weight_bytes),
            "max_quality": _number(max_quality),
            "max_latency_ms": _number(max_latency_ms),
            "sort": sort,
            "order": order,
            "knee": "true" if knee else None,
        }
        return self._json("GET", f"/jobs/{int(job_id)}/front", params=params)

    def candidates(
        self, job_id: int, after: int | None = None, limit: int = 100, generation: int | None = None
    ) -> dict[str, Any]:
        """A page of the job's evaluated candidates in storage order (``{"items", "total", "next_after"}``);
        pass the previous page's ``next_after`` as ``after`` for the next page (or to poll for new ones)."""
        return self._json(
            "GET",
            f"/jobs/{int(job_id)}/candidates",
            params={"after": after, "limit": limit, "generation": generation},
        )

    def candidate(self, job_id: int, key: str) -> dict[str, Any]:
        """One evaluated candidate by its key."""
        return self._json("GET", f"/jobs/{int(job_id)}/candidates/{quote(str(key), safe='')}")

    def hypervolume(self, job_id: int) -> dict[str, Any]:
        """Hypervolume (and counters) after each stored generation: ``{"job_id", "items"}``."""
        return self._json("GET", f"/jobs/{int(job_id)}/hypervolume")

    def front_png(self, job_id: int, budget: float | None = None) -> bytes:
        """The job's Pareto plot as PNG bytes; ``budget`` (BitOps) marks a budget line (default: the job's own)."""
        response = self._request(
            "GET", f"/jobs/{int(job_id)}/front.png", params={"budget": _number(budget)}, accept="image/png"
        )
        return response.content

    def export(
        self,
        job_id: int,
        key: str,
        out_dir: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        timeout: float = 600,
        backend: str = "reference",
    ) -> Path:
        """Export a candidate as a runnable quantized model into the directory ``out_dir``; returns it.

        The server builds the export (``POST .../export``: the first time takes seconds; it needs the write token
        when the server has one) and sends it as a zip; it is unpacked here into ``out_dir`` (created; it must not
        exist or be empty unless ``overwrite``), ready for ``supernet.export.load(out_dir)``. ``key`` may be
        ``"knee"``: the knee point of the job's current front. ``backend`` is the run-time backend the export's
        manifest records (``load(out_dir)`` uses it): ``reference`` or ``cpu-int8``.

        Raises:
            ConfigError: ``out_dir`` is not empty (checked before anything is sent).
            ApiError: 401/403 without the server's token, 404 for an unknown job or candidate, 409 when the job's
                model or calibrated supernet is not on the server.
        """
        out = Path(out_dir)
        _check_out_dir(out, overwrite)
        check_backend(backend)
        key = self._candidate_key(job_id, key)
        path = f"/jobs/{int(job_id)}/candidates/{quote(key, safe='')}/export"
        if backend != "reference":
            path += f"?backend={quote(backend)}"
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f".{out.name}.download-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            archive = tmp / "export.zip"
            self._download("POST", path, archive, timeout)
            try:
                exported = _unpack_export(archive, tmp / "unpacked")
            except zipfile.BadZipFile as exc:
                raise TmpqError(f"the server's answer to POST {path} is not a zip archive: {exc}") from None
            if out.exists():
                shutil.rmtree(out)
            os.replace(exported, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return out

    def measure(
        self,
        job_id: int,
        key: str,
        backend: str = "cpu-int8",
        batch_size: int = 64,
        *,
        timeout: float = 1800,
    ) -> dict[str, Any]:
        """Measure a candidate's export on the server against the job's FP32 model; returns the candidate, whose
        ``runtime[backend]`` holds the measurement (``step_ms``/``fp_step_ms``, ``sample_ms``/``fp_sample_ms`` at
        the job's ``reference_steps``, ``peak_rss_bytes``/``fp_peak_rss_bytes``, ``weight_bytes``/``fp_weight_bytes``
        and the ratios ``speedup_per_step``, ``speedup_vs_reference`` and ``memory_ratio``).

        The server builds the export for ``backend`` if it was not built and runs one measurement at a time: this
        waits for it (about a minute on ``reference``; minutes on ``cpu-int8``, which compiles; more when another
        measurement is running), up to ``timeout`` seconds. ``key`` may be ``"knee"``; ``batch_size`` is 1 to
        1024. It needs the write token when the server has one.

        Raises:
            ConfigError: a bad ``backend`` or ``batch_size`` (checked before anything is sent).
            ApiError: 401/403 without the server's token, 404 for an unknown job or candidate, 409 when the job's
                model or supernet is not on the server or the export cannot run on ``backend`` there (the reason
                given).
        """
        check_backend(backend)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= 1024:
            raise ConfigError("batch_size", f"must be an integer from 1 to 1024, got {batch_size!r}")
        key = self._candidate_key(job_id, key)
        path = f"/jobs/{int(job_id)}/candidates/{quote(key, safe='')}/measure"
        params = {"backend": backend, "batch_size": batch_size}
        return self._json("POST", path, params=params, timeout=timeout)

    def _candidate_key(self, job_id: int, key: str) -> str:
        """``key``, or the key of the knee of the job's current front for ``"knee"``."""
        if key != "knee":
            return str(key)
        knee = self.front(job_id, knee=True).get("knee")
        if not knee:
            raise TmpqError(f"job {int(job_id)} has no knee point yet (its front is empty)")
        return str(knee["key"])

    def _download(self, method: str, path: str, dest: Path, timeout: float) -> None:
        """Stream the answer to ``method path`` into the file ``dest`` (errors as in :meth:`_request`)."""
        try:
            with self._http.stream(method, path, headers={"Accept": "application/zip"}, timeout=timeout) as response:
                if response.is_error:
                    response.read()
                    raise ApiError.from_response(response)
                with dest.open("wb") as fh:
                    for chunk in response.iter_bytes():
                        fh.write(chunk)
        except httpx.TimeoutException:
            raise ApiUnavailable(self.base_url, f"no answer within {timeout:g} s") from None
        except httpx.RequestError as exc:
            raise ApiUnavailable(self.base_url, _one_line(str(exc)) or type(exc).__name__) from None

    # -- meta ---------------------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """``{"status": "ok", "database": ...}`` when the server and its database answer."""
        return self._json("GET", "/healthz")

    def version(self) -> dict[str, Any]:
        """``{"version", "api", "schema_revision"}`` of the server."""
        return self._json("GET", "/version")
