"""``/healthz`` and ``/version`` (never guarded by the token)."""

from __future__ import annotations

from fastapi import APIRouter

from server.api.deps import StoreDep
from server.schemas import Health, VersionInfo
from server.version import API_VERSION, package_version

router = APIRouter(tags=["meta"])


@router.get("/healthz", response_model=Health, responses={503: {"description": "The database does not answer"}})
def healthz(store: StoreDep) -> Health:
    """Liveness: the service and its database answer."""
    store.ping()
    return Health(status="ok", database=store.dialect)


@router.get("/version", response_model=VersionInfo)
def version(store: StoreDep) -> VersionInfo:
    """The service version, the API version and the database schema revision."""
    return VersionInfo(version=package_version(), api=API_VERSION, schema_revision=store.schema_revision())
