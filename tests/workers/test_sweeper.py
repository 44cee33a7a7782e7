"""The sweeper's rules on a real registry database (SQLite, and PostgreSQL when configured)."""
from __future__ import annotations

from datetime import timedelta

from registry import services
from registry.db import session_scope
from registry.models import Run, utcnow
from tests.workers.seed import seed_fake
from portllm_core.settings import Settings
from workers.sweeper import Sweeper, requeue_if_stale

SETTINGS = Settings(queued_limit_s=60, heartbeat_limit_s=30, max_attempts=2)


def claim(session_factory, run_id: int, worker: str = "w1") -> None:
    with session_scope(session_factory) as s:
        assert services.claim_run(s, run_id, worker) is not None


def get(session_factory, run_id: int) -> Run:
    with session_factory() as s:
        return s.get(Run, run_id)


def test_fresh_runs_are_left_alone(session_factory):
    run_id = seed_fake(session_factory)
    report = Sweeper(session_factory, SETTINGS).sweep()
    assert report.tasks == {} and get(session_factory, run_id).status == "queued"
    claim(session_factory, run_id)
    assert Sweeper(session_factory, SETTINGS).sweep().tasks == {}


def test_a_run_queued_too_long_is_enqueued_again_but_not_every_sweep(session_factory):
    run_id = seed_fake(session_factory)
    later = utcnow() + timedelta(seconds=61)
    sweeper = Sweeper(session_factory, SETTINGS)
    assert sweeper.sweep(later).tasks == {run_id: "portllm.transplant_and_evaluate"}
    assert sweeper.sweep(later).tasks == {}  # a busy worker may just not have reached it yet
    assert get(session_factory, run_id).status == "queued"


def test_a_run_whose_worker_died_is_retried_then_failed(session_factory):
    run_id = seed_fake(session_factory)
    claim(session_factory, run_id, "w1")
    sweeper = Sweeper(session_factory, SETTINGS)
    report = sweeper.sweep(utcnow() + timedelta(seconds=31))
    assert report.retried == [run_id] and report.tasks == {run_id: "portllm.transplant_and_evaluate"}
    run = get(session_factory, run_id)
    assert (run.status, run.worker, run.attempts) == ("queued", None, 1)

    claim(session_factory, run_id, "w2")  # the second attempt's worker dies too
    report = sweeper.sweep(utcnow() + timedelta(seconds=31))
    assert report.failed == [run_id] and report.tasks == {}
    run = get(session_factory, run_id)
    assert run.status == "failed" and "stopped responding 2 times" in run.error
    with session_factory() as s:
        actions = [e.action for e in services.audit_events(s, entity_type="run", entity_id=run_id)]
    assert actions.count("run.requeued") == 1 and actions[-1] == "run.failed"


def test_a_redelivered_task_takes_over_only_a_stale_run(session_factory):
    run_id = seed_fake(session_factory)
    claim(session_factory, run_id, "w1")
    with session_scope(session_factory) as s:
        run = s.get(Run, run_id)
        assert not requeue_if_stale(s, run, SETTINGS)  # its worker is alive
        assert requeue_if_stale(s, run, SETTINGS, utcnow() + timedelta(seconds=31))
        assert services.claim_run(s, run_id, "w2") is not None


def test_only_one_of_two_sweepers_retries_a_run(session_factory):
    run_id = seed_fake(session_factory)
    claim(session_factory, run_id)
    later = utcnow() + timedelta(seconds=31)
    first, second = Sweeper(session_factory, SETTINGS), Sweeper(session_factory, SETTINGS)
    assert first.sweep(later).retried == [run_id]
    assert second.sweep(later).retried == []
    assert get(session_factory, run_id).attempts == 1
