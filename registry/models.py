"""The registry's tables: bases, assistants, patches, runs, evaluations, rollouts, audit events,
releases, answers and their ratings."""
from __future__ import annotations

from datetime import datetime, timezone
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Named constraints keep Alembic's batch mode on SQLite and later migrations deterministic.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# Ids are Integer columns: 32-bit on PostgreSQL, and the same schema bounds them on SQLite.
MAX_ID = 2**31 - 1


def id_in_range(value: int) -> bool:
    """Whether a row can have this id. Look a typed id up only when it is: a larger one makes
    PostgreSQL fail the query ("integer out of range") and SQLite's driver overflow."""
    return 0 < value <= MAX_ID


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in and out; SQLite stores no offset, so naive values read back as UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the registry; use an aware UTC datetime")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class RunKind(StrEnum):
    TRANSPLANT = "transplant"
    EVAL = "eval"
    RETUNE = "retune"
    TRAIN = "train"


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class RolloutState(StrEnum):
    AWAITING_APPROVAL = "awaiting_approval"
    LIVE = "live"
    SUPERSEDED = "superseded"
    ROLLED_BACK = "rolled_back"
    REJECTED = "rejected"
    BLOCKED = "blocked"
    SUPERSEDED_BY_NEWER = "superseded_by_newer"  # retired undecided: a newer run proposed the same base


# The state sets every package uses (tuples, so SQL `IN` takes them as they are).
ACTIVE_RUN_STATUSES = (RunStatus.QUEUED, RunStatus.RUNNING)
FINAL_RUN_STATUSES = (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED)
DECIDABLE_ROLLOUT_STATES = (RolloutState.AWAITING_APPROVAL, RolloutState.BLOCKED)


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


class OnRelease(StrEnum):
    """What a new base version of an assistant's family does for it."""

    AUTO = "auto"  # queue a transplant run per channel where it is live
    ASK = "ask"  # post a card offering those runs
    OFF = "off"  # nothing


class EvalSubject(StrEnum):
    CANDIDATE = "candidate"  # target base + transplanted patch
    TARGET_BASE = "target_base"  # target base alone
    LIVE = "live"  # what is live in the run's channel: its patch on its own base


class EvalStage(StrEnum):
    QUICK = "quick"  # the assistant's suite, scored on every run
    FULL = "full"  # its full suite, scored only when the quick verdict is inconclusive


