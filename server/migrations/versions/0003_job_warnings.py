"""Job warnings: what a job's driver warned about and the job went on anyway (``jobs.warnings``, a JSON list of
lines), e.g. a prompt longer than the text encoder takes, truncated as diffusers truncates it.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("warnings", sa.JSON(), nullable=True))


def downgrade() -> None:
    # A plain DROP COLUMN, as 0002: a batch table copy would cascade-delete every job's candidates.
    op.drop_column("jobs", "warnings")
