"""two-stage gate: an assistant's optional full suite, evaluations per stage, the gate's report

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02

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
    # Plain ALTER TABLE (SQLite 3.35+ adds and drops such columns in place): copying `runs` or
    # `assistants` in batch mode would trip the foreign keys that point at them.
    op.add_column("assistants", sa.Column("full_suite_ref", sa.String(length=1000), nullable=True))
    op.add_column("assistants", sa.Column("full_suite_digest", sa.String(length=64), nullable=True))
    op.add_column("runs", sa.Column("gate_report", sa.JSON(), nullable=True))
    # Batch mode: SQLite cannot change a table's constraints in place, so the table is copied.
    with op.batch_alter_table("evaluations") as batch:
        batch.add_column(sa.Column("stage", sa.String(length=10), server_default="quick", nullable=False))
        batch.drop_constraint(op.f("uq_evaluations_run_id_subject"), type_="unique")
        batch.create_unique_constraint(op.f("uq_evaluations_run_id_subject_stage"), ["run_id", "subject", "stage"])
        batch.create_check_constraint(op.f("ck_evaluations_stage"), "stage IN ('quick', 'full')")


def downgrade() -> None:
    op.execute(sa.text("DELETE FROM evaluations WHERE stage = 'full'"))  # the older schema has one per subject
    with op.batch_alter_table("evaluations") as batch:
        batch.drop_constraint(op.f("ck_evaluations_stage"), type_="check")
        batch.drop_constraint(op.f("uq_evaluations_run_id_subject_stage"), type_="unique")
        batch.create_unique_constraint(op.f("uq_evaluations_run_id_subject"), ["run_id", "subject"])
        batch.drop_column("stage")
    op.drop_column("runs", "gate_report")
    op.drop_column("assistants", "full_suite_digest")
    op.drop_column("assistants", "full_suite_ref")
