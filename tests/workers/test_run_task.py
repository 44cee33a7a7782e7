"""Claiming and ending runs in-process (no worker, no model): the idempotency rules of the tasks."""
from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

import pytest
from sqlalchemy import update

from registry import services
from registry.db import session_scope
from registry.models import Run, utcnow
from tests.workers.seed import seed_fake
from workers import context
from portllm_core.settings import Settings
from workers.protocol import JobFailed, RunJob, run_task


@pytest.fixture
def ctx(session_factory, data_dir):
    ctx = context.reset(Settings(heartbeat_limit_s=30, heartbeat_interval_s=0.1))
    yield ctx
    ctx.close()


def task(hostname: str) -> SimpleNamespace:
    return SimpleNamespace(request=SimpleNamespace(hostname=hostname))


def get(session_factory, run_id: int) -> Run:
    with session_factory() as s:
        return s.get(Run, run_id)


def test_a_run_running_on_a_live_worker_is_not_started_twice_but_a_dead_ones_is_taken_over(session_factory, ctx):
    run_id = seed_fake(session_factory)
    first = RunJob(run_id, "w1")
    assert first.claim()
    assert not RunJob(run_id, "w2").claim()  # w1's heartbeat is fresh
    with session_scope(session_factory) as s:
        s.execute(update(Run).where(Run.id == run_id).values(heartbeat_at=utcnow() - timedelta(seconds=31)))
    assert RunJob(run_id, "w2").claim()  # w1 stopped beating: w2 takes over at once
    run = get(session_factory, run_id)
    assert (run.status, run.worker, run.attempts) == ("running", "w2", 2)
    assert not first._touch()  # w1, should it wake up, can no longer write


def test_a_finished_run_delivered_again_does_nothing(session_factory, ctx):
    run_id = seed_fake(session_factory)
    bodies = []

    def body(job):
        bodies.append(job.run_id)
        raise JobFailed("The patch does not fit: see the report.")

    assert run_task(task("w1"), run_id, body) == "failed"
    assert run_task(task("w2"), run_id, body) == "skipped"
    assert bodies == [run_id]
    run = get(session_factory, run_id)
    assert run.status == "failed" and run.error == "The patch does not fit: see the report."


def test_an_unexpected_error_ends_the_run_failed_with_a_reason(session_factory, ctx):
    run_id = seed_fake(session_factory)

    def body(job):
        raise RuntimeError("CUDA out of memory\nlong details")

    assert run_task(task("w1"), run_id, body) == "failed"
    run = get(session_factory, run_id)
    assert run.status == "failed"
    assert run.error.startswith("Unexpected RuntimeError: CUDA out of memory (the worker log has the details)")
    events = [line for line in ctx.settings.outbox_path.read_text().splitlines() if '"final": true' in line]
    assert len(events) == 1


def test_a_run_cancelled_while_it_works_stops_without_writing(session_factory, ctx):
    run_id = seed_fake(session_factory)

    def body(job):
        with session_scope(session_factory) as s:
            services.cancel_run(s, run_id, user="alice")
        job.step(0.5, "evaluating")  # the next step notices and stops the job
        reached.append(True)

    reached = []

    assert run_task(task("w1"), run_id, body) == "taken over"
    assert reached == [] and get(session_factory, run_id).status == "cancelled"
