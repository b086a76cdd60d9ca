"""The one Settings object: TMPQ_* environment variables, defaults, cross-field checks."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from server.settings import DEFAULT_MODEL_ROOT, Settings


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in (
        "DATABASE_URL",
        "DATA_DIR",
        "MODEL_ROOT",
        "API_TOKEN",
        "READ_TOKEN_REQUIRED",
        "RUNNER_CONCURRENCY",
        "LEASE_SECONDS",
        "RAY_ADDRESS",
        "HOST",
        "PORT",
    ):
        monkeypatch.delenv(f"TMPQ_{name}", raising=False)
    monkeypatch.chdir(tmp_path)
    s = Settings()
    assert s.database_url is None and s.resolved_database_url == f"sqlite:///{tmp_path / 'data' / 'tmpq.db'}"
    assert s.model_root == DEFAULT_MODEL_ROOT and DEFAULT_MODEL_ROOT.name == "models"
    assert s.token is None and not s.read_token_required and s.runner_concurrency == 1
    assert (s.host, s.port, s.lease_seconds, s.ray_address) == ("127.0.0.1", 8000, 60.0, None)


def test_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPQ_DATABASE_URL", "postgresql+psycopg://postgres@/x?host=/var/run/postgresql")
    monkeypatch.setenv("TMPQ_API_TOKEN", "t0k")
    monkeypatch.setenv("TMPQ_READ_TOKEN_REQUIRED", "true")
    monkeypatch.setenv("TMPQ_RUNNER_CONCURRENCY", "3")
    monkeypatch.setenv("TMPQ_LEASE_SECONDS", "12.5")
    monkeypatch.setenv("TMPQ_RAY_ADDRESS", "ray://head:10001")
    monkeypatch.setenv("TMPQ_PORT", "9001")
    s = Settings()
    assert s.resolved_database_url.startswith("postgresql+psycopg://") and s.token == "t0k"
    assert "t0k" not in repr(s)  # the token is a secret
    assert (s.read_token_required, s.runner_concurrency, s.lease_seconds, s.ray_address, s.port) == (
        True,
        3,
        12.5,
        "ray://head:10001",
        9001,
    )


def test_bad_values_are_refused() -> None:
    with pytest.raises(ValidationError, match="runner_concurrency"):
        Settings(runner_concurrency=0)
    with pytest.raises(ValidationError, match="lease_seconds"):
        Settings(lease_seconds=0)
    with pytest.raises(ValidationError, match="api_token"):
        Settings(read_token_required=True)
