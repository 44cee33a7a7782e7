"""The sweeper: nothing stays `queued` or `running` forever.

- A run `queued` longer than `queued_limit_s` (its message was lost: the SQLite transport drops
  a delivered message when its worker is killed) is enqueued again, then at most once per
  `queued_limit_s` while it stays queued (a busy worker may simply not have reached it).
- A run `running` whose heartbeat is older than `heartbeat_limit_s` (its worker died) goes back
  to `queued` and is enqueued again, until it has been started `max_attempts` times; then it
  ends `failed` with a reason.

State changes go through the registry's conditional transitions, so several workers may sweep
at once; a duplicate message is harmless (the task's claim lets one through).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from portllm_core import metrics
from portllm_core.tasks import TASK_FOR_RUN_KIND
from registry import services
from registry.db import session_scope
from registry.errors import InvalidTransition
from registry.models import Run, RunStatus, utcnow

log = logging.getLogger("portllm.sweeper")

@dataclass
class SweepReport:
    requeued: list[int] = field(default_factory=list)  # stuck in queued: enqueued again
    retried: list[int] = field(default_factory=list)  # worker vanished: back to queued
    failed: list[int] = field(default_factory=list)  # worker vanished too often: failed
    tasks: dict[int, str] = field(default_factory=dict)  # run id -> task to enqueue


def stale_reason(run: Run) -> str:
    return f"worker {run.worker or '?'} stopped responding during attempt {run.attempts}"


def give_up_message(run: Run) -> str:
    return (f"The worker stopped responding {run.attempts} times while running this; check the "
            "worker logs (out of memory? killed?), then request the run again.")


def is_stale(run: Run, settings, now: datetime) -> bool:
    last = run.heartbeat_at or run.started_at
    return last is None or last < now - timedelta(seconds=settings.heartbeat_limit_s)


def requeue_if_stale(s, run: Run, settings, now: datetime | None = None) -> bool:
    """running -> queued when its worker died and attempts are left (a redelivered task uses
    this to take over at once; the sweeper fails runs that used up their attempts)."""
    now = now or utcnow()
    if run.status != RunStatus.RUNNING or not is_stale(run, settings, now) or run.attempts >= settings.max_attempts:
        return False
    try:
        services.requeue_run(s, run.id, reason=stale_reason(run))
    except InvalidTransition:  # someone else moved it first
        return False
    return True


class Sweeper:
    """Remembers when it last enqueued each queued run, so a long queue is not flooded."""

    def __init__(self, session_factory, settings) -> None:
        self.session_factory = session_factory
        self.settings = settings
        self._enqueued_at: dict[int, float] = {}

    def sweep(self, now: datetime | None = None) -> SweepReport:
        now = now or utcnow()
        report = SweepReport()
        with session_scope(self.session_factory) as s:
            found = services.stale_runs(
                s,
                queued_before=now - timedelta(seconds=self.settings.queued_limit_s),
                heartbeat_before=now - timedelta(seconds=self.settings.heartbeat_limit_s),
            )
            for run in found["running"]:
                if run.attempts >= self.settings.max_attempts:
                    try:
                        finished = services.finish_run(s, run.id, status=RunStatus.FAILED,
                                                       error=give_up_message(run), actor="sweeper")
                    except InvalidTransition:
                        continue
                    metrics.run_finished(finished)
                    report.failed.append(run.id)
                elif requeue_if_stale(s, run, self.settings, now):
                    report.retried.append(run.id)
                    report.tasks[run.id] = TASK_FOR_RUN_KIND[run.kind]
            recently = time.monotonic() - self.settings.queued_limit_s
            for run in found["queued"]:
                if self._enqueued_at.get(run.id, float("-inf")) < recently:
                    report.requeued.append(run.id)
                    report.tasks[run.id] = TASK_FOR_RUN_KIND[run.kind]
        for run_id in report.tasks:
            self._enqueued_at[run_id] = time.monotonic()
        return report


def sweep_once(ctx) -> SweepReport:
    """One sweep in a worker: change the registry, then enqueue and tell people."""
    report = ctx.sweeper.sweep()
    for run_id, task in report.tasks.items():
        ctx.queue.enqueue(task, run_id)
    for run_id in report.failed:
        ctx.notifier.run_changed(run_id, final=True)
    if report.tasks or report.failed:
        log.info("sweep: re-enqueued %s, retried %s, failed %s", report.requeued, report.retried, report.failed)
    return report
