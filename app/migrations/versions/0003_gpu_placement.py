"""multi-GPU jobs: what a job needs from a worker, what a worker has, and how a row was run

- jobs.gpus_needed: the GPUs a worker must have to claim the job (a `cuda` job's parallel
  world_size, 1 without a strategy; 0 for `cpu` and `estimate`). The claim filters on it in its one
  statement, so it is a column rather than a read of the spec JSON.
- workers.gpus, gpu_memory_bytes, cpu_ranks: what the worker last advertised (NULL: it never did).
- results.strategy, results.world_size: a 1-GPU row and an 8-rank FSDP row of the same method are
  different series on the compare page, and its "latest row per key" groups on them.

Existing rows are migrated: cuda jobs get their world_size from the stored spec, result rows their
strategy and world_size from the stored row (the profiler has written both since `parallel` exists).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 12:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# the JSON field reads of each dialect (`data` and `spec` are JSON on both)
_ROW_FIELD = {
    "postgresql": "data->>'{key}'",
    "sqlite": "json_extract(data, '$.{key}')",
}


def _gpus_needed(spec: dict) -> int:
    """The rule of app/queue/placement.py as it stood at this revision (a migration keeps its own copy)."""
    if spec.get("device") != "cuda":
        return 0
    parallel = spec.get("parallel") or {}
    return int(parallel.get("world_size") or 1) if parallel.get("strategy", "none") != "none" else 1


def upgrade() -> None:
    op.add_column("jobs", sa.Column("gpus_needed", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("workers", sa.Column("gpus", sa.Integer(), nullable=True))
    op.add_column("workers", sa.Column("gpu_memory_bytes", sa.BigInteger(), nullable=True))
    op.add_column("workers", sa.Column("cpu_ranks", sa.Integer(), nullable=True))
    op.add_column("results", sa.Column("strategy", sa.String(length=16), nullable=False, server_default="none"))
    op.add_column("results", sa.Column("world_size", sa.Integer(), nullable=False, server_default="1"))

    bind = op.get_bind()
    jobs = sa.table("jobs", sa.column("id", sa.String), sa.column("spec", sa.JSON), sa.column("device", sa.String))
    for job_id, spec in bind.execute(sa.select(jobs.c.id, jobs.c.spec).where(jobs.c.device == "cuda")):
        needed = _gpus_needed(spec or {})
        bind.execute(sa.text("UPDATE jobs SET gpus_needed = :n WHERE id = :id"), {"n": needed, "id": job_id})

    read = _ROW_FIELD.get(bind.dialect.name)
    if read is None:  # a store this project does not run on: its rows keep the one-device defaults
        return
    strategy, world_size = read.format(key="strategy"), read.format(key="world_size")
    bind.execute(
        sa.text(
            f"UPDATE results SET strategy = {strategy}, world_size = COALESCE(CAST({world_size} AS INTEGER), 1) "
            f"WHERE {strategy} IS NOT NULL AND {strategy} <> 'none'"
        )
    )


def downgrade() -> None:
    # plain ALTER TABLE ... DROP COLUMN (SQLite 3.35+ has it): never a batch rebuild, whose DROP
    # TABLE would cascade to job_events and results (see 0002)
    for table, column in (
        ("results", "world_size"),
        ("results", "strategy"),
        ("workers", "cpu_ranks"),
        ("workers", "gpu_memory_bytes"),
        ("workers", "gpus"),
        ("jobs", "gpus_needed"),
    ):
        op.drop_column(table, column)
