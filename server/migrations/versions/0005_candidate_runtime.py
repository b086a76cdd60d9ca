"""Candidate run-time measurements: what a candidate's export measured against its FP32 model on the server, per
run-time backend (``candidates.runtime``, JSON ``{backend: measurement}``; null where nothing was measured).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("candidates", sa.Column("runtime", sa.JSON(), nullable=True))


def downgrade() -> None:
    # A plain DROP COLUMN, as 0002: a batch table copy would cascade-delete every candidate's objective values.
    op.drop_column("candidates", "runtime")
