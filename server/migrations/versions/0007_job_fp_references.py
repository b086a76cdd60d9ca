"""Job FP references: the FP model on each schedule of the final front (``jobs.fp_references``, JSON
``{"points": [{"steps", "timesteps", "bitops", "quality", "mse", "psnr", "ssim", ...}]}``), stored by the front
analysis so the front separates the error of fewer steps from the error of fewer bits.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("fp_references", sa.JSON(), nullable=True))


def downgrade() -> None:
    # A plain DROP COLUMN, as 0002: a batch table copy would cascade-delete every job's candidates.
    op.drop_column("jobs", "fp_references")
