"""A real worker's metrics port after real runs and a real answer: the counts moved in its pool
process and its main process serves them (prometheus_client's multiprocess mode)."""
from __future__ import annotations

import time

import pytest
from sqlalchemy import func, select

from registry import services
from registry.db import session_scope
from registry.models import Evaluation
from tests.bot.slack_http import free_port
from tests.fixtures.metrics import scrape
from tests.workers.conftest import stack_for
from tests.workers.harness import WorkerProcess
from tests.workers.seed import ASSISTANT, CHANNEL, request

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["sqlite"])
def stack(request, tmp_path_factory, demo_world):
    yield from stack_for(request, tmp_path_factory, demo_world, redis_db=13)


def run(stack, task: str, version: str, key: str, kind: str = "transplant") -> None:
    run_id = request(stack.session_factory, version, key=key, kind=kind, patch_id=stack.ids["patch"])
    stack.producer().enqueue(task, run_id)
    return stack.wait_for(run_id, "succeeded", "failed")


def answer(stack, question: str, request_id: str, timeout: float = 120) -> str:
    reply_to = {"channel": CHANNEL, "user": "bob", "request_id": request_id, "via": "console"}
    stack.producer().enqueue("portllm.answer_question", ASSISTANT, CHANNEL, question, "bob", reply_to)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in stack.outbox():
            if event["type"] == "answer_done" and event["reply_to"]["request_id"] == request_id:
                return event["text"]
        time.sleep(0.3)
    raise AssertionError(f"no answer for {request_id} in {timeout} s")


def test_a_worker_serves_the_counts_of_its_runs_scores_and_answers(stack, demo_world):
    port = free_port()
    worker = WorkerProcess(stack, "metrics", PORTLLM_METRICS_PORT=str(port)).ready()
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        before = scrape(url)
        assert before.value("portllm_runs_started_total") == 0
        assert before.value("portllm_rollouts_live", assistant=ASSISTANT) == 0

        transplant = run(stack, "portllm.transplant_and_evaluate", "v2", "m-v2")
        assert transplant.status == "succeeded", transplant.error
        evaluation = run(stack, "portllm.eval_only", "v2", "m-eval-v2", kind="eval")  # the same scores: reused
        assert evaluation.status == "succeeded", evaluation.error
        assert run(stack, "portllm.transplant_and_evaluate", "other", "m-other").status == "failed"
        with session_scope(stack.session_factory) as s:
            services.decide_rollout(s, transplant.id, approve=True, user="alice")
        question = demo_world.questions[0]
        assert answer(stack, question, "m-q1").strip()

        after = scrape(url)
        labels = {"assistant": ASSISTANT, "channel": CHANNEL}
        assert after.value("portllm_runs_started_total", **labels, kind="transplant") == 2
        assert after.value("portllm_runs_started_total", **labels, kind="eval") == 1
        assert after.value("portllm_runs_finished_total", **labels, kind="transplant", status="succeeded",
                           verdict=transplant.rollout.verdict) == 1
        assert after.value("portllm_runs_finished_total", **labels, kind="transplant", status="failed",
                           verdict="none") == 1
        assert after.value("portllm_runs_finished_total", **labels, kind="eval", status="succeeded",
                           verdict="none") == 1
        assert after.value("portllm_run_duration_seconds_count", kind="transplant") == 2
        assert after.value("portllm_run_queue_wait_seconds_count", kind="transplant") == 2
        assert after.value("portllm_run_queue_wait_seconds_count", kind="eval") == 1
        with stack.session_factory() as s:
            computed = dict(s.execute(select(Evaluation.computed, func.count()).group_by(Evaluation.computed)).all())
        assert computed[True] >= 2 and computed[False] >= 2  # the eval run took the transplant's scores
        assert after.value("portllm_evaluations_computed_total", assistant=ASSISTANT) == computed[True]
        assert after.value("portllm_evaluations_reused_total", assistant=ASSISTANT) == computed[False]
        assert after.value("portllm_answers_total", **labels, status="ok") == 1
        assert after.value("portllm_answer_latency_seconds_count", assistant=ASSISTANT) == 1
        assert after.value("portllm_answer_time_to_first_token_seconds_count", assistant=ASSISTANT) == 1
        assert after.value("portllm_rollouts_live", assistant=ASSISTANT) == 1
        after.assert_only_allowed_labels(forbidden={"alice", "bob", question})
    finally:
        worker.stop()
