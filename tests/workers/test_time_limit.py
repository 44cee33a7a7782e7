"""A job past its hard time limit: Celery kills it, and the run fails once, saying so (it is not
handed to the sweeper as a vanished worker and retried, each attempt hitting the same limit)."""
from __future__ import annotations

import time

import pytest

from registry import services
from tests.workers.conftest import stack_for
from tests.workers.harness import FAST_SWEEP, WorkerProcess
from tests.workers.seed import request

pytestmark = pytest.mark.slow

LIMIT_S = 5


@pytest.fixture(scope="module", params=["sqlite"])
def stack(request, tmp_path_factory, demo_world):
    yield from stack_for(request, tmp_path_factory, demo_world, redis_db=11)


def test_a_job_over_its_hard_time_limit_fails_once_with_the_limit_in_its_error(stack):
    run_id = request(stack.session_factory, "v2", key="over-time", patch_id=stack.ids["patch"])
    # Held at its first step (heartbeat still beating) until Celery's hard limit kills the pool child.
    worker = WorkerProcess(stack, "slow", hold_at="loading", PORTLLM_JOB_TIME_LIMIT_S=str(LIMIT_S)).ready()
    try:
        stack.producer().enqueue("portllm.transplant_and_evaluate", run_id)
        run = stack.wait_for(run_id, "failed", "succeeded", timeout=120)
        assert run.status == "failed" and f"exceeded the time limit of {LIMIT_S} s" in run.error
        # Long enough for the sweeper to have retried a run it took for a vanished worker's.
        time.sleep(float(FAST_SWEEP["PORTLLM_HEARTBEAT_LIMIT_S"]) + 4)
        run = stack.run(run_id)
    finally:
        worker.stop()
    assert run.status == "failed" and run.attempts == 1
    with stack.session_factory() as s:
        actions = [e.action for e in services.audit_events(s, entity_type="run", entity_id=run_id)]
    assert actions.count("run.failed") == 1 and "run.requeued" not in actions
    final = [e for e in stack.outbox() if e.get("type") == "run" and e["run_id"] == run_id and e["final"]]
    assert final and final[-1]["status"] == "failed"  # the people who asked were told
