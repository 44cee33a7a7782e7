"""releases, answers and ratings; assistants' on-release policy and live guard

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02

"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Spelled out, not imported from the models: a revision must keep meaning what it meant when written.
ON_RELEASE = ("auto", "ask", "off")


def _defer_foreign_keys() -> None:
    """SQLite alters assistants, runs and rollouts by copying them, and the copy's DROP TABLE would
    trip the foreign keys that point at them. The driver runs DDL outside a transaction, where only
    `foreign_keys = OFF` takes effect, and inside one (after alembic's first version write) only
    `defer_foreign_keys` does: both, so the keys are checked at commit, when the copies (same ids)
    are in place. The migration's connection is discarded afterwards; new ones turn the keys on."""
    if op.get_bind().dialect.name == "sqlite":
        op.execute(sa.text("PRAGMA foreign_keys = OFF"))
        op.execute(sa.text("PRAGMA defer_foreign_keys = ON"))


def upgrade() -> None:
    _defer_foreign_keys()
    op.create_table(
        "releases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("base_id", sa.Integer(), nullable=False),
        sa.Column("offers", sa.JSON(), nullable=False),
        sa.Column("notify_ref", sa.JSON(), nullable=True),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["base_id"], ["base_models.id"], name=op.f("fk_releases_base_id_base_models")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_releases")),
        sa.UniqueConstraint("base_id", name=op.f("uq_releases_base_id")),
    )
    op.create_table(
        "answers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("rollout_id", sa.Integer(), nullable=False),
        sa.Column("channel", sa.String(length=200), nullable=False),
        sa.Column("asked_by", sa.String(length=200), nullable=False),
        sa.Column("question", sa.Text(), nullable=False),
        sa.Column("message_ts", sa.String(length=50), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["rollout_id"], ["rollouts.id"], name=op.f("fk_answers_rollout_id_rollouts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_answers")),
    )
    op.create_index(op.f("ix_answers_rollout_id"), "answers", ["rollout_id"])
    op.create_index("ix_answers_channel_message_ts", "answers", ["channel", "message_ts"])
    op.create_table(
        "ratings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("answer_id", sa.Integer(), nullable=False),
        sa.Column("user", sa.String(length=200), nullable=False),
        sa.Column("up", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["answer_id"], ["answers.id"], name=op.f("fk_ratings_answer_id_answers")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ratings")),
        sa.UniqueConstraint("answer_id", "user", name=op.f("uq_ratings_answer_id_user")),
    )
    op.create_index(op.f("ix_ratings_answer_id"), "ratings", ["answer_id"])
    # Batch mode: SQLite adds CHECK constraints and foreign keys only by copying the table.
    with op.batch_alter_table("assistants") as batch:
        batch.add_column(sa.Column("on_release", sa.String(length=10), nullable=False, server_default="auto"))
        batch.add_column(sa.Column("guard_min_ratings", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("guard_min_satisfaction", sa.Float(), nullable=True))
        batch.create_check_constraint(
            op.f("ck_assistants_on_release"), f"on_release IN ({', '.join(repr(v) for v in ON_RELEASE)})")
        batch.create_check_constraint(
            op.f("ck_assistants_live_guard_complete"),
            "(guard_min_ratings IS NULL) = (guard_min_satisfaction IS NULL)")
        batch.create_check_constraint(
            op.f("ck_assistants_guard_min_ratings_positive"), "guard_min_ratings IS NULL OR guard_min_ratings >= 1")
        batch.create_check_constraint(
            op.f("ck_assistants_guard_min_satisfaction_range"),
            "guard_min_satisfaction IS NULL OR (guard_min_satisfaction >= 0 AND guard_min_satisfaction <= 1)")
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("release_id", sa.Integer(), nullable=True))
        batch.create_foreign_key(op.f("fk_runs_release_id_releases"), "releases", ["release_id"], ["id"])
        batch.create_index(op.f("ix_runs_release_id"), ["release_id"])
    with op.batch_alter_table("rollouts") as batch:
        batch.add_column(sa.Column("guard_tripped_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    _defer_foreign_keys()
    op.drop_index(op.f("ix_ratings_answer_id"), table_name="ratings")
    op.drop_table("ratings")
    op.drop_index("ix_answers_channel_message_ts", table_name="answers")
    op.drop_index(op.f("ix_answers_rollout_id"), table_name="answers")
    op.drop_table("answers")
    with op.batch_alter_table("rollouts") as batch:
        batch.drop_column("guard_tripped_at")
    with op.batch_alter_table("runs") as batch:
        batch.drop_index(op.f("ix_runs_release_id"))
        batch.drop_constraint(op.f("fk_runs_release_id_releases"), type_="foreignkey")
        batch.drop_column("release_id")
    with op.batch_alter_table("assistants") as batch:
        for name in ("guard_min_satisfaction_range", "guard_min_ratings_positive", "live_guard_complete",
                     "on_release"):
            batch.drop_constraint(op.f(f"ck_assistants_{name}"), type_="check")
        batch.drop_column("guard_min_satisfaction")
        batch.drop_column("guard_min_ratings")
        batch.drop_column("on_release")
    op.drop_table("releases")
