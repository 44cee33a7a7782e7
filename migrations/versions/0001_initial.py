"""initial registry schema: bases, assistants, patches, runs, evaluations, rollouts, audit events

Revision ID: 0001
Revises:
Create Date: 2026-11-28

"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LIVE = sa.text("state = 'live'")


def _when(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    op.create_table(
        "assistants",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("family", sa.String(length=100), nullable=False),
        sa.Column("suite_ref", sa.String(length=1000), nullable=False),
        sa.Column("suite_digest", sa.String(length=64), nullable=False),
        sa.Column("min_accuracy", sa.Float(), nullable=False),
        sa.Column("max_regression", sa.Float(), nullable=False),
        sa.Column("approvers", sa.JSON(), nullable=False),
        sa.Column("admins", sa.JSON(), nullable=False),
        sa.Column("system_prompt", sa.Text(), nullable=False),
        sa.Column("owner", sa.String(length=200), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("min_accuracy >= 0 AND min_accuracy <= 1", name=op.f("ck_assistants_min_accuracy_range")),
        sa.CheckConstraint("max_regression >= 0 AND max_regression <= 1", name=op.f("ck_assistants_max_regression_range")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_assistants")),
        sa.UniqueConstraint("name", name=op.f("uq_assistants_name")),
    )
    op.create_table(
        "base_models",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("family", sa.String(length=100), nullable=False),
        sa.Column("version", sa.String(length=100), nullable=False),
        sa.Column("source_ref", sa.String(length=1000), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("signature", sa.JSON(), nullable=False),
        sa.Column("tokenizer_fingerprint", sa.String(length=64), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("registered_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_base_models")),
        sa.UniqueConstraint("family", "version", name=op.f("uq_base_models_family_version")),
    )
    op.create_index(op.f("ix_base_models_fingerprint"), "base_models", ["fingerprint"])

    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("action", sa.String(length=50), nullable=False),
        sa.Column("entity_type", sa.String(length=30), nullable=False),
        sa.Column("entity_id", sa.Integer(), nullable=False),
        sa.Column("assistant_id", sa.Integer(), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["assistant_id"], ["assistants.id"], name=op.f("fk_audit_events_assistant_id_assistants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
    )
    op.create_index(op.f("ix_audit_events_action"), "audit_events", ["action"])
    op.create_index(op.f("ix_audit_events_assistant_id"), "audit_events", ["assistant_id"])
    op.create_index("ix_audit_events_entity", "audit_events", ["entity_type", "entity_id"])

    op.create_table(
        "patches",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("assistant_id", sa.Integer(), nullable=False),
        sa.Column("origin_base_id", sa.Integer(), nullable=False),
        sa.Column("parent_patch_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("artifact_ref", sa.String(length=200), nullable=False),
        sa.Column("artifact_digest", sa.String(length=64), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("alpha", sa.Float(), nullable=False),
        sa.Column("use_rslora", sa.Boolean(), nullable=False),
        sa.Column("target_modules", sa.JSON(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("provenance", sa.JSON(), nullable=False),
        sa.Column("train_data_ref", sa.String(length=200), nullable=True),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("kind = 'lora'", name=op.f("ck_patches_kind")),
        sa.ForeignKeyConstraint(["assistant_id"], ["assistants.id"], name=op.f("fk_patches_assistant_id_assistants")),
        sa.ForeignKeyConstraint(["origin_base_id"], ["base_models.id"], name=op.f("fk_patches_origin_base_id_base_models")),
        sa.ForeignKeyConstraint(["parent_patch_id"], ["patches.id"], name=op.f("fk_patches_parent_patch_id_patches")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_patches")),
    )
    op.create_index(op.f("ix_patches_assistant_id"), "patches", ["assistant_id"])

    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("assistant_id", sa.Integer(), nullable=False),
        sa.Column("patch_id", sa.Integer(), nullable=True),
        sa.Column("target_base_id", sa.Integer(), nullable=False),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("step", sa.Text(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=200), nullable=False),
        sa.Column("requested_by", sa.String(length=200), nullable=False),
        sa.Column("channel", sa.String(length=200), nullable=False),
        sa.Column("compat_report", sa.JSON(), nullable=True),
        sa.Column("drift_report", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("worker", sa.String(length=200), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("notify_ref", sa.JSON(), nullable=True),
        sa.Column("spec", sa.JSON(), nullable=True),
        sa.Column("result_patch_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(_when("kind", ("transplant", "eval", "retune", "train")), name=op.f("ck_runs_kind")),
        sa.CheckConstraint(
            _when("status", ("queued", "running", "succeeded", "failed", "cancelled")),
            name=op.f("ck_runs_status"),
        ),
        sa.CheckConstraint("progress >= 0 AND progress <= 1", name=op.f("ck_runs_progress_range")),
        sa.ForeignKeyConstraint(["assistant_id"], ["assistants.id"], name=op.f("fk_runs_assistant_id_assistants")),
        sa.ForeignKeyConstraint(["patch_id"], ["patches.id"], name=op.f("fk_runs_patch_id_patches")),
        sa.ForeignKeyConstraint(["result_patch_id"], ["patches.id"], name=op.f("fk_runs_result_patch_id_patches")),
        sa.ForeignKeyConstraint(["target_base_id"], ["base_models.id"], name=op.f("fk_runs_target_base_id_base_models")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_runs_idempotency_key")),
    )
    op.create_index(op.f("ix_runs_assistant_id"), "runs", ["assistant_id"])
    op.create_index("ix_runs_status_created_at", "runs", ["status", "created_at"])

    op.create_table(
        "evaluations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("subject", sa.String(length=20), nullable=False),
        sa.Column("suite_digest", sa.String(length=64), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("accuracy", sa.Float(), nullable=False),
        sa.Column("ci_low", sa.Float(), nullable=False),
        sa.Column("ci_high", sa.Float(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("items_ref", sa.String(length=200), nullable=True),
        sa.Column("duration_s", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(_when("subject", ("candidate", "target_base")), name=op.f("ck_evaluations_subject")),
        sa.CheckConstraint("accuracy >= 0 AND accuracy <= 1", name=op.f("ck_evaluations_accuracy_range")),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_evaluations_run_id_runs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evaluations")),
        sa.UniqueConstraint("run_id", "subject", name=op.f("uq_evaluations_run_id_subject")),
    )

    op.create_table(
        "rollouts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("assistant_id", sa.Integer(), nullable=False),
        sa.Column("channel", sa.String(length=200), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("verdict", sa.String(length=20), nullable=False),
        sa.Column("accuracy", sa.Float(), nullable=True),
        sa.Column("live_accuracy", sa.Float(), nullable=True),
        sa.Column("replaced_rollout_id", sa.Integer(), nullable=True),
        sa.Column("decided_by", sa.String(length=200), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("live_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            _when("state", ("awaiting_approval", "live", "superseded", "rolled_back", "rejected", "blocked")),
            name=op.f("ck_rollouts_state"),
        ),
        sa.CheckConstraint(_when("verdict", ("pass", "fail", "inconclusive")), name=op.f("ck_rollouts_verdict")),
        sa.ForeignKeyConstraint(["assistant_id"], ["assistants.id"], name=op.f("fk_rollouts_assistant_id_assistants")),
        sa.ForeignKeyConstraint(["replaced_rollout_id"], ["rollouts.id"], name=op.f("fk_rollouts_replaced_rollout_id_rollouts")),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_rollouts_run_id_runs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollouts")),
        sa.UniqueConstraint("run_id", name=op.f("uq_rollouts_run_id")),
    )
    op.create_index(op.f("ix_rollouts_assistant_id"), "rollouts", ["assistant_id"])
    # The database, not only the code, keeps one live rollout per (assistant, channel).
    op.create_index(
        "uq_rollouts_one_live_per_channel",
        "rollouts",
        ["assistant_id", "channel"],
        unique=True,
        postgresql_where=LIVE,
        sqlite_where=LIVE,
    )


def downgrade() -> None:
    op.drop_index("uq_rollouts_one_live_per_channel", table_name="rollouts")
    op.drop_index(op.f("ix_rollouts_assistant_id"), table_name="rollouts")
    op.drop_table("rollouts")
    op.drop_table("evaluations")
    op.drop_index("ix_runs_status_created_at", table_name="runs")
    op.drop_index(op.f("ix_runs_assistant_id"), table_name="runs")
    op.drop_table("runs")
    op.drop_index(op.f("ix_patches_assistant_id"), table_name="patches")
    op.drop_table("patches")
    op.drop_index("ix_audit_events_entity", table_name="audit_events")
    op.drop_index(op.f("ix_audit_events_assistant_id"), table_name="audit_events")
    op.drop_index(op.f("ix_audit_events_action"), table_name="audit_events")
    op.drop_table("audit_events")
    op.drop_index(op.f("ix_base_models_fingerprint"), table_name="base_models")
    op.drop_table("base_models")
    op.drop_table("assistants")
