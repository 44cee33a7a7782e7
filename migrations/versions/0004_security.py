"""security: who may request runs and the four-eyes rule per assistant; shared dedupe keys

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02

"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Existing assistants keep today's behaviour: anyone may request, no four-eyes rule. Plain
    # ALTER TABLE: a batch copy of `assistants` would trip the foreign keys that point at it.
    op.add_column("assistants", sa.Column("requesters", sa.JSON(), nullable=False, server_default="[]"))
    op.add_column("assistants", sa.Column("four_eyes", sa.Boolean(), nullable=False, server_default=sa.false()))
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
    op.drop_column("assistants", "four_eyes")
    op.drop_column("assistants", "requesters")
