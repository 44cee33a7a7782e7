"""Runs and their evaluations: requested from chat, claimed and finished by workers, swept."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from registry.errors import InvalidTransition, RegistryError, UnknownPatch, UnknownRun
from registry.models import (
    FINAL_RUN_STATUSES,
    Assistant,
    EvalStage,
    EvalSubject,
    Evaluation,
    Run,
    RunKind,
    RunStatus,
    id_in_range,
    utcnow,
)
from registry.services.catalog import (
    current_patch,
    get_patch,
    require_approver,
    resolve_assistant,
    resolve_base,
    same_user,
)
from registry.services.common import audit, conditional_update, insert_unless_exists


# The run lifecycle. running -> queued is the sweeper handing a vanished worker's run to another.
RUN_TRANSITIONS: dict[str, frozenset[str]] = {
    RunStatus.QUEUED: frozenset({RunStatus.RUNNING, RunStatus.FAILED, RunStatus.CANCELLED}),
    RunStatus.RUNNING: frozenset(
        {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.QUEUED}
    ),
    RunStatus.SUCCEEDED: frozenset(),
    RunStatus.FAILED: frozenset(),
    RunStatus.CANCELLED: frozenset(),
}




def get_run(s: Session, run_id: int) -> Run:
    run = s.get(Run, run_id) if id_in_range(run_id) else None
    if run is None:
        raise UnknownRun(run_id)
    return run


def find_run_by_key(s: Session, idempotency_key: str) -> Run | None:
    return s.scalar(select(Run).where(Run.idempotency_key == idempotency_key))


def retune_key(s: Session, run_id: int) -> str:
    """The idempotency key of the next re-tune of run `run_id`: one key per attempt.

    While a re-tune is queued, running or has succeeded, its key is returned (asking again
    returns that run); once it failed or was cancelled, the next attempt gets a new key.
    """
    prefix = f"retune-of-run-{run_id}/attempt-"
    ended_without_result = s.scalar(select(func.count(Run.id)).where(
        Run.idempotency_key.startswith(prefix, autoescape=True),
        Run.status.in_((RunStatus.FAILED, RunStatus.CANCELLED))))
    return f"{prefix}{ended_without_result + 1}"


def _reload(s: Session, run_id: int) -> Run:
    return s.get(Run, run_id, populate_existing=True)


def request_run(
    s: Session,
    *,
    assistant: str | Assistant,
    version: str,
    kind: str = RunKind.TRANSPLANT,
    idempotency_key: str,
    requested_by: str,
    channel: str,
    patch_id: int | None = None,
    notify_ref: dict[str, Any] | None = None,
    spec: dict[str, Any] | None = None,
    release_id: int | None = None,
) -> tuple[Run, bool]:
    """Queue a run of the assistant's patch onto `version`; returns (run, created).

    A train run carries no patch: it trains a new one on `version` from `spec` (the stored
    training data ref, hyper-parameters, seed) and records it as the run's result patch.

    The same idempotency key always returns the same run, also under concurrent requests: the
    insert is `ON CONFLICT DO NOTHING` and the loser re-reads the winner's row.
    """
    existing = find_run_by_key(s, idempotency_key)
    if existing is not None:
        return existing, False
    if kind not in RunKind.__members__.values():
        raise RegistryError(f"Unknown run kind '{kind}'; use one of: {', '.join(RunKind)}.")
    owner = resolve_assistant(s, assistant)
    target = resolve_base(s, owner, version)
    if kind == RunKind.TRAIN:
        if patch_id is not None:
            raise RegistryError("A train run starts from training data, not from a patch; drop the patch.")
        if not spec or not spec.get("train_data_ref"):
            raise RegistryError("A train run needs a spec with the stored training data ref (train_data_ref).")
        patch = None
    elif patch_id is None:
        patch = current_patch(s, owner)
    else:
        patch = get_patch(s, patch_id)
        if patch.assistant_id != owner.id:
            raise UnknownPatch(f"Patch #{patch_id} does not belong to {owner.name}.")
    if kind == RunKind.RETUNE and not patch.train_data_ref:
        raise RegistryError(
            f"Patch #{patch.id} of {owner.name} has no registered training data, so it cannot be re-tuned."
        )
    values = dict(
        kind=str(kind), status=RunStatus.QUEUED.value, assistant_id=owner.id,
        patch_id=None if patch is None else patch.id, spec=spec,
        target_base_id=target.id, progress=0.0, step="queued", idempotency_key=idempotency_key,
        requested_by=requested_by, channel=channel, attempts=0, notify_ref=notify_ref,
        release_id=release_id, created_at=utcnow(),
    )
    run_id = insert_unless_exists(s, Run, values, key="idempotency_key", returning=Run.id)
    if run_id is None:  # a concurrent request with the same key won
        return find_run_by_key(s, idempotency_key), False
    run = _reload(s, run_id)
    audit(s, actor=requested_by, action="run.requested", entity_type="run", entity_id=run.id,
          assistant_id=owner.id, kind=run.kind, patch_id=run.patch_id, target_base=target.label,
          channel=channel, idempotency_key=idempotency_key, release_id=release_id)
    return run, True


def claim_run(s: Session, run_id: int, worker: str) -> Run | None:
    """queued -> running for `worker`; None when the run is gone or no longer queued."""
    now = utcnow()
    won = conditional_update(
        s, Run, [Run.id == run_id, Run.status == RunStatus.QUEUED],
        status=RunStatus.RUNNING.value, worker=worker, started_at=now, heartbeat_at=now,
        attempts=Run.attempts + 1, step="started",
    )
    if not won:
        return None
    run = _reload(s, run_id)
    audit(s, actor=worker, action="run.started", entity_type="run", entity_id=run.id,
          assistant_id=run.assistant_id, worker=worker, attempt=run.attempts)
    return run


def heartbeat(s: Session, run_id: int) -> Run:
    """Mark a running run as alive (the sweeper requeues runs whose heartbeat stops)."""
    conditional_update(s, Run, [Run.id == run_id, Run.status == RunStatus.RUNNING],
                       heartbeat_at=utcnow())
    return _reload_or_unknown(s, run_id)


def report_progress(s: Session, run_id: int, progress: float, step: str) -> Run:
    """Record progress (0..1) and the current step of a running run; also a heartbeat.

    Returns the run as stored, so a worker can see it was cancelled and stop. Not audited:
    progress is not a state change.
    """
    conditional_update(
        s, Run, [Run.id == run_id, Run.status == RunStatus.RUNNING],
        progress=min(max(float(progress), 0.0), 1.0), step=step, heartbeat_at=utcnow(),
    )
    return _reload_or_unknown(s, run_id)


def _reload_or_unknown(s: Session, run_id: int) -> Run:
    run = _reload(s, run_id)
    if run is None:
        raise UnknownRun(run_id)
    return run


def set_notify_ref(s: Session, run_id: int, notify_ref: dict[str, Any]) -> Run:
    """Remember where the run's chat message lives (e.g. Slack channel and ts)."""
    run = get_run(s, run_id)
    run.notify_ref = notify_ref
    s.flush()
    return run


