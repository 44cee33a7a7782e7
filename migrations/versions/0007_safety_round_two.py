"""safety, round two: one row per person who requests runs, locked while their quota is counted

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05

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
    # Rows appear on each person's next request; nothing to backfill.
    op.create_table(
        "requesters",
        sa.Column("user", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("user", name=op.f("pk_requesters")),
    )


def downgrade() -> None:
    # The rows are only locks: runs and their requesters stay in `runs`.
    op.drop_table("requesters")
