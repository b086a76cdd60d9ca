"""The service's one settings object, read from ``TMPQ_*`` environment variables (or passed explicitly)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: The repository's ``models/`` directory: the default model root (the shipped testbed lives there).
DEFAULT_MODEL_ROOT = Path(__file__).resolve().parents[1] / "models"

#: File name of the embedded SQLite database inside the data directory.
SQLITE_FILE = "tmpq.db"


class Settings(BaseSettings):
    """Configuration of the API server and the job runner.

    Every field is read from the environment variable ``TMPQ_<FIELD>`` (e.g. ``TMPQ_DATABASE_URL``) unless given
    explicitly: ``Settings(data_dir=tmp_path)``.
    """

    model_config = SettingsConfigDict(env_prefix="TMPQ_", extra="ignore", frozen=True)

    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the store, e.g. "
        "``postgresql+psycopg://postgres@/tmpq?host=/var/run/postgresql``. Unset: an embedded SQLite file "
        "``<data_dir>/tmpq.db`` (WAL mode, busy timeout).",
    )
    data_dir: Path = Field(
        default=Path("data"),
        description="Directory for the embedded SQLite database and other local state; created when missing.",
    )
    model_root: Path = Field(
        default=DEFAULT_MODEL_ROOT,
        description="Jobs may only name model directories under this root (symlinks resolved). A relative model "
        "path in a job spec is taken relative to it. Default: the repository's ``models/`` directory.",
    )
    api_token: SecretStr | None = Field(
        default=None,
        description="Bearer token required on every mutating route (POST, DELETE) when set; unset: no auth.",
    )
    read_token_required: bool = Field(
        default=False,
        description="Also require the bearer token on read routes (``/healthz`` and ``/version`` stay open). "
        "Needs ``api_token``.",
    )
    runner_concurrency: int = Field(default=1, ge=1, le=64, description="Jobs one runner executes at a time.")
    lease_seconds: float = Field(
        default=60.0,
        gt=0,
        description="How long a runner's claim on a job lasts without a heartbeat; after that another runner may "
        "take the job over and resume it from its last stored generation. Heartbeats renew it every third of it.",
    )
    poll_seconds: float = Field(default=1.0, gt=0, description="How often an idle runner looks for PENDING jobs.")
    ray_address: str | None = Field(
        default=None,
        description="The operator's Ray cluster address, used by every job (a job spec cannot name one); unset: "
        "each job starts a local Ray.",
    )
    evaluator: Literal["ray", "inprocess"] = Field(
        default="ray",
        description="Where a job's candidates are evaluated: ``ray`` (Ray actors: a local Ray unless an address is "
        "given) or ``inprocess`` (in the runner's own process: no Ray, for small jobs and tests).",
    )
    host: str = Field(default="127.0.0.1", description="Address ``tmpq serve`` listens on.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port ``tmpq serve`` listens on.")
    max_body_bytes: int = Field(
        default=1_048_576,
        ge=1024,
        le=2**40,
        description="Largest request body the API accepts, in bytes (default 1 MiB); a larger one is answered 413 "
        "before it is parsed or stored, a chunked one as soon as it streams past the limit.",
    )
    sqlite_busy_timeout_ms: int = Field(
        default=30_000, ge=0, description="How long a SQLite writer waits for the database lock before failing."
    )

    @model_validator(mode="after")
    def _check_auth(self) -> Settings:
        if self.read_token_required and self.api_token is None:
            raise ValueError("read_token_required needs api_token (TMPQ_API_TOKEN) to be set")
        return self

    @property
    def resolved_database_url(self) -> str:
        """``database_url``, or the SQLite file under ``data_dir``."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(Path(self.data_dir) / SQLITE_FILE).resolve()}"

    @property
    def token(self) -> str | None:
        """The API token in clear, or None."""
        return self.api_token.get_secret_value() if self.api_token is not None else None
