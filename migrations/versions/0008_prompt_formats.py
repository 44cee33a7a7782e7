"""prompt formats: an assistant says how questions are put to its model; a score's key names the
prompt format it was computed in (existing scores were computed on suites as written: `raw`)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07

"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# portllm_engine.prompt.PromptFormat("raw").digest(), as registry.models.RAW_PROMPT_DIGEST (a
# migration keeps its own copy: it must not change when the code does).
RAW_PROMPT_DIGEST = "568e4e87168ced58ef57e03d7a0c3b2a38b395fd1ea784068ce864e093f68043"
OLD_KEY = ("model_fingerprint", "patch_digest", "suite_digest", "dtype", "device_kind", "scorer_version")
NEW_KEY = ("model_fingerprint", "patch_digest", "suite_digest", "prompt_digest", "dtype", "device_kind",
           "scorer_version")
ACTIVE = sa.text("forgotten_at IS NULL")


def _defer_foreign_keys() -> None:
    """As in 0005: SQLite copies the altered tables, whose DROP would trip the keys pointing at them."""
    if op.get_bind().dialect.name == "sqlite":
        op.execute(sa.text("PRAGMA foreign_keys = OFF"))
        op.execute(sa.text("PRAGMA defer_foreign_keys = ON"))


def upgrade() -> None:
    _defer_foreign_keys()
    with op.batch_alter_table("assistants") as batch:
        batch.add_column(sa.Column("prompt_format", sa.String(length=10), nullable=False, server_default="chat"))
    op.drop_index("uq_scores_key", table_name="scores")
    with op.batch_alter_table("scores") as batch:
        batch.add_column(sa.Column("prompt_digest", sa.String(length=64), nullable=False,
                                   server_default=RAW_PROMPT_DIGEST))
        batch.add_column(sa.Column("prompt_format", sa.String(length=80), nullable=False, server_default="raw"))
    op.create_index("uq_scores_key", "scores", list(NEW_KEY), unique=True, postgresql_where=ACTIVE,
                    sqlite_where=ACTIVE)


def downgrade() -> None:
    _defer_foreign_keys()
    op.drop_index("uq_scores_key", table_name="scores")
    op.execute(sa.text(f"UPDATE scores SET forgotten_at = CURRENT_TIMESTAMP WHERE prompt_digest != '{RAW_PROMPT_DIGEST}'"))
    with op.batch_alter_table("scores") as batch:
        batch.drop_column("prompt_format")
        batch.drop_column("prompt_digest")
    op.create_index("uq_scores_key", "scores", list(OLD_KEY), unique=True, postgresql_where=ACTIVE,
                    sqlite_where=ACTIVE)
    with op.batch_alter_table("assistants") as batch:
        batch.drop_column("prompt_format")
