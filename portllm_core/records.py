"""The JSON forms of the read models (portllm_core.views): what `--json` prints for scripts."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from registry.models import Assistant, AuditEvent, BaseModel, Patch, Rollout, Run
from registry.services.catalog import is_approver, same_user
from portllm_engine.kpi import wilson_interval


def base(row) -> dict[str, Any]:
    return {
        "id": row.id,
        "family": row.family,
        "version": row.version,
        "source_ref": row.source_ref,
        "fingerprint": row.fingerprint,
        "tokenizer_fingerprint": row.tokenizer_fingerprint,
        "signature": {k: v for k, v in row.signature.items() if k != "modules"}
        | {"num_modules": len(row.signature.get("modules", {}))},
        "description": row.description,
        "registered_by": row.registered_by,
        "created_at": row.created_at,
    }


def assistant(row) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "family": row.family,
        "suite_ref": row.suite_ref,
        "suite_digest": row.suite_digest,
        "full_suite_digest": row.full_suite_digest,
        "min_accuracy": row.min_accuracy,
        "max_regression": row.max_regression,
        "approvers": list(row.approvers),
        "admins": list(row.admins),
        "requesters": list(row.requesters),
        "four_eyes": row.four_eyes,
        "system_prompt": row.system_prompt,
        "owner": row.owner,
        "on_release": row.on_release,
        "live_guard": None if row.guard_min_ratings is None else {
            "min_ratings": row.guard_min_ratings, "min_satisfaction": row.guard_min_satisfaction},
        "created_by": row.created_by,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }


def patch(row) -> dict[str, Any]:
    return {
        "id": row.id,
        "assistant": row.assistant.name,
        "origin_base": {"family": row.origin_base.family, "version": row.origin_base.version},
        "parent_patch_id": row.parent_patch_id,
        "kind": row.kind,
        "artifact_ref": row.artifact_ref,
        "artifact_digest": row.artifact_digest,
        "rank": row.rank,
        "alpha": row.alpha,
        "use_rslora": row.use_rslora,
        "target_modules": list(row.target_modules),
        "size_bytes": row.size_bytes,
        "provenance": row.provenance,
        "train_data_ref": row.train_data_ref,
        "created_by": row.created_by,
        "created_at": row.created_at,
    }


def _result(row) -> dict[str, Any]:
    """A score's numbers, read from a ledger entry or through an evaluation that uses one."""
    return {"suite_digest": row.suite_digest, "n": row.n, "accuracy": row.accuracy, "ci95": [row.ci_low, row.ci_high],
            "metrics": row.metrics, "items_ref": row.items_ref, "duration_s": row.duration_s}


def evaluation(row) -> dict[str, Any]:
    return {"subject": row.subject, "stage": row.stage, **_result(row), "score_id": row.score_id,
            "reused_from_run": row.reused_from_run}  # None: this run computed the score


def score(row) -> dict[str, Any]:
    """One evaluation-ledger entry: its key, its result, and who computed it when."""
    return {
        "id": row.id,
        "model_fingerprint": row.model_fingerprint,
        "patch_digest": row.patch_digest or None,  # None: the base alone
        "dtype": row.dtype,
        "device_kind": row.device_kind,
        "scorer_version": row.scorer_version,
        **_result(row),
        "run_id": row.run_id,
        "computed_by": row.computed_by,
        "created_at": iso(row.created_at),
    }


def rollout(row) -> dict[str, Any] | None:
    if row is None:
        return None
    return {
        "id": row.id,
        "channel": row.channel,
        "state": row.state,
        "verdict": row.verdict,
        "accuracy": row.accuracy,
        "live_accuracy": row.live_accuracy,
        "replaced_rollout_id": row.replaced_rollout_id,
        "decided_by": row.decided_by,
        "decided_at": row.decided_at,
        "reason": row.reason,
        "live_since": row.live_since,
        "ended_at": row.ended_at,
    }


def run_summary(row) -> dict[str, Any]:
    return {
        "id": row.id,
        "kind": row.kind,
        "status": row.status,
        "assistant": row.assistant.name,
        "patch_id": row.patch_id,
        # A train run has no source patch, hence no origin base.
        "origin_base": None if row.patch is None else {
            "family": row.patch.origin_base.family, "version": row.patch.origin_base.version},
        "target_base": {"family": row.target_base.family, "version": row.target_base.version},
        "progress": row.progress,
        "step": row.step,
        "requested_by": row.requested_by,
        "channel": row.channel,
        "created_at": row.created_at,
        "started_at": row.started_at,
        "finished_at": row.finished_at,
        "verdict": row.rollout.verdict if row.rollout else None,
        "rollout_state": row.rollout.state if row.rollout else None,
        "release_id": row.release_id,
    }


def run(row) -> dict[str, Any]:
    """Everything `run show` tells: status, progress, reports, evaluations, verdict, rollout."""
    return run_summary(row) | {
        "error": row.error,
        "worker": row.worker,
        "attempts": row.attempts,
        "result_patch_id": row.result_patch_id,
        "spec": row.spec,
        "compat_report": row.compat_report,
        "drift_report": row.drift_report,
        "gate_report": row.gate_report,
        "evaluations": [evaluation(e) for e in row.evaluations],
        "rollout": rollout(row.rollout),
    }


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def visible(run: Run, *, channel: str | None = None, viewer: str | None = None) -> bool:
    """Whether a status shown in `channel`, or to `viewer` (App Home), includes this run.

    A channel's status shows that channel only (others may be private); a person's App Home
    shows the runs they requested or may decide. None: no such restriction (the operators' CLI).
    """
    if channel is not None and run.channel != channel:
        return False
    return viewer is None or same_user(viewer, run.requested_by) or is_approver(run.assistant, viewer)