def _transition_run(
    s: Session, run_id: int, target: str, actor: str | None, values: dict[str, Any],
    **details: Any,
) -> Run:
    sources = [state for state, targets in RUN_TRANSITIONS.items() if target in targets]
    before = s.scalar(select(Run.worker).where(Run.id == run_id))
    won = conditional_update(s, Run, [Run.id == run_id, Run.status.in_(sources)],
                             status=target, **values)
    run = _reload_or_unknown(s, run_id)
    if not won:
        raise InvalidTransition(f"Run #{run_id}", run.status, target)
    action = "run.requeued" if target == RunStatus.QUEUED else f"run.{target}"
    audit(s, actor=actor or before or "worker", action=action, entity_type="run",
          entity_id=run.id, assistant_id=run.assistant_id,
          **{k: v for k, v in details.items() if v is not None})
    return run


def finish_run(
    s: Session,
    run_id: int,
    *,
    status: str,
    error: str | None = None,
    compat_report: dict[str, Any] | None = None,
    drift_report: dict[str, Any] | None = None,
    result_patch_id: int | None = None,
    gate_report: dict[str, Any] | None = None,
    actor: str | None = None,
) -> Run:
    """running -> succeeded | failed | cancelled (queued -> failed | cancelled too).

    Reports left as None keep what is stored. A finished run cannot finish again (InvalidTransition).
    """
    if status not in FINAL_RUN_STATUSES:
        raise RegistryError(f"A run finishes as succeeded, failed or cancelled, not '{status}'.")
    values: dict[str, Any] = {"finished_at": utcnow(), "step": str(status)}
    if status == RunStatus.SUCCEEDED:
        values["progress"] = 1.0
    if error is not None:
        values["error"] = error
    if compat_report is not None:
        values["compat_report"] = compat_report
    if drift_report is not None:
        values["drift_report"] = drift_report
    if result_patch_id is not None:
        values["result_patch_id"] = result_patch_id
    if gate_report is not None:
        values["gate_report"] = gate_report
    return _transition_run(s, run_id, str(status), actor, values, error=error,
                           result_patch_id=result_patch_id)


