"""Job activity: what a RUNNING job's driver last reported it is doing (``jobs.activity``, ``jobs.activity_at``).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("activity", sa.JSON(), nullable=True))
    op.add_column("jobs", sa.Column("activity_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    # Plain ALTER TABLE ... DROP COLUMN (SQLite >= 3.35): a batch copy of ``jobs`` would drop the old table, and with
    # foreign keys on that deletes every job's candidates through ON DELETE CASCADE.
    op.drop_column("jobs", "activity_at")
    op.drop_column("jobs", "activity")
