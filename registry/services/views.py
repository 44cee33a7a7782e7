"""Read models for people and cards: status, lineage and the audit trail (all JSON-able)."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.models import Assistant, AuditEvent, BaseModel, Patch, Rollout, RolloutState, Run
from registry.services.catalog import get_assistant, resolve_assistant
from registry.services.runs import ACTIVE_RUN_STATUSES


def audit_events(
    s: Session, *, assistant: str | None = None, entity_type: str | None = None,
    entity_id: int | None = None, action: str | None = None,
) -> list[AuditEvent]:
    """Audit events, oldest first, filtered by any of the given fields."""
    query = select(AuditEvent).order_by(AuditEvent.at, AuditEvent.id)
    if assistant is not None:
        query = query.where(AuditEvent.assistant_id == get_assistant(s, assistant).id)
    if entity_type is not None:
        query = query.where(AuditEvent.entity_type == entity_type)
    if entity_id is not None:
        query = query.where(AuditEvent.entity_id == entity_id)
    if action is not None:
        query = query.where(AuditEvent.action == action)
    return list(s.scalars(query))


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def status(s: Session, assistant: str | None = None) -> dict[str, Any]:
    """What is live per channel, what awaits a decision, and which runs are queued or running."""
    owner = None if assistant is None else get_assistant(s, assistant)

    def scoped(query, column):
        return query if owner is None else query.where(column == owner.id)

    live = s.scalars(scoped(
        select(Rollout).where(Rollout.state == RolloutState.LIVE), Rollout.assistant_id
    ).order_by(Rollout.assistant_id, Rollout.channel))
    pending = s.scalars(scoped(
        select(Rollout).where(Rollout.state.in_([RolloutState.AWAITING_APPROVAL, RolloutState.BLOCKED])),
        Rollout.assistant_id,
    ).order_by(Rollout.created_at, Rollout.id))
    runs = s.scalars(scoped(
        select(Run).where(Run.status.in_(ACTIVE_RUN_STATUSES)), Run.assistant_id
    ).order_by(Run.created_at, Run.id))
    return {
        "assistant": None if owner is None else owner.name,
        "live": [
            {
                "assistant": r.assistant.name, "channel": r.channel, "rollout_id": r.id,
                "run_id": r.run_id, "base": r.run.target_base.label,
                "patch_id": r.run.candidate_patch.id, "accuracy": r.accuracy,
                "approved_by": r.decided_by, "live_since": _iso(r.live_since),
            }
            for r in live
        ],
        "awaiting_approval": [
            {
                "assistant": r.assistant.name, "channel": r.channel, "rollout_id": r.id,
                "run_id": r.run_id, "state": r.state, "verdict": r.verdict,
                "base": r.run.target_base.label, "accuracy": r.accuracy,
                "live_accuracy": r.live_accuracy, "opened_at": _iso(r.created_at),
            }
            for r in pending
        ],
        "runs": [
            {
                "run_id": r.id, "assistant": r.assistant.name, "kind": r.kind, "status": r.status,
                "progress": r.progress, "step": r.step, "base": r.target_base.label,
                "requested_by": r.requested_by, "channel": r.channel,
                "created_at": _iso(r.created_at), "started_at": _iso(r.started_at),
            }
            for r in runs
        ],
    }


def _base_dict(base: BaseModel) -> dict[str, Any]:
    return {"id": base.id, "family": base.family, "version": base.version,
            "fingerprint": base.fingerprint, "source_ref": base.source_ref}


def lineage(s: Session, assistant: str | Assistant) -> dict[str, Any]:
    """The assistant's history as a tree, each level ordered by time:
    patches (origin base, provenance, parent) -> runs (target base, status, drift)
    -> evaluations and rollouts (state, channel, who decided, what it replaced, every event)."""
    owner = resolve_assistant(s, assistant)
    patches = list(s.scalars(
        select(Patch).where(Patch.assistant_id == owner.id).order_by(Patch.created_at, Patch.id)
    ))
    runs = list(s.scalars(
        select(Run).where(Run.assistant_id == owner.id).order_by(Run.created_at, Run.id)
    ))
    events: dict[int, list[AuditEvent]] = {}
    for event in s.scalars(
        select(AuditEvent).where(AuditEvent.assistant_id == owner.id, AuditEvent.entity_type == "rollout")
        .order_by(AuditEvent.at, AuditEvent.id)
    ):
        events.setdefault(event.entity_id, []).append(event)

    def rollout_dict(r: Rollout) -> dict[str, Any]:
        replaced = r.replaced
        return {
            "id": r.id, "channel": r.channel, "state": r.state, "verdict": r.verdict,
            "accuracy": r.accuracy, "live_accuracy": r.live_accuracy,
            "decided_by": r.decided_by, "decided_at": _iso(r.decided_at), "reason": r.reason,
            "opened_at": _iso(r.created_at), "live_since": _iso(r.live_since), "ended_at": _iso(r.ended_at),
            "replaced": None if replaced is None else {
                "rollout_id": replaced.id, "run_id": replaced.run_id,
                "base": replaced.run.target_base.label, "state": replaced.state,
            },
            "events": [
                {"at": _iso(e.at), "action": e.action, "actor": e.actor, "details": e.details}
                for e in events.get(r.id, [])
            ],
        }

    def run_dict(run: Run) -> dict[str, Any]:
        drift = run.drift_report or {}
        compat = run.compat_report
        return {
            "id": run.id, "kind": run.kind, "status": run.status, "spec": run.spec,
            "target_base": _base_dict(run.target_base), "requested_by": run.requested_by,
            "channel": run.channel, "created_at": _iso(run.created_at),
            "started_at": _iso(run.started_at), "finished_at": _iso(run.finished_at),
            "attempts": run.attempts, "error": run.error,
            "compatible": None if compat is None else compat.get("compatible"),
            "drift_overall": drift.get("overall"), "result_patch_id": run.result_patch_id,
            "evaluations": [
                {
                    "id": e.id, "subject": e.subject, "n": e.n, "accuracy": e.accuracy,
                    "ci95": [e.ci_low, e.ci_high], "suite_digest": e.suite_digest,
                    "metrics": e.metrics, "duration_s": e.duration_s, "recorded_at": _iso(e.created_at),
                }
                for e in sorted(run.evaluations, key=lambda e: (e.created_at, e.id))
            ],
            "rollouts": [] if run.rollout is None else [rollout_dict(run.rollout)],
        }

    return {
        "assistant": owner.name,
        "family": owner.family,
        "gate": {"min_accuracy": owner.min_accuracy, "max_regression": owner.max_regression},
        "patches": [
            {
                "id": p.id, "kind": p.kind, "created_at": _iso(p.created_at),
                "created_by": p.created_by, "origin_base": _base_dict(p.origin_base),
                "parent_patch_id": p.parent_patch_id, "artifact_ref": p.artifact_ref,
                "artifact_digest": p.artifact_digest, "rank": p.rank, "alpha": p.alpha,
                "target_modules": p.target_modules, "size_bytes": p.size_bytes,
                "provenance": p.provenance, "train_data_ref": p.train_data_ref,
                # A train run has no source patch: it sits under the patch it produced.
                "runs": [run_dict(r) for r in runs if (r.patch_id or r.result_patch_id) == p.id],
            }
            for p in patches
        ],
    }
