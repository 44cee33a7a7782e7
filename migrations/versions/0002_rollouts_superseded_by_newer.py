"""rollouts: the superseded_by_newer end state and the newer proposal that retired a rollout

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

# Spelled out, not imported from the models: a revision must keep meaning what it meant when written.
STATES_BEFORE = ("awaiting_approval", "live", "superseded", "rolled_back", "rejected", "blocked")
RETIRED = "superseded_by_newer"
STATES_AFTER = (*STATES_BEFORE, RETIRED)


def _when(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    # Batch mode: SQLite cannot alter a CHECK constraint in place, so the table is copied.
    with op.batch_alter_table("rollouts") as batch:
        batch.add_column(sa.Column("newer_rollout_id", sa.Integer(), nullable=True))
        batch.create_foreign_key(
            op.f("fk_rollouts_newer_rollout_id_rollouts"), "rollouts", ["newer_rollout_id"], ["id"]
        )
        batch.drop_constraint(op.f("ck_rollouts_state"), type_="check")
        batch.create_check_constraint(op.f("ck_rollouts_state"), _when("state", STATES_AFTER))
        batch.create_check_constraint(
            op.f("ck_rollouts_newer_rollout_when_replaced"),
            f"state != '{RETIRED}' OR newer_rollout_id IS NOT NULL",
        )


def downgrade() -> None:
    # The older schema has no such state; a retired proposal never went live and can no longer be
    # decided, which it calls rejected. The audit trail still says which run replaced it.
    op.execute(sa.text(f"UPDATE rollouts SET state = 'rejected' WHERE state = '{RETIRED}'"))
    with op.batch_alter_table("rollouts") as batch:
        batch.drop_constraint(op.f("ck_rollouts_newer_rollout_when_replaced"), type_="check")
        batch.drop_constraint(op.f("ck_rollouts_state"), type_="check")
        batch.create_check_constraint(op.f("ck_rollouts_state"), _when("state", STATES_BEFORE))
        batch.drop_constraint(op.f("fk_rollouts_newer_rollout_id_rollouts"), type_="foreignkey")
        batch.drop_column("newer_rollout_id")
