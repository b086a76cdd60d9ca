"""Versions the service reports."""

from __future__ import annotations

from importlib import metadata

API_VERSION = "v1"
API_PREFIX = f"/api/{API_VERSION}"


def package_version() -> str:
    """The installed ``tmpq`` distribution's version (``0+unknown`` when run from an uninstalled tree)."""
    try:
        return metadata.version("tmpq")
    except metadata.PackageNotFoundError:
        return "0+unknown"