def satisfaction_record(score) -> dict[str, Any]:
    """The live KPI of a rollout, each person weighing one (`up`: their 👍 shares summed); people 0
    when nobody rated its answers yet."""
    if score is None or not score.people:
        return {"people": 0, "ratings": 0, "up": 0.0, "rate": None, "ci95": None}
    return {"people": score.people, "ratings": score.ratings, "up": score.up, "rate": score.rate,
            "ci95": list(wilson_interval(score.up, score.people))}


def release(row) -> dict[str, Any]:
    """A release: its base, the runs it queued with their verdicts, and the offers still open."""
    taken = {(r.assistant.name, r.channel) for r in row.runs}
    return {
        "id": row.id,
        "base": {"family": row.base.family, "version": row.base.version},
        "created_by": row.created_by,
        "created_at": iso(row.created_at),
        "runs": [
            {"run_id": r.id, "assistant": r.assistant.name, "channel": r.channel, "status": r.status,
             "verdict": r.rollout.verdict if r.rollout else None,
             "rollout_state": r.rollout.state if r.rollout else None}
            for r in row.runs
        ],
        "offers": [o for o in row.offers if (o["assistant"], o["channel"]) not in taken],
    }


def _base_dict(base: BaseModel) -> dict[str, Any]:
    return {"id": base.id, "family": base.family, "version": base.version,
            "fingerprint": base.fingerprint, "source_ref": base.source_ref}


def runs_of(assistant: Assistant, channel: str | None = None) -> Select:
    """An assistant's runs; with a channel, only those requested there."""
    query = select(Run).where(Run.assistant_id == assistant.id)
    return query if channel is None else query.where(Run.channel == channel)


def rollout_events(s: Session, assistant: Assistant) -> dict[int, list[AuditEvent]]:
    """The audit events of the assistant's rollouts, per rollout id, oldest first."""
    events: dict[int, list[AuditEvent]] = {}
    for event in s.scalars(
        select(AuditEvent).where(AuditEvent.assistant_id == assistant.id, AuditEvent.entity_type == "rollout")
        .order_by(AuditEvent.at, AuditEvent.id)
    ):
        events.setdefault(event.entity_id, []).append(event)
    return events


def lineage_patch(p: Patch) -> dict[str, Any]:
    """A patch as the lineage lists it (its runs aside): origin base, provenance, parent."""
    return {
        "id": p.id, "kind": p.kind, "created_at": iso(p.created_at),
        "created_by": p.created_by, "origin_base": _base_dict(p.origin_base),
        "parent_patch_id": p.parent_patch_id, "artifact_ref": p.artifact_ref,
        "artifact_digest": p.artifact_digest, "rank": p.rank, "alpha": p.alpha,
        "target_modules": p.target_modules, "size_bytes": p.size_bytes,
        "provenance": p.provenance, "train_data_ref": p.train_data_ref,
    }


def lineage_run(run: Run, scores: dict, events: dict[int, list[AuditEvent]]) -> dict[str, Any]:
    """A run as the lineage lists it: target base, status, drift, its evaluations and its rollout
    (state, channel, who decided, what it replaced, every event); `scores` and `events` per rollout id."""
    drift = run.drift_report or {}
    compat = run.compat_report
    return {
        "id": run.id, "kind": run.kind, "status": run.status, "spec": run.spec,
        "target_base": _base_dict(run.target_base), "requested_by": run.requested_by,
        "channel": run.channel, "created_at": iso(run.created_at),
        "started_at": iso(run.started_at), "finished_at": iso(run.finished_at),
        "attempts": run.attempts, "error": run.error,
        "compatible": None if compat is None else compat.get("compatible"),
        "drift_overall": drift.get("overall"), "result_patch_id": run.result_patch_id,
        "evaluations": [
            {
                "id": e.id, "subject": e.subject, "stage": e.stage, "n": e.n, "accuracy": e.accuracy,
                "ci95": [e.ci_low, e.ci_high], "suite_digest": e.suite_digest,
                "metrics": e.metrics, "duration_s": e.duration_s, "recorded_at": iso(e.created_at),
                "reused_from_run": e.reused_from_run,
            }
            for e in sorted(run.evaluations, key=lambda e: (e.created_at, e.id))
        ],
        "rollouts": [] if run.rollout is None else [_lineage_rollout(run.rollout, scores, events)],
    }


def _lineage_rollout(r: Rollout, scores: dict, events: dict[int, list[AuditEvent]]) -> dict[str, Any]:
    replaced = r.replaced
    return {
        "id": r.id, "channel": r.channel, "state": r.state, "verdict": r.verdict,
        "accuracy": r.accuracy, "live_accuracy": r.live_accuracy,
        "decided_by": r.decided_by, "decided_at": iso(r.decided_at), "reason": r.reason,
        "opened_at": iso(r.created_at), "live_since": iso(r.live_since), "ended_at": iso(r.ended_at),
        "satisfaction": satisfaction_record(scores.get(r.id)),
        "replaced": None if replaced is None else {
            "rollout_id": replaced.id, "run_id": replaced.run_id,
            "base": replaced.run.target_base.label, "state": replaced.state,
        },
        "events": [
            {"at": iso(e.at), "action": e.action, "actor": e.actor, "details": e.details}
            for e in events.get(r.id, [])
        ],
    }
