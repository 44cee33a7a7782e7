"""Registry rows as plain JSON-able dicts: what `--json` prints and the tables are drawn from."""
from __future__ import annotations

from typing import Any


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
        "min_accuracy": row.min_accuracy,
        "max_regression": row.max_regression,
        "approvers": list(row.approvers),
        "admins": list(row.admins),
        "system_prompt": row.system_prompt,
        "owner": row.owner,
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


def evaluation(row) -> dict[str, Any]:
    return {
        "subject": row.subject,
        "suite_digest": row.suite_digest,
        "n": row.n,
        "accuracy": row.accuracy,
        "ci95": [row.ci_low, row.ci_high],
        "metrics": row.metrics,
        "items_ref": row.items_ref,
        "duration_s": row.duration_s,
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
        "evaluations": [evaluation(e) for e in row.evaluations],
        "rollout": rollout(row.rollout),
    }
