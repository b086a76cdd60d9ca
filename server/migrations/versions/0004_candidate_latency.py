"""Candidate latency: the milliseconds a job's measured latency table predicts for a candidate's denoising on its
run-time backend (``candidates.latency_ms``; null where the job measured none).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("candidates", sa.Column("latency_ms", sa.Float(), nullable=True))


def downgrade() -> None:
    # A plain DROP COLUMN, as 0002: a batch table copy would cascade-delete every candidate's objective values.
    op.drop_column("candidates", "latency_ms")
