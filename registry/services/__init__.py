"""Registry services: plain functions taking a Session.

Each service that changes state writes its AuditEvent in the same transaction. Services flush;
the caller commits (see registry.db.session_scope) or rolls back when a service raises.
State changes that people can race on (claiming a run, approving, rolling back) are conditional
UPDATEs on the expected state, so exactly one of the racers sees a row change.
"""
from __future__ import annotations

from registry.errors import RegistryError  # what every service raises for people to read
from registry.services.catalog import (
    register_base,
    get_base,
    list_bases,
    create_assistant,
    get_assistant,
    list_assistants,
    update_assistant,
    is_approver,
    is_admin,
    register_patch,
    same_user,
    get_patch,
    current_patch,
)
from registry.services.runs import (
    RUN_TRANSITIONS,
    get_run,
    find_run_by_key,
    retune_key,
    request_run,
    claim_run,
    heartbeat,
    report_progress,
    set_notify_ref,
    finish_run,
    cancel_run,
    requeue_run,
    stale_runs,
    record_evaluation,
)
from registry.services.rollouts import (
    ROLLOUT_TRANSITIONS,
    live_rollout,
    live_accuracy,
    open_rollout,
    decide_rollout,
    newest_proposal,
    rollback,
)
from registry.services.audit import (
    audit_events,
)
from registry.services.releases import (
    RELEASE_ACTOR,
    release_targets,
    get_release,
    open_release,
    accept_offer,
)
from registry.services.ratings import (
    Satisfaction,
    record_answer,
    set_answer_message,
    get_answer,
    answer_in,
    answer_for_message,
    rate,
    unrate,
    satisfaction,
    guard_trips,
    trip_guard,
)

__all__ = [
    "RegistryError",
    "register_base",
    "get_base",
    "list_bases",
    "create_assistant",
    "get_assistant",
    "list_assistants",
    "update_assistant",
    "is_approver",
    "is_admin",
    "same_user",
    "register_patch",
    "get_patch",
    "current_patch",
    "RUN_TRANSITIONS",
    "get_run",
    "find_run_by_key",
    "retune_key",
    "request_run",
    "claim_run",
    "heartbeat",
    "report_progress",
    "set_notify_ref",
    "finish_run",
    "cancel_run",
    "requeue_run",
    "stale_runs",
    "record_evaluation",
    "ROLLOUT_TRANSITIONS",
    "live_rollout",
    "live_accuracy",
    "open_rollout",
    "decide_rollout",
    "rollback",
    "newest_proposal",
    "audit_events",
    "RELEASE_ACTOR",
    "release_targets",
    "get_release",
    "open_release",
    "accept_offer",
    "Satisfaction",
    "record_answer",
    "set_answer_message",
    "get_answer",
    "answer_in",
    "answer_for_message",
    "rate",
    "unrate",
    "satisfaction",
    "guard_trips",
    "trip_guard",
]
