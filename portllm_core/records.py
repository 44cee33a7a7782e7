"""The JSON forms of the read models (portllm_core.views): what `--json` prints for scripts."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from registry.models import ACTIVE_RUN_STATUSES, DECIDABLE_ROLLOUT_STATES, Assistant, AuditEvent, BaseModel, Patch, Rollout, RolloutState, Run
from registry.services.catalog import get_assistant, is_approver, resolve_assistant, same_user
from portllm_engine.kpi import wilson_interval
from registry.services.ratings import satisfaction


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
        "created_at": _iso(row.created_at),
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


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def visible(run: Run, *, channel: str | None = None, viewer: str | None = None) -> bool:
    """Whether a status shown in `channel`, or to `viewer` (App Home), includes this run.

    A channel's status shows that channel only (others may be private); a person's App Home
    shows the runs they requested or may decide. None: no such restriction (the operators' CLI).
    """
    if channel is not None and run.channel != channel:
        return False
    return viewer is None or same_user(viewer, run.requested_by) or is_approver(run.assistant, viewer)


def status(s: Session, assistant: str | None = None, *, channel: str | None = None,
           viewer: str | None = None) -> dict[str, Any]:
    """What is live per channel, what awaits a decision, and which runs are queued or running."""
    owner = None if assistant is None else get_assistant(s, assistant)

    def scoped(query, column):
        return query if owner is None else query.where(column == owner.id)

    def shown(rows, run_of=lambda row: row.run):
        return [row for row in rows if visible(run_of(row), channel=channel, viewer=viewer)]

    live = shown(s.scalars(scoped(
        select(Rollout).where(Rollout.state == RolloutState.LIVE), Rollout.assistant_id
    ).order_by(Rollout.assistant_id, Rollout.channel)))
    pending = shown(s.scalars(scoped(
        select(Rollout).where(Rollout.state.in_(DECIDABLE_ROLLOUT_STATES)),
        Rollout.assistant_id,
    ).order_by(Rollout.created_at, Rollout.id)))
    runs = shown(s.scalars(scoped(
        select(Run).where(Run.status.in_(ACTIVE_RUN_STATUSES)), Run.assistant_id
    ).order_by(Run.created_at, Run.id)), run_of=lambda run: run)
    scores = satisfaction(s, [r.id for r in live])
    return {
        "assistant": None if owner is None else owner.name,
        "live": [
            {
                "assistant": r.assistant.name, "channel": r.channel, "rollout_id": r.id,
                "run_id": r.run_id, "base": r.run.target_base.label,
                "patch_id": r.run.candidate_patch.id, "accuracy": r.accuracy,
                "approved_by": r.decided_by, "live_since": _iso(r.live_since),
                "satisfaction": _satisfaction(scores.get(r.id)),
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


def _satisfaction(score) -> dict[str, Any]:
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
        "created_at": _iso(row.created_at),
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


def lineage(s: Session, assistant: str | Assistant, channel: str | None = None) -> dict[str, Any]:
    """The assistant's history as a tree, each level ordered by time:
    patches (origin base, provenance, parent) -> runs (target base, status, drift)
    -> evaluations and rollouts (state, channel, who decided, what it replaced, every event).
    With a channel, only the runs in that channel."""
    owner = resolve_assistant(s, assistant)
    patches = list(s.scalars(
        select(Patch).where(Patch.assistant_id == owner.id).order_by(Patch.created_at, Patch.id)
    ))
    runs = list(s.scalars(runs_of(owner, channel).order_by(Run.created_at, Run.id)))
    scores = satisfaction(s, [r.rollout.id for r in runs if r.rollout is not None])
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
            "satisfaction": _satisfaction(scores.get(r.id)),
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
                    "id": e.id, "subject": e.subject, "stage": e.stage, "n": e.n, "accuracy": e.accuracy,
                    "ci95": [e.ci_low, e.ci_high], "suite_digest": e.suite_digest,
                    "metrics": e.metrics, "duration_s": e.duration_s, "recorded_at": _iso(e.created_at),
                    "reused_from_run": e.reused_from_run,
                }
                for e in sorted(run.evaluations, key=lambda e: (e.created_at, e.id))
            ],
            "rollouts": [] if run.rollout is None else [rollout_dict(run.rollout)],
        }

    return {
        "assistant": owner.name,
        "family": owner.family,
        "gate": {"min_accuracy": owner.min_accuracy, "max_regression": owner.max_regression},
        "channel": channel,  # runs of this channel only; None: every channel
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
