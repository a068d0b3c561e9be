"""jobs/results.model: the model's identity, not its family

A job on bert with 4 layers and one on bert with 24 both stored `model = "bert"`, so the compare
page took the second's full row as the first's baseline. The model column now holds the identity of
contract/identity.py (a preset's name; a family without overrides as before; `family~hash` of the
canonical overrides otherwise) and a new `model_label` what pages print.

Stored jobs get both from their stored spec, and their rows the job's: the key is a function of
the spec alone, so a job migrated here and one submitted afterwards on the same model agree.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 17:00:00
"""

import sqlalchemy as sa
from alembic import op

from contract import identity

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

JOBS = sa.table("jobs", sa.column("id"), sa.column("spec", sa.JSON), sa.column("model"), sa.column("model_label"))


def upgrade() -> None:
    op.add_column("jobs", sa.Column("model_label", sa.String(160), nullable=True))
    op.add_column("results", sa.Column("model_label", sa.String(160), nullable=True))
    bind = op.get_bind()
    for job_id, spec in bind.execute(sa.select(JOBS.c.id, JOBS.c.spec)).all():
        model = (spec or {}).get("model")
        if model is None:
            continue
        key, label = identity.of_spec_model(model)
        bind.execute(JOBS.update().where(JOBS.c.id == job_id).values(model=key, model_label=label))
    bind.execute(
        sa.text(
            "UPDATE results SET model = (SELECT model FROM jobs WHERE jobs.id = results.job_id), "
            "model_label = (SELECT model_label FROM jobs WHERE jobs.id = results.job_id)"
        )
    )


def downgrade() -> None:
    # back to the family name, as 0004 stored it (plain DROP COLUMN, never a batch rebuild: see 0002)
    bind = op.get_bind()
    for job_id, spec in bind.execute(sa.select(JOBS.c.id, JOBS.c.spec)).all():
        model = (spec or {}).get("model")
        if isinstance(model, dict):
            bind.execute(JOBS.update().where(JOBS.c.id == job_id).values(model=model.get("family", "?")))
    bind.execute(sa.text("UPDATE results SET model = (SELECT model FROM jobs WHERE jobs.id = results.job_id)"))
    op.drop_column("results", "model_label")
    op.drop_column("jobs", "model_label")
