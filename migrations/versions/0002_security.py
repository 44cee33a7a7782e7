"""security: who may request runs and the four-eyes rule per assistant; shared dedupe keys

Revision ID: 0002_security
Revises: 0001
Create Date: 2026-12-02

"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_security"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Existing assistants keep today's behaviour: anyone may request, no four-eyes rule.
    with op.batch_alter_table("assistants") as batch:
        batch.add_column(sa.Column("requesters", sa.JSON(), nullable=False, server_default="[]"))
        batch.add_column(sa.Column("four_eyes", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_table(
        "seen_keys",
        sa.Column("key", sa.String(length=300), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_seen_keys")),
    )
    op.create_index(op.f("ix_seen_keys_expires_at"), "seen_keys", ["expires_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_seen_keys_expires_at"), table_name="seen_keys")
    op.drop_table("seen_keys")
    with op.batch_alter_table("assistants") as batch:
        batch.drop_column("four_eyes")
        batch.drop_column("requesters")
