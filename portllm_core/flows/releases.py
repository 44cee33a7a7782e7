"""Releases: a new base version reaches every assistant live on its family, per their policy.

A release opens in the transaction that registers its base (`portllm base add`, `base watch`
and the demo, through flows.catalog.register_base); `start_release` opens one for a base
registered earlier. The registry keeps one release per base, so a retry queues nothing. Runs
are enqueued after the commit; the announcement (summary to the operations channel, offer
cards) goes through the workers' notifier, like every other card.
"""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from portllm_core import metrics
from portllm_core.tasks import ANNOUNCE_RELEASE, TASK_FOR_RUN_KIND, Enqueue
from registry import services
from registry.db import session_scope
from registry.models import RunKind


@dataclass(frozen=True)
class ReleaseStarted:
    release_id: int
    label: str  # "demo v3"
    queued: tuple[tuple[int, str, str], ...]  # (run id, assistant, channel) queued now
    offers: tuple[tuple[str, str], ...]  # (assistant, channel) offered a run (policy `ask`)
    created: bool  # False: the release was started before, nothing new was queued


def start_release(session_factory: sessionmaker[Session], enqueue: Enqueue, family: str, version: str,
                  *, actor: str) -> ReleaseStarted:
    """Open the release of a registered base (once) and queue its runs: for a base registered
    before releases existed, or to see that a release started (a second call queues nothing)."""
    with session_scope(session_factory) as s:
        started = open_release(s, services.get_base(s, family, version), actor=actor)
    enqueue_release(enqueue, started)
    return started


def open_release(s: Session, base, *, actor: str) -> ReleaseStarted:
    """Open the base's release in the caller's transaction (registration opens it in its own, so
    no crash can leave a base registered and unreleased); enqueue_release after the commit."""
    existed = services.get_release(s, base) is not None
    release, runs = services.open_release(s, base, actor=actor)
    return ReleaseStarted(
        release.id, f"{base.family} {base.version}",
        tuple((r.id, r.assistant.name, r.channel) for r in runs),
        tuple((o["assistant"], o["channel"]) for o in release.offers), not existed)


def enqueue_release(enqueue: Enqueue, started: ReleaseStarted) -> None:
    """Put the release's runs on the queue (a lost enqueue is re-sent by the sweeper), and its announcement."""
    for run_id, assistant, channel in started.queued:
        metrics.run_requested(assistant, channel, RunKind.TRANSPLANT)
        enqueue(TASK_FOR_RUN_KIND[RunKind.TRANSPLANT], run_id)
    if started.created and (started.queued or started.offers):  # a release that reaches nobody says nothing
        enqueue(ANNOUNCE_RELEASE, started.release_id)
