"""Request runs, decide rollouts, roll back: each one registry transaction, then the queue.

A run is enqueued only after its row is committed, so a worker always finds it; an enqueue
lost in between is re-sent by the sweeper. Requests are idempotent per key: the same Slack
request (or a retried CLI call) never queues a run twice. Requests from chat pass who may
request and the rate limits; decisions pass the role, channel and four-eyes checks
(registry.services.permissions), in the same transaction as what they change.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from portllm_core import metrics
from portllm_core.flows.catalog import PatchTarget
from portllm_core.settings import Settings
from portllm_core.staging import staged
from portllm_core.tasks import SCORE_LIVE, TASK_FOR_RUN_KIND, WARM_ANSWERS, Enqueue
from portllm_core.workspace import Workspace
from registry import services
from registry.db import session_scope
from registry.models import Rollout, RolloutState, RunKind
from registry.services import permissions

# Runs requested from the admin CLI are not tied to a chat channel.
CLI_CHANNEL = "cli"


# Rate limits count the runs requested within this window.
RATE_WINDOW_S = 3600


@dataclass(frozen=True)
class RateLimits:
    """How many runs one person, and one assistant, may have requested within RATE_WINDOW_S."""

    per_user: int
    per_assistant: int

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimits:
        return cls(settings.runs_per_user_per_hour, settings.runs_per_assistant_per_hour)


@dataclass(frozen=True)
class RunRequested:
    run_id: int
    created: bool  # False: the same request arrived before and its run was queued then
    kind: str
    assistant: str
    version: str
    status: str


def request_run(session_factory: sessionmaker[Session], enqueue: Enqueue, *, kind: str, assistant: str,
                version: str, user: str, channel: str, idempotency_key: str, patch_id: int | None = None,
                spec: dict | None = None, limits: RateLimits | None = None,
                release_id: int | None = None) -> RunRequested:
    """Record a run of `kind` and put it on its queue (once per idempotency key).

    With `limits` (a request from chat: typed, or a card's button) the person must be one of the
    assistant's requesters and within the rate limits; a repeated request is answered before it
    is counted.
    """
    with metrics.counting_refusals(), session_scope(session_factory) as s:
        owner = services.get_assistant(s, assistant)
        base = services.get_base(s, owner.family, version)
        if limits is not None:
            permissions.require_requester(owner, user)
            if services.find_run_by_key(s, idempotency_key) is None:
                permissions.require_run_quota(s, owner, user, per_user=limits.per_user,
                                              per_assistant=limits.per_assistant, window_s=RATE_WINDOW_S)
        run, created = services.request_run(
            s, assistant=owner.name, version=base.version, kind=kind, idempotency_key=idempotency_key,
            requested_by=user, channel=channel, patch_id=patch_id, spec=spec, release_id=release_id)
        requested = RunRequested(run.id, created, kind, owner.name, base.version, run.status)
    if created:
        metrics.run_requested(requested.assistant, channel, kind)
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


def decide(session_factory: sessionmaker[Session], enqueue: Enqueue, run_id: int, *, approve: bool, user: str,
           channel: str, reason: str | None = None) -> None:
    """Approve or reject a run's rollout, in the run's channel; the registry lets one click win."""
    with metrics.counting_refusals(), session_scope(session_factory) as s:
        run = services.get_run(s, run_id)
        permissions.require_decider(run, user, channel, action="approve it" if approve else "reject it",
                                    approving=approve)
        rollout = services.decide_rollout(s, run_id, approve=approve, user=user, reason=reason)
        follow_ups = went_live(rollout) if rollout.state == RolloutState.LIVE else []
    for task in follow_ups:
        enqueue(*task)


def went_live(rollout: Rollout) -> list[tuple]:
    """The tasks a rollout that went live needs, queued after its commit: its base and patch made
    ready to answer before the first question, and (with a full suite) its score on that suite,
    the next release's reference, computed now in the background rather than during the release."""
    tasks: list[tuple] = [(WARM_ANSWERS, rollout.assistant.name, rollout.channel)]
    if rollout.assistant.full_suite_ref:
        tasks.append((SCORE_LIVE, rollout.id))
    return tasks


def request_retune(session_factory: sessionmaker[Session], enqueue: Enqueue, run_id: int, *, user: str,
                   channel: str, limits: RateLimits) -> RunRequested:
    """Queue a re-tune of a run's patch on its target base: an approver's call, in the run's channel.

    One re-tune per attempt: asking again while one is queued or running (or after it
    succeeded) returns it; after it failed or was cancelled a new one is queued.
    """
    with metrics.counting_refusals(), session_scope(session_factory) as s:
        run = services.get_run(s, run_id)
        permissions.require_decider(run, user, channel, action="re-tune it", approving=False)
        assistant, version, patch_id = run.assistant.name, run.target_base.version, run.patch_id
        key = services.retune_key(s, run_id)
    return request_run(session_factory, enqueue, kind=RunKind.RETUNE, assistant=assistant, version=version,
                       user=user, channel=run.channel, idempotency_key=key, patch_id=patch_id, limits=limits)


def accept_offer(session_factory: sessionmaker[Session], enqueue: Enqueue, release_id: int, assistant: str, *,
                 user: str, channel: str, limits: RateLimits) -> RunRequested:
    """Queue the transplant a release offered to an assistant in this channel (the offer card's
    button): the request typing `patch <assistant> onto <version>` here makes, with the same
    requester and quota checks; one run per offer, whoever clicks first."""
    with session_scope(session_factory) as s:
        owner = services.get_assistant(s, assistant)
        release = services.offered_release(s, release_id, owner, channel)
        version, key = release.base.version, services.release_key(release.id, owner.id, channel)
    return request_run(session_factory, enqueue, kind=RunKind.TRANSPLANT, assistant=owner.name, version=version,
                       user=user, channel=channel, idempotency_key=key, limits=limits, release_id=release_id)


def rollback(session_factory: sessionmaker[Session], enqueue: Enqueue, assistant: str, channel: str,
             user: str) -> tuple[str, str, int]:
    """Make the previous live rollout live again; (assistant, its base version, its run id).

    Only in the channel it is typed in: rollouts of other channels are theirs to roll back.
    """
    with metrics.counting_refusals(), session_scope(session_factory) as s:
        owner = services.get_assistant(s, assistant)
        permissions.require_rollback_here(s, owner, user, channel)
        restored: Rollout = services.rollback(s, owner.name, channel, user)
        done = owner.name, restored.run.target_base.version, restored.run_id
        follow_ups = went_live(restored)
    for task in follow_ups:
        enqueue(*task)
    return done