def _in(column: str, values: type[StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON(), list[str]: JSON()}


class BaseModel(Base):
    """A registered base LLM: one version of a family, identified by its weights' fingerprint."""

    __tablename__ = "base_models"
    __table_args__ = (UniqueConstraint("family", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    family: Mapped[str] = mapped_column(String(100))
    version: Mapped[str] = mapped_column(String(100))
    source_ref: Mapped[str] = mapped_column(String(1000))
    fingerprint: Mapped[str] = mapped_column(String(64), index=True)
    # model_type, hidden_size, num_layers, vocab_size, modules {name: shape}, digest
    signature: Mapped[dict[str, Any]]
    tokenizer_fingerprint: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(Text, default="")
    registered_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    @property
    def label(self) -> str:
        return f"{self.family}/{self.version}"


class Assistant(Base):
    """A team's assistant: the family it runs on, its KPI suite, gate thresholds and approvers."""

    __tablename__ = "assistants"
    __table_args__ = (
        CheckConstraint("min_accuracy >= 0 AND min_accuracy <= 1", name="min_accuracy_range"),
        CheckConstraint("max_regression >= 0 AND max_regression <= 1", name="max_regression_range"),
        CheckConstraint(_in("on_release", OnRelease), name="on_release"),
        # The live guard is both numbers or neither.
        CheckConstraint(
            "(guard_min_ratings IS NULL) = (guard_min_satisfaction IS NULL)", name="live_guard_complete"
        ),
        CheckConstraint("guard_min_ratings IS NULL OR guard_min_ratings >= 1", name="guard_min_ratings_positive"),
        CheckConstraint(
            "guard_min_satisfaction IS NULL OR (guard_min_satisfaction >= 0 AND guard_min_satisfaction <= 1)",
            name="guard_min_satisfaction_range",
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    family: Mapped[str] = mapped_column(String(100))
    suite_ref: Mapped[str] = mapped_column(String(1000))
    suite_digest: Mapped[str] = mapped_column(String(64))
    # Optional second stage: scored when the quick suite alone cannot decide.
    full_suite_ref: Mapped[str | None] = mapped_column(String(1000))
    full_suite_digest: Mapped[str | None] = mapped_column(String(64))
    min_accuracy: Mapped[float] = mapped_column(Float)
    max_regression: Mapped[float] = mapped_column(Float)
    approvers: Mapped[list[str]]  # Slack user ids (or console user names)
    admins: Mapped[list[str]]  # may approve a failed gate, with a reason
    requesters: Mapped[list[str]] = mapped_column(default=list)  # who may request runs; empty: anyone
    four_eyes: Mapped[bool] = mapped_column(default=False)  # a requester may not approve their own run
    system_prompt: Mapped[str] = mapped_column(Text, default="")
    # How questions are put to the model, served and scored alike (portllm_engine.prompt.FORMATS).
    prompt_format: Mapped[str] = mapped_column(String(10), default="chat", server_default="chat")
    owner: Mapped[str] = mapped_column(String(200), default="")
    on_release: Mapped[str] = mapped_column(String(10), default=OnRelease.AUTO, server_default=OnRelease.AUTO.value)
    # The live guard: once this many people rated (not ratings), satisfaction below this proposes a rollback.
    guard_min_ratings: Mapped[int | None] = mapped_column(Integer)
    guard_min_satisfaction: Mapped[float | None] = mapped_column(Float)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    patches: Mapped[list[Patch]] = relationship(
        back_populates="assistant", order_by="Patch.id", viewonly=True
    )


class Patch(Base):
    """A LoRA patch trained (or re-tuned) on one base, stored content-addressed."""

    __tablename__ = "patches"
    __table_args__ = (CheckConstraint("kind = 'lora'", name="kind"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    assistant_id: Mapped[int] = mapped_column(ForeignKey("assistants.id"), index=True)
    origin_base_id: Mapped[int] = mapped_column(ForeignKey("base_models.id"))
    # A re-tune's parent is the patch it was warm-started from.
    parent_patch_id: Mapped[int | None] = mapped_column(ForeignKey("patches.id"))
    kind: Mapped[str] = mapped_column(String(20), default="lora")
    artifact_ref: Mapped[str] = mapped_column(String(200))
    artifact_digest: Mapped[str] = mapped_column(String(64))
    rank: Mapped[int] = mapped_column(Integer)
    alpha: Mapped[float] = mapped_column(Float)
    use_rslora: Mapped[bool] = mapped_column(default=False)
    target_modules: Mapped[list[str]]
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    # dataset digest, hyper-parameters, seed
    provenance: Mapped[dict[str, Any]]
    train_data_ref: Mapped[str | None] = mapped_column(String(200))
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    assistant: Mapped[Assistant] = relationship(back_populates="patches")
    origin_base: Mapped[BaseModel] = relationship()
    parent_patch: Mapped[Patch | None] = relationship(remote_side=[id])


class Run(Base):
    """One transplant-and-evaluate, eval-only, re-tune or train job, requested from chat or the CLI."""

    __tablename__ = "runs"
    __table_args__ = (
        CheckConstraint(_in("kind", RunKind), name="kind"),
        CheckConstraint(_in("status", RunStatus), name="status"),
        CheckConstraint("progress >= 0 AND progress <= 1", name="progress_range"),
        Index("ix_runs_status_created_at", "status", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20), default=RunStatus.QUEUED)
    assistant_id: Mapped[int] = mapped_column(ForeignKey("assistants.id"), index=True)
    # A train run starts from data, not from a patch.
    patch_id: Mapped[int | None] = mapped_column(ForeignKey("patches.id"))
    target_base_id: Mapped[int] = mapped_column(ForeignKey("base_models.id"))
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    step: Mapped[str] = mapped_column(Text, default="")
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    requested_by: Mapped[str] = mapped_column(String(200))
    channel: Mapped[str] = mapped_column(String(200))
    compat_report: Mapped[dict[str, Any] | None]
    drift_report: Mapped[dict[str, Any] | None]
    # Which test decided the gate and why, in words for people (portllm_core.gate.GateDecision, per stage).
    gate_report: Mapped[dict[str, Any] | None]
    error: Mapped[str | None] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(String(200))
    heartbeat_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Where the run's chat message lives (e.g. Slack {"channel", "ts"}) so workers update it.
    notify_ref: Mapped[dict[str, Any] | None]
    # What a train run needs: the stored training data ref, hyper-parameters, seed.
    spec: Mapped[dict[str, Any] | None]
    # The release that queued this run on behalf of the system (auto-port), if any.
    release_id: Mapped[int | None] = mapped_column(ForeignKey("releases.id"), index=True)
    # The patch a re-tune or train run produced.
    result_patch_id: Mapped[int | None] = mapped_column(ForeignKey("patches.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    assistant: Mapped[Assistant] = relationship()
    patch: Mapped[Patch | None] = relationship(foreign_keys=[patch_id])
    target_base: Mapped[BaseModel] = relationship()
    result_patch: Mapped[Patch | None] = relationship(foreign_keys=[result_patch_id])
    evaluations: Mapped[list[Evaluation]] = relationship(
        back_populates="run", order_by="Evaluation.id", viewonly=True
    )
    rollout: Mapped[Rollout | None] = relationship(back_populates="run", viewonly=True)

    @property
    def candidate_patch(self) -> Patch | None:
        """The patch the candidate carries: a re-tune's or train run's result, else the transplanted patch."""
        return self.result_patch or self.patch

    def evaluation(self, subject: str, stage: str | None = None) -> Evaluation | None:
        """The subject's score at `stage`; by default the deciding one (full when it ran, else quick)."""
        found = [e for e in self.evaluations if e.subject == subject and stage in (None, e.stage)]
        return max(found, key=lambda e: e.stage == EvalStage.FULL, default=None)


# "No patch" in a ledger key: the base alone. An empty string, not NULL, so that the unique key
# holds on PostgreSQL too (NULLs are distinct there).
BASE_ALONE = ""
SCORE_KEY = ("model_fingerprint", "patch_digest", "suite_digest", "prompt_digest", "dtype", "device_kind",
             "scorer_version")
# The digest of the `raw` prompt format (portllm_engine.prompt.PromptFormat("raw").digest): scores
# recorded before prompt formats were part of the key were computed on the suite's text as written.
RAW_PROMPT_DIGEST = "568e4e87168ced58ef57e03d7a0c3b2a38b395fd1ea784068ce864e093f68043"


class Score(Base):
    """The evaluation ledger: one KPI score per distinct (model, patch, suite, scoring settings).

    Computed once by the first run that needs it; every later run, release run, re-tune and eval
    that needs the same score reads it here. The unique key keeps one entry when two runs race.
    A forgotten entry stays for the evaluations that used it, but no later run finds it.
    """

    __tablename__ = "scores"
    __table_args__ = (
        Index("uq_scores_key", *SCORE_KEY, unique=True,
              postgresql_where=text("forgotten_at IS NULL"), sqlite_where=text("forgotten_at IS NULL")),
        CheckConstraint("accuracy >= 0 AND accuracy <= 1", name="accuracy_range"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_fingerprint: Mapped[str] = mapped_column(String(64), index=True)
    patch_digest: Mapped[str] = mapped_column(String(64), default=BASE_ALONE)
    suite_digest: Mapped[str] = mapped_column(String(64), index=True)
    # The prompt format (its kind, template and system prompt: portllm_engine.prompt.PromptFormat.digest).
    prompt_digest: Mapped[str] = mapped_column(String(64), default=RAW_PROMPT_DIGEST)
    prompt_format: Mapped[str] = mapped_column(String(80), default="raw")  # for people: "chat template with …"
    # The scoring settings that can change a number (portllm_engine.kpi.ScoringSettings).
    dtype: Mapped[str] = mapped_column(String(20))
    device_kind: Mapped[str] = mapped_column(String(10))
    scorer_version: Mapped[int] = mapped_column(Integer)
    n: Mapped[int] = mapped_column(Integer)
    accuracy: Mapped[float] = mapped_column(Float)
    ci_low: Mapped[float] = mapped_column(Float)
    ci_high: Mapped[float] = mapped_column(Float)
    metrics: Mapped[dict[str, Any]]
    items_ref: Mapped[str | None] = mapped_column(String(200))
    duration_s: Mapped[float] = mapped_column(Float)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)  # the run that computed it
    computed_by: Mapped[str] = mapped_column(String(200))  # the worker
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    forgotten_at: Mapped[datetime | None]


class Evaluation(Base):
    """A run's use of a ledger score: one subject (candidate, base alone, live) at one gate stage."""

    __tablename__ = "evaluations"
    __table_args__ = (
        UniqueConstraint("run_id", "subject", "stage"),
        CheckConstraint(_in("subject", EvalSubject), name="subject"),
        CheckConstraint(_in("stage", EvalStage), name="stage"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    subject: Mapped[str] = mapped_column(String(20))
    stage: Mapped[str] = mapped_column(String(10), default=EvalStage.QUICK, server_default=EvalStage.QUICK.value)
    score_id: Mapped[int] = mapped_column(ForeignKey("scores.id"), index=True)
    computed: Mapped[bool] = mapped_column(default=True)  # False: the score came from the ledger
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    run: Mapped[Run] = relationship(back_populates="evaluations")
    score: Mapped[Score] = relationship(lazy="joined")

    @property
    def reused_from_run(self) -> int | None:
        """None when this run computed the score; else the run that did."""
        return None if self.computed else self.score.run_id

    # The score's numbers, read through the evaluation.
    suite_digest = property(lambda self: self.score.suite_digest)
    n = property(lambda self: self.score.n)
    accuracy = property(lambda self: self.score.accuracy)
    ci_low = property(lambda self: self.score.ci_low)
    ci_high = property(lambda self: self.score.ci_high)
    metrics = property(lambda self: self.score.metrics)
    items_ref = property(lambda self: self.score.items_ref)
    duration_s = property(lambda self: self.score.duration_s)


class Rollout(Base):
    """A run's candidate proposed for (assistant, channel); the database keeps one live per pair."""

    __tablename__ = "rollouts"
    __table_args__ = (
        CheckConstraint(_in("state", RolloutState), name="state"),
        CheckConstraint(_in("verdict", Verdict), name="verdict"),
        # A retired proposal always names the proposal that replaced it (its refusal points there).
        CheckConstraint(
            f"state != '{RolloutState.SUPERSEDED_BY_NEWER}' OR newer_rollout_id IS NOT NULL",
            name="newer_rollout_when_replaced",
        ),
        Index(
            "uq_rollouts_one_live_per_channel",
            "assistant_id",
            "channel",
            unique=True,
            postgresql_where=text("state = 'live'"),
            sqlite_where=text("state = 'live'"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), unique=True)
    assistant_id: Mapped[int] = mapped_column(ForeignKey("assistants.id"), index=True)
    channel: Mapped[str] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(20))
    verdict: Mapped[str] = mapped_column(String(20))
    accuracy: Mapped[float | None] = mapped_column(Float)  # the candidate's, copied at opening
    live_accuracy: Mapped[float | None] = mapped_column(Float)  # what the gate compared against
    # The rollout that was live in this channel when this one went live (rollback restores it).
    replaced_rollout_id: Mapped[int | None] = mapped_column(ForeignKey("rollouts.id"))
    # The newer proposal for the same (assistant, channel, target base) that retired this one.
    newer_rollout_id: Mapped[int | None] = mapped_column(ForeignKey("rollouts.id"))
    decided_by: Mapped[str | None] = mapped_column(String(200))
    decided_at: Mapped[datetime | None]
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    live_since: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    # When the live guard proposed rolling this rollout back (it proposes once per rollout).
    guard_tripped_at: Mapped[datetime | None]

    run: Mapped[Run] = relationship(back_populates="rollout")
    assistant: Mapped[Assistant] = relationship()
    replaced: Mapped[Rollout | None] = relationship(foreign_keys=[replaced_rollout_id], remote_side=[id])
    # The older proposals this one retired when it opened (for callers updating their cards).
    retired: Mapped[list[Rollout]] = relationship(
        foreign_keys=[newer_rollout_id], order_by="Rollout.id", viewonly=True
    )


class Release(Base):
    """A new base version of a family, and what it started: the runs it queued (auto) and the
    channels it offered runs to (ask). One per base, so registering or retrying it starts nothing new."""

    __tablename__ = "releases"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    base_id: Mapped[int] = mapped_column(ForeignKey("base_models.id"), unique=True)
    # [{"assistant": name, "channel": channel}] for assistants whose policy is `ask`.
    offers: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    # Where the release summary was posted (e.g. Slack {"channel", "ts"}), so it is updated in place.
    notify_ref: Mapped[dict[str, Any] | None]
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    base: Mapped[BaseModel] = relationship()
    runs: Mapped[list[Run]] = relationship(order_by="Run.id", viewonly=True)


class Answer(Base):
    """One answer an assistant gave in a channel, tied to the rollout that produced it."""

    __tablename__ = "answers"
    __table_args__ = (Index("ix_answers_channel_message_ts", "channel", "message_ts"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id"), index=True)
    channel: Mapped[str] = mapped_column(String(200))
    asked_by: Mapped[str] = mapped_column(String(200))
    question: Mapped[str] = mapped_column(Text)
    # The chat message holding the answer (Slack's ts), so a reaction on it finds the answer.
    message_ts: Mapped[str | None] = mapped_column(String(50))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    rollout: Mapped[Rollout] = relationship()


class Rating(Base):
    """A person's 👍 or 👎 on an answer: one per person and answer, the latest one counts."""

    __tablename__ = "ratings"
    __table_args__ = (UniqueConstraint("answer_id", "user"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    answer_id: Mapped[int] = mapped_column(ForeignKey("answers.id"), index=True)
    user: Mapped[str] = mapped_column(String(200))
    up: Mapped[bool]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    answer: Mapped[Answer] = relationship()


class Requester(Base):
    """A person who requested runs from chat. Their requests lock this row and take turns, so the
    per-person run quota holds when they arrive together for different assistants or channels."""

    __tablename__ = "requesters"

    user: Mapped[str] = mapped_column(String(200), primary_key=True)


class AuditEvent(Base):
    """Append-only record of every state change: who did what to which entity, and when."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_entity", "entity_type", "entity_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(50), index=True)  # e.g. "rollout.approved"
    entity_type: Mapped[str] = mapped_column(String(30))
    entity_id: Mapped[int] = mapped_column(Integer)
    assistant_id: Mapped[int | None] = mapped_column(ForeignKey("assistants.id"), index=True)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)


class SeenKey(Base):
    """A Slack event, command or click one process claimed: the others skip it until it expires."""

    __tablename__ = "seen_keys"

    key: Mapped[str] = mapped_column(String(300), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(index=True)