def cancel_run(s: Session, run_id: int, *, user: str) -> Run:
    """Cancel a queued or running run; its requester or an approver of the assistant may."""
    run = get_run(s, run_id)
    if not same_user(user, run.requested_by):
        require_approver(run.assistant, user)
    return _transition_run(s, run_id, RunStatus.CANCELLED, user,
                           {"finished_at": utcnow(), "step": "cancelled"})


def requeue_run(s: Session, run_id: int, *, reason: str, actor: str = "sweeper") -> Run:
    """running -> queued, for a run whose worker vanished; the next claim counts another attempt."""
    return _transition_run(
        s, run_id, RunStatus.QUEUED, actor,
        {"worker": None, "heartbeat_at": None, "started_at": None, "step": "requeued"},
        reason=reason,
    )


def stale_runs(
    s: Session, *, queued_before: datetime, heartbeat_before: datetime
) -> dict[str, list[Run]]:
    """For the sweeper: runs queued since before `queued_before`, and running runs whose last
    sign of life (heartbeat, else start) is older than `heartbeat_before`."""
    queued = s.scalars(
        select(Run).where(Run.status == RunStatus.QUEUED, Run.created_at < queued_before)
        .order_by(Run.id)
    )
    running = s.scalars(
        select(Run).where(
            Run.status == RunStatus.RUNNING,
            func.coalesce(Run.heartbeat_at, Run.started_at) < heartbeat_before,
        ).order_by(Run.id)
    )
    return {"queued": list(queued), "running": list(running)}


def record_evaluation(s: Session, run_id: int, *, subject: str, stage: str, score_id: int, computed: bool) -> Evaluation:
    """Record that a run used a ledger score for one subject at a stage (computed by this run, or
    reused); a retried run replaces its earlier one."""
    if subject not in EvalSubject.__members__.values():
        raise RegistryError(f"Unknown evaluation subject '{subject}'; use one of: {', '.join(EvalSubject)}.")
    run = get_run(s, run_id)
    evaluation = s.scalar(
        select(Evaluation).where(Evaluation.run_id == run_id, Evaluation.subject == subject,
                                 Evaluation.stage == stage)
    )
    if evaluation is None:
        evaluation = Evaluation(run_id=run_id, subject=str(subject), stage=str(stage))
        s.add(evaluation)
    evaluation.score_id = score_id
    evaluation.computed = computed
    evaluation.created_at = utcnow()
    s.flush()
    s.refresh(evaluation, ["score"])
    audit(s, actor=run.worker or "worker", action="evaluation.recorded", entity_type="evaluation",
          entity_id=evaluation.id, assistant_id=run.assistant_id, run_id=run_id, subject=str(subject),
          stage=str(stage), score_id=score_id, reused_from_run=evaluation.reused_from_run,
          n=evaluation.n, accuracy=evaluation.accuracy)
    s.expire(run, ["evaluations"])
    return evaluation
