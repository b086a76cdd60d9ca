"""Job calibration: what the job's supernet is and how good its calibration came out (``jobs.calibration``, a JSON
summary of the calibration report: per bit option the uniform candidate's PSNR against FP, the worst sites, the
seconds, the range-fit check), stored once the driver has the supernet.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("calibration", sa.JSON(), nullable=True))


def downgrade() -> None:
    # A plain DROP COLUMN, as 0002: a batch table copy would cascade-delete every job's candidates.
    op.drop_column("jobs", "calibration")
