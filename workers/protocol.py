"""The run protocol: one worker's attempt at a run.

Claim the run (a conditional update lets one worker through), report progress and heartbeat
while the steps work, and write every result (evaluations, a new patch, the rollout, the final
status) in one transaction at the end, only while this worker still owns the run. A run killed
and retried any number of times ends with exactly one set of results; a redelivered task for a
finished run does nothing.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from celery import Task
from sqlalchemy import update

from portllm_core import metrics
from portllm_core.flows.catalog import NewPatch, register_stored_patch
from registry import services
from registry.db import session_scope
from registry.errors import RegistryError
from registry.models import FINAL_RUN_STATUSES, Run, RunStatus, utcnow
from workers import context
from workers.sweeper import requeue_if_stale

log = logging.getLogger("portllm.tasks")


class JobFailed(Exception):
    """Ends the run `failed`; the message is for the people who asked for it."""

    def __init__(self, message: str, compat_report: dict | None = None) -> None:
        super().__init__(message)
        self.compat_report = compat_report


class RunTakenOver(Exception):
    """The run is no longer ours (cancelled, or retried elsewhere after this worker was presumed
    dead): stop without writing anything."""


@dataclass(frozen=True)
class Scored:
    """One subject's ledger score on one stage's suite, as the run used it."""

    subject: str  # registry.models.EvalSubject
    stage: str
    score_id: int
    computed: bool  # by this run; False: reused from the ledger
    accuracy: float
    ci95: tuple[float, float]
    correct: list[bool] | None  # per item; None when the items are gone from the store
    groups: dict[str, tuple[int, int]] = field(default_factory=dict)  # (correct, n) per group of items


@dataclass
class Outcome:
    """What a run produced, written in the final transaction."""

    evaluations: list[Scored] = field(default_factory=list)
    verdict: str | None = None
    live_accuracy: float | None = None
    gate_report: dict | None = None  # per stage: verdict, the test that decided, and why
    new_patch: NewPatch | None = None  # a re-tune's or train run's patch


class RunJob:
    """One attempt at a run by this worker: claim, progress, heartbeat, and the final write."""

    def __init__(self, run_id: int, worker: str) -> None:
        self.ctx = context.current()
        self.settings = self.ctx.settings
        self.run_id = run_id
        self.worker = worker
        self.compat_report: dict | None = None
        self.drift_report: dict | None = None
        self.release_id: int | None = None  # the release that queued the run, whose summary to update
        self._taken_over = threading.Event()
        self._last_progress = 0.0

    # -- claim ---------------------------------------------------------------------------
    def claim(self) -> bool:
        with session_scope(self.ctx.session_factory) as s:
            claimed = services.claim_run(s, self.run_id, self.worker)
            if claimed is not None:
                self.release_id = claimed.release_id
                metrics.run_started(claimed)
                return True
            run = s.get(Run, self.run_id)
            if run is None:
                log.warning("run #%s does not exist; nothing to do", self.run_id)
            elif run.status in FINAL_RUN_STATUSES:
                log.info("run #%s is already %s; nothing to do", self.run_id, run.status)
            elif run.status == RunStatus.RUNNING and requeue_if_stale(s, run, self.settings):
                s.expire(run)
                # Its worker died: take it over now rather than wait for the sweeper.
                claimed = services.claim_run(s, self.run_id, self.worker)
                if claimed is not None:
                    log.info("run #%s: took over from a worker that stopped responding", self.run_id)
                    self.release_id = claimed.release_id
                    metrics.run_started(claimed)
                    return True
            else:
                log.info("run #%s is %s on %s; not starting it twice", self.run_id, run.status, run.worker)
        return False

    # -- progress ------------------------------------------------------------------------
    def step(self, progress: float, text: str) -> None:
        """A new step: recorded, shown to people, and a place where a taken-over run stops."""
        if self._taken_over.is_set():
            raise RunTakenOver()
        with session_scope(self.ctx.session_factory) as s:
            run = services.report_progress(s, self.run_id, progress, text)
            if run.status != RunStatus.RUNNING or run.worker != self.worker:
                self._taken_over.set()
                raise RunTakenOver()
        self._last_progress = time.monotonic()
        self.ctx.notifier.run_changed(self.run_id)

    def progress_between(self, low: float, high: float, text: str) -> Callable[[float, str], None]:
        """A progress callback for a long engine call, mapped onto [low, high] of the run."""

        def report(fraction: float, detail: str = "") -> None:
            if time.monotonic() - self._last_progress >= 1.0:  # at most one write a second
                self.step(low + (high - low) * min(max(fraction, 0.0), 1.0), f"{text} {detail}".strip())

        return report

    # -- heartbeat -----------------------------------------------------------------------
    @contextmanager
    def heartbeating(self) -> Iterator[None]:
        """Beat every few seconds while the run is worked on, from a thread: long engine calls
        (loading, merging, one big batch) report no progress but must not look dead."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.settings.heartbeat_interval_s):
                try:
                    if not self._touch():
                        self._taken_over.set()
                        return
                except Exception:  # a missed beat is retried; the limit allows several
                    log.warning("heartbeat of run #%s failed", self.run_id, exc_info=True)

        thread = threading.Thread(target=beat, name=f"heartbeat-{self.run_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def _touch(self, session=None) -> bool:
        """Heartbeat, only while the run is still ours; False once another worker took it over."""
        stmt = (
            update(Run)
            .where(Run.id == self.run_id, Run.status == RunStatus.RUNNING, Run.worker == self.worker)
            .values(heartbeat_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        if session is not None:
            return session.execute(stmt).rowcount == 1
        with session_scope(self.ctx.session_factory) as s:
            return s.execute(stmt).rowcount == 1

    # -- endings -------------------------------------------------------------------------
    def succeed(self, outcome: Outcome) -> list[int]:
        """Write every result at once; returns the runs whose older proposals this one retired."""
        retired: list[int] = []
        with session_scope(self.ctx.session_factory) as s:
            if not self._touch(s):  # also takes the row's write lock until the commit
                raise RunTakenOver()
            result_patch_id = None
            if outcome.new_patch is not None:
                result_patch_id = register_stored_patch(s, outcome.new_patch).id
            for scored in outcome.evaluations:
                services.record_evaluation(s, self.run_id, subject=scored.subject, stage=scored.stage,
                                           score_id=scored.score_id, computed=scored.computed)
            if outcome.verdict is not None:
                rollout = services.open_rollout(s, self.run_id, verdict=outcome.verdict,
                                                live_accuracy=outcome.live_accuracy)
                retired = [older.run_id for older in rollout.retired]
            run = services.finish_run(s, self.run_id, status=RunStatus.SUCCEEDED, compat_report=self.compat_report,
                                      drift_report=self.drift_report, result_patch_id=result_patch_id,
                                      gate_report=outcome.gate_report)
            metrics.run_finished(run, outcome.verdict)
            metrics.evaluations_used(run.assistant.name, (scored.computed for scored in outcome.evaluations))
        return retired

    def fail(self, message: str, compat_report: dict | None = None) -> None:
        with session_scope(self.ctx.session_factory) as s:
            if not self._touch(s):
                raise RunTakenOver()
            metrics.run_finished(services.finish_run(s, self.run_id, status=RunStatus.FAILED, error=message,
                                                     compat_report=compat_report or self.compat_report,
                                                     drift_report=self.drift_report))


def worker_name(task: Task) -> str:
    return f"{task.request.hostname or 'worker'}/{os.getpid()}"


def run_task(task: Task, run_id: int, work: Callable[[RunJob], Outcome]) -> str:
    """Claim the run, do `work` (the steps), and end the run succeeded or failed (never left running)."""
    job = RunJob(run_id, worker_name(task))
    if not job.claim():
        return "skipped"
    job.ctx.notifier.run_changed(run_id)
    try:
        try:
            with job.heartbeating():
                for older in job.succeed(work(job)):  # their cards now say which run replaced them
                    job.ctx.notifier.run_changed(older, final=True)
            result = "succeeded"
        except JobFailed as exc:
            job.fail(str(exc), exc.compat_report)
            result = "failed"
        except (RegistryError, _engine_error()) as exc:
            job.fail(f"{exc}")
            result = "failed"
        except RunTakenOver:
            raise
        except Exception as exc:
            log.exception("run #%s failed", run_id)
            first = str(exc).splitlines()[0][:200] if str(exc) else ""
            job.fail(f"Unexpected {type(exc).__name__}: {first} (the worker log has the details); "
                     "fix the cause, then request the run again.")
            result = "failed"
    except RunTakenOver:
        log.warning("run #%s was cancelled or taken over by another worker; this attempt stops", run_id)
        return "taken over"
    job.ctx.notifier.run_changed(run_id, final=True)
    if job.release_id is not None:  # the release summary shows this run's verdict now
        job.ctx.notifier.release_changed(job.release_id)
    return result


def _engine_error() -> type[Exception]:
    from portllm_engine.errors import EngineError

    return EngineError
