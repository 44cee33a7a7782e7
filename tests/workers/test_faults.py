"""A worker killed with SIGKILL in the middle of a transplant: a new worker finishes the run,
exactly once. On the SQLite queue the killed worker's message is gone (kombu hid it on
delivery), on Redis it sits unacked until the visibility timeout; either way the sweeper of the
new worker sees the stale heartbeat and enqueues the run again.

The doomed worker is held at the candidate evaluation (tests.workers.harness.HOLD_AT).
"""
from __future__ import annotations

import pytest

from registry import services
from registry.models import Evaluation, Rollout
from tests.workers.conftest import stack_for
from tests.workers.harness import WorkerProcess
from tests.workers.seed import request

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def stack(request, tmp_path_factory, demo_world):
    yield from stack_for(request, tmp_path_factory, demo_world, redis_db=12)


def test_a_worker_killed_mid_transplant_is_replaced_and_the_run_completes_once(stack):
    run_id = request(stack.session_factory, "v2", key="kill-9", patch_id=stack.ids["patch"])
    doomed = WorkerProcess(stack, "doomed", hold_at="evaluating the candidate").ready()
    try:
        stack.producer().enqueue("portllm.transplant_and_evaluate", run_id)
        run = stack.wait_for(run_id, "failed", "succeeded", step="evaluating the candidate", timeout=120)
        assert run.status == "running" and run.attempts == 1
    finally:
        doomed.kill()

    fresh = WorkerProcess(stack, "fresh").ready()
    try:
        run = stack.wait_for(run_id, "succeeded", "failed", timeout=240)
    finally:
        fresh.stop()
    assert run.status == "succeeded", run.error
    assert run.attempts == 2 and run.worker.startswith("fresh@")
    with stack.session_factory() as s:
        assert s.query(Evaluation).filter_by(run_id=run_id).count() == 2
        assert s.query(Rollout).filter_by(run_id=run_id).count() == 1
        actions = [e.action for e in services.audit_events(s, entity_type="run", entity_id=run_id)]
    assert actions.count("run.started") == 2 and actions.count("run.requeued") == 1
    assert actions.count("run.succeeded") == 1
