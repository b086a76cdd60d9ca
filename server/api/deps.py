"""Dependencies shared by the routes, as ``Annotated`` aliases (settings, store, auth)."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from server.settings import Settings
from server.store import Store

_bearer = HTTPBearer(auto_error=False, description="The service token (TMPQ_API_TOKEN).")

#: Every integer path and query parameter has an upper bound, so that a larger value is FastAPI's 422 instead of a
#: database overflow (500 on SQLite, 503 on PostgreSQL). A value compared with one of the store's INTEGER columns
#: (job ids, candidate sequence numbers, generations, step counts) is at most MAX_ID: the columns are 32-bit on
#: PostgreSQL, which casts a bound parameter to the column's type. Any other is at most MAX_INT64, the largest
#: integer both databases take.
MAX_INT64 = 2**63 - 1
MAX_ID = 2**31 - 1
#: Bound (in absolute value) of every float query parameter; they must be finite too. Far above any BitOps count,
#: byte count or quality a job produces.
MAX_QUERY_FLOAT = 1e30


async def get_settings(request: Request) -> Settings:
    """The app's :class:`Settings`."""
    return request.app.state.settings


async def get_store(request: Request) -> Store:
    """The app's :class:`Store`."""
    return request.app.state.store


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[Store, Depends(get_store)]
CredentialsDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
#: A job id in a path: a positive integer of the ids' column (larger ones cannot exist: 422, not 500 or 503).
JobId = Annotated[int, Path(ge=1, le=MAX_ID, description="The job's id.")]


def _check_token(settings: Settings, credentials: HTTPAuthorizationCredentials | None) -> None:
    expected = settings.token
    if expected is None:
        return
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "a bearer token is required", headers={"WWW-Authenticate": "Bearer"}
        )
    if not secrets.compare_digest(credentials.credentials.encode(), expected.encode()):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "the bearer token is not valid")


async def require_write_token(settings: SettingsDep, credentials: CredentialsDep) -> None:
    """Guards mutating routes: the bearer token must match ``TMPQ_API_TOKEN`` when that is set."""
    _check_token(settings, credentials)


async def require_read_token(settings: SettingsDep, credentials: CredentialsDep) -> None:
    """Guards read routes when ``TMPQ_READ_TOKEN_REQUIRED`` is set."""
    if settings.read_token_required:
        _check_token(settings, credentials)


WriteAuth = Depends(require_write_token)
ReadAuth = Depends(require_read_token)
