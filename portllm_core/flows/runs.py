"""Request runs, decide rollouts, roll back: each one registry transaction, then the queue.

A run is enqueued only after its row is committed, so a worker always finds it; an enqueue
lost in between is re-sent by the sweeper. Requests are idempotent per key: the same Slack
request (or a retried CLI call) never queues a run twice.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from portllm_core.flows.catalog import PatchTarget
from portllm_core.staging import staged
from portllm_core.tasks import TASK_FOR_RUN_KIND, Enqueue
from portllm_core.workspace import Workspace
from registry import services
from registry.db import session_scope
from registry.models import Rollout, RunKind

# Runs requested from the admin CLI are not tied to a chat channel.
CLI_CHANNEL = "cli"


@dataclass(frozen=True)
class RunRequested:
    run_id: int
    created: bool  # False: the same request arrived before and its run was queued then
    kind: str
    assistant: str
    version: str


def request_run(session_factory: sessionmaker[Session], enqueue: Enqueue, *, kind: str, assistant: str,
                version: str, user: str, channel: str, idempotency_key: str, patch_id: int | None = None,
                spec: dict | None = None) -> RunRequested:
    """Record a run of `kind` and put it on its queue (once per idempotency key)."""
    with session_scope(session_factory) as s:
        owner = services.get_assistant(s, assistant)
        base = services.get_base(s, owner.family, version)
        run, created = services.request_run(
            s, assistant=owner.name, version=base.version, kind=kind, idempotency_key=idempotency_key,
            requested_by=user, channel=channel, patch_id=patch_id, spec=spec)
        requested = RunRequested(run.id, created, kind, owner.name, base.version)
    if created:
        enqueue(TASK_FOR_RUN_KIND[kind], requested.run_id)
    return requested


def request_training(ws: Workspace, target: PatchTarget, data: Path, hyper: dict, *, actor: str) -> int:
    """Store the training data and queue a train run on the gpu queue; its run id."""
    with staged(ws.store) as staging:
        data_ref = staging.put_file(data)
        requested = request_run(
            ws.session_factory, ws.queue, kind=RunKind.TRAIN, assistant=target.assistant,
            version=target.version, user=actor, channel=CLI_CHANNEL,
            idempotency_key=f"cli-train-{uuid.uuid4()}", spec={"train_data_ref": data_ref, **hyper})
    return requested.run_id


def decide(session_factory: sessionmaker[Session], run_id: int, *, approve: bool, user: str,
           reason: str | None = None) -> None:
    """Approve or reject a run's rollout; the registry checks who may and lets one click win."""
    with session_scope(session_factory) as s:
        services.decide_rollout(s, run_id, approve=approve, user=user, reason=reason)


def rollback(session_factory: sessionmaker[Session], assistant: str, channel: str, user: str) -> tuple[str, str, int]:
    """Make the previous live rollout live again; (assistant, its base version, its run id)."""
    with session_scope(session_factory) as s:
        owner = services.get_assistant(s, assistant)
        restored: Rollout = services.rollback(s, owner.name, channel, user)
        return owner.name, restored.run.target_base.version, restored.run_id
