"""jobs.dtype and results.dtype hold every spec dtype ('bf16-weights' is 12 characters)

PostgreSQL refused a bf16-weights job with "value too long for type character varying(8)"
(found by tests/app/test_generated_specs.py, issue #16); SQLite does not enforce the length.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 12:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _resize(width_from: int, width_to: int) -> None:
    # SQLite does not enforce a VARCHAR's length, and changing a column there means rebuilding the
    # table, whose DROP would cascade to job_events and results: leave SQLite's tables as they are.
    if op.get_bind().dialect.name == "sqlite":
        return
    for table in ("jobs", "results"):
        op.alter_column(table, "dtype", existing_type=sa.String(width_from), type_=sa.String(width_to))


def upgrade() -> None:
    _resize(8, 16)


def downgrade() -> None:
    _resize(16, 8)
