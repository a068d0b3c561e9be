"""results.compiled: a torch.compile run of a method is its own series

A job spec's `compile: true` runs every trial's step under torch.compile, and its rows say
`compiled: true`. Keyed without it, the compare page's "latest row per key" let a compiled run and
an eager run of the same method overwrite each other; as a column, the key groups on it (as on
strategy and world_size, 0003) and a compiled row is compared with the compiled baseline's.

Existing rows are migrated from the stored row (`data["compiled"]`, written by the profiler since
`compile` exists in the spec); a row that does not say ran eagerly.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 19:20:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# "the stored row says compiled: true", as each dialect reads its JSON `data` (a JSON true is
# the text 'true' to PostgreSQL's ->>, the integer 1 to SQLite's json_extract)
_COMPILED_TRUE = {
    "postgresql": "data->>'compiled' = 'true'",
    "sqlite": "json_extract(data, '$.compiled') = 1",
}


def upgrade() -> None:
    op.add_column("results", sa.Column("compiled", sa.Boolean(), nullable=False, server_default=sa.false()))

    bind = op.get_bind()
    compiled = _COMPILED_TRUE.get(bind.dialect.name)
    if compiled is None:  # a store this project does not run on: its rows keep the eager default
        return
    bind.execute(sa.text(f"UPDATE results SET compiled = :yes WHERE {compiled}"), {"yes": True})


def downgrade() -> None:
    # plain ALTER TABLE ... DROP COLUMN (SQLite 3.35+ has it): never a batch rebuild, whose DROP
    # TABLE would cascade to job_events and results (see 0002)
    op.drop_column("results", "compiled")
