"""the evaluation ledger: one score per distinct key; evaluations point at scores; subject `live`

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05

"""
from __future__ import annotations

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Spelled out, not imported from the models: a revision must keep meaning what it meant when written.
KEY = ("model_fingerprint", "patch_digest", "suite_digest", "dtype", "device_kind", "scorer_version")
NUMBERS = ("suite_digest", "n", "accuracy", "ci_low", "ci_high", "metrics", "items_ref", "duration_s")
ACTIVE = sa.text("forgotten_at IS NULL")
# Scores from before the ledger: which dtype and device computed them was not recorded, and the
# scorer has changed since, so these keys never match a new run's (it computes its own).
LEGACY = {"dtype": "unknown", "device_kind": "unknown", "scorer_version": 0}


def _defer_foreign_keys() -> None:
    """As in 0005: SQLite copies the evaluations table, whose DROP would trip its foreign keys."""
    if op.get_bind().dialect.name == "sqlite":
        op.execute(sa.text("PRAGMA foreign_keys = OFF"))
        op.execute(sa.text("PRAGMA defer_foreign_keys = ON"))


def upgrade() -> None:
    _defer_foreign_keys()
    op.create_table(
        "scores",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_fingerprint", sa.String(length=64), nullable=False),
        sa.Column("patch_digest", sa.String(length=64), nullable=False),
        sa.Column("suite_digest", sa.String(length=64), nullable=False),
        sa.Column("dtype", sa.String(length=20), nullable=False),
        sa.Column("device_kind", sa.String(length=10), nullable=False),
        sa.Column("scorer_version", sa.Integer(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("accuracy", sa.Float(), nullable=False),
        sa.Column("ci_low", sa.Float(), nullable=False),
        sa.Column("ci_high", sa.Float(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("items_ref", sa.String(length=200), nullable=True),
        sa.Column("duration_s", sa.Float(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("computed_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("forgotten_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("accuracy >= 0 AND accuracy <= 1", name=op.f("ck_scores_accuracy_range")),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_scores_run_id_runs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scores")),
    )
    op.create_index("uq_scores_key", "scores", list(KEY), unique=True,
                    postgresql_where=ACTIVE, sqlite_where=ACTIVE)
    op.create_index(op.f("ix_scores_model_fingerprint"), "scores", ["model_fingerprint"])
    op.create_index(op.f("ix_scores_suite_digest"), "scores", ["suite_digest"])
    op.create_index(op.f("ix_scores_run_id"), "scores", ["run_id"])
    with op.batch_alter_table("evaluations") as batch:
        batch.add_column(sa.Column("score_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("computed", sa.Boolean(), nullable=False, server_default=sa.true()))
    _backfill()
    with op.batch_alter_table("evaluations") as batch:
        batch.alter_column("score_id", existing_type=sa.Integer(), nullable=False)
        batch.create_foreign_key(op.f("fk_evaluations_score_id_scores"), "scores", ["score_id"], ["id"])
        batch.create_index(op.f("ix_evaluations_score_id"), ["score_id"])
        batch.drop_constraint(op.f("ck_evaluations_accuracy_range"), type_="check")
        batch.drop_constraint(op.f("ck_evaluations_subject"), type_="check")
        batch.create_check_constraint(op.f("ck_evaluations_subject"),
                                      "subject IN ('candidate', 'target_base', 'live')")
        for column in NUMBERS:
            batch.drop_column(column)


def _backfill() -> None:
    """One ledger entry per distinct key among the evaluations (the earliest one's numbers), each
    evaluation pointing at its entry. The candidate carries the run's result patch (a re-tune's)
    or else its patch; the base alone carries none."""
    bind = op.get_bind()
    rows = bind.execute(sa.text(
        "SELECT e.id, e.run_id, e.subject, e.suite_digest, e.n, e.accuracy, e.ci_low, e.ci_high, e.metrics,"
        " e.items_ref, e.duration_s, e.created_at, b.fingerprint,"
        " COALESCE(rp.artifact_digest, p.artifact_digest) AS patch_digest, r.worker"
        " FROM evaluations e JOIN runs r ON r.id = e.run_id JOIN base_models b ON b.id = r.target_base_id"
        " LEFT JOIN patches p ON p.id = r.patch_id LEFT JOIN patches rp ON rp.id = r.result_patch_id"
        " ORDER BY e.created_at, e.id")).mappings().all()
    scores = sa.table("scores", sa.column("id"), sa.column("metrics", sa.JSON), *(sa.column(name) for name in (
        *KEY, *(n for n in NUMBERS if n != "metrics"), "run_id", "computed_by", "created_at")))
    seen: dict[tuple, int] = {}
    for row in rows:
        patch = (row["patch_digest"] or "") if row["subject"] == "candidate" else ""
        key = (row["fingerprint"], patch, row["suite_digest"])
        if key not in seen:
            values = {name: row[name] for name in NUMBERS} | LEGACY | {
                "model_fingerprint": row["fingerprint"], "patch_digest": patch, "run_id": row["run_id"],
                "computed_by": row["worker"] or "worker", "created_at": row["created_at"]}
            if isinstance(values["metrics"], str):  # SQLite hands JSON back as its text
                values["metrics"] = json.loads(values["metrics"])
            seen[key] = bind.execute(sa.insert(scores).values(**values).returning(scores.c.id)).scalar_one()
        bind.execute(sa.text("UPDATE evaluations SET score_id = :score WHERE id = :id"),
                     {"score": seen[key], "id": row["id"]})


def downgrade() -> None:
    _defer_foreign_keys()
    op.execute(sa.text("DELETE FROM evaluations WHERE subject = 'live'"))  # the older schema has no such subject
    with op.batch_alter_table("evaluations") as batch:
        for column, kind in (("suite_digest", sa.String(length=64)), ("n", sa.Integer()), ("accuracy", sa.Float()),
                             ("ci_low", sa.Float()), ("ci_high", sa.Float()), ("metrics", sa.JSON()),
                             ("items_ref", sa.String(length=200)), ("duration_s", sa.Float())):
            batch.add_column(sa.Column(column, kind, nullable=True))
    for column in NUMBERS:
        op.execute(sa.text(f"UPDATE evaluations SET {column} = "
                           f"(SELECT s.{column} FROM scores s WHERE s.id = evaluations.score_id)"))
    with op.batch_alter_table("evaluations") as batch:
        for column in NUMBERS:
            if column != "items_ref":
                batch.alter_column(column, nullable=False)
        batch.drop_constraint(op.f("ck_evaluations_subject"), type_="check")
        batch.create_check_constraint(op.f("ck_evaluations_subject"), "subject IN ('candidate', 'target_base')")
        batch.create_check_constraint(op.f("ck_evaluations_accuracy_range"), "accuracy >= 0 AND accuracy <= 1")
        batch.drop_index(op.f("ix_evaluations_score_id"))
        batch.drop_constraint(op.f("fk_evaluations_score_id_scores"), type_="foreignkey")
        batch.drop_column("computed")
        batch.drop_column("score_id")
    op.drop_index(op.f("ix_scores_run_id"), table_name="scores")
    op.drop_index(op.f("ix_scores_suite_digest"), table_name="scores")
    op.drop_index(op.f("ix_scores_model_fingerprint"), table_name="scores")
    op.drop_index("uq_scores_key", table_name="scores")
    op.drop_table("scores")
