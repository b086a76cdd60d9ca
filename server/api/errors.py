"""The one place where tmpq's errors become HTTP responses.

``NotFound`` → 404, ``Conflict`` → 409, ``ConfigError`` → 422 (FastAPI's own validation shape, ``loc`` naming the
field), ``ModelLoadError`` → 400, ``StoreError`` → 503, any other ``TmpqError`` → 400.
"""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse

from search.errors import ConfigError, Conflict, ModelLoadError, NotFound, StoreError, TmpqError

logger = logging.getLogger(__name__)

_INDEX = re.compile(r"^(.*?)((?:\[\d+\])+)$")


def field_location(field: str) -> list[str | int]:
    """``"ray.num_actors"`` → ``["ray", "num_actors"]``, ``"steps[1]"`` → ``["steps", 1]``."""
    loc: list[str | int] = []
    for part in field.split("."):
        match = _INDEX.match(part)
        if match is None:
            loc.append(part)
            continue
        if match.group(1):
            loc.append(match.group(1))
        loc.extend(int(i) for i in re.findall(r"\[(\d+)\]", match.group(2)))
    return loc


def status_for(exc: TmpqError) -> int:
    """The HTTP status of an error."""
    for cls, code in (
        (NotFound, status.HTTP_404_NOT_FOUND),
        (Conflict, status.HTTP_409_CONFLICT),
        (ConfigError, status.HTTP_422_UNPROCESSABLE_CONTENT),
        (ModelLoadError, status.HTTP_400_BAD_REQUEST),
        (StoreError, status.HTTP_503_SERVICE_UNAVAILABLE),
    ):
        if isinstance(exc, cls):
            return code
    return status.HTTP_400_BAD_REQUEST


async def tmpq_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """Render a :class:`TmpqError` (registered for that class only)."""
    if not isinstance(exc, TmpqError):  # pragma: no cover - registered for TmpqError only
        raise exc
    code = status_for(exc)
    if isinstance(exc, ConfigError):
        loc = (
            ["body", *field_location(exc.field)]
            if request.method in ("POST", "PUT", "PATCH")
            else ["query", *field_location(exc.field)]
        )
        return JSONResponse({"detail": [{"loc": loc, "msg": exc.reason, "type": "value_error"}]}, status_code=code)
    if isinstance(exc, StoreError):
        logger.error("%s %s: %s", request.method, request.url.path, exc)
        return JSONResponse(
            {"detail": "the database is unavailable; try again"}, status_code=code, headers={"Retry-After": "1"}
        )
    body: dict[str, object] = {"detail": str(exc)}
    if isinstance(exc, ModelLoadError):
        body.update(path=exc.path, reason=exc.reason)
    return JSONResponse(body, status_code=code)


def install_error_handlers(app: FastAPI) -> None:
    """Register :func:`tmpq_error_handler` on ``app``."""
    app.add_exception_handler(TmpqError, tmpq_error_handler)
