"""Dependencies shared by the routes, as ``Annotated`` aliases (settings, store, auth)."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from server.settings import Settings
from server.store import Store

_bearer = HTTPBearer(auto_error=False, description="The service token (TMPQ_API_TOKEN).")


async def get_settings(request: Request) -> Settings:
    """The app's :class:`Settings`."""
    return request.app.state.settings


async def get_store(request: Request) -> Store:
    """The app's :class:`Store`."""
    return request.app.state.store


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[Store, Depends(get_store)]
CredentialsDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
#: A job id in a path: a positive 64-bit integer (larger ones cannot exist in either database: 422, not 500).
JobId = Annotated[int, Path(ge=1, le=2**63 - 1, description="The job's id.")]


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
