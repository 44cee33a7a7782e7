"""The real model, SmolLM2-135M-Instruct, end to end: the text the gate scored is the text `ask`
answers, item by item, on the local backend and on vLLM.

A real worker transplants the v1 patch onto v2 and gates it; the candidate's per-item outputs
come from the ledger. The rollout goes live, every suite question is asked through the serve
queue, and each answer must equal the output the gate scored for it.

Needs the `real` extra (`pip install -e '.[real]'`) and the real world, built once per machine
outside the clone (`portllm_engine.worlds.smollm2`); vLLM's part needs `make vllm`. Skipped with
a reason without them; failures where PORTLLM_TEST_REQUIRE_REAL=1 / PORTLLM_TEST_REQUIRE_VLLM=1 (CI).
"""
from __future__ import annotations

import json
import os
import time

import pytest

from registry import services
from registry.db import session_scope
from tests.workers.harness import REPO, Stack, WorkerProcess
from tests.workers.seed import ASSISTANT, CHANNEL, request, seed_demo

# The gate's run on the real model takes minutes before the first answer (setup counts toward the limit).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

FAMILY = "smollm2"
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
# float32 as the world stores its bases and the local backend scores them (vLLM on CPU would pick bf16).
VLLM_ARGS = "--dtype float32 --gpu-memory-utilization 0.15 --max-num-seqs 16"


@pytest.fixture(scope="module")
def stack(tmp_path_factory, real_world):
    from registry.cli import upgrade
    from registry.db import make_session_factory

    data_dir = tmp_path_factory.mktemp("real")
    database_url = f"sqlite:///{data_dir / 'portllm.db'}"
    upgrade(database_url)
    stack = Stack(data_dir, database_url, f"sqla+sqlite:///{data_dir / 'queue.db'}", make_session_factory(database_url))
    stack.ids = seed_demo(stack.session_factory, data_dir / "artifacts", real_world, family=FAMILY,
                          versions=("v1", "v2"))
    yield stack
    stack.session_factory.kw["bind"].dispose()


@pytest.fixture(scope="module")
def scored(stack):
    """The gate's run onto v2 by a real worker, approved: {question: the output the gate scored}."""
    worker = WorkerProcess(stack, "gpu", queues="gpu")
    try:
        run_id = request(stack.session_factory, "v2", key="real-v2")
        run = stack.wait_for(run_id, "succeeded", "failed", timeout=1200)
        assert run.status == "succeeded", run.error
    finally:
        worker.stop()
    candidate = next(e for e in run.evaluations if e.subject == "candidate")
    items = json.loads(stored(stack, candidate.items_ref))
    with session_scope(stack.session_factory) as s:
        services.decide_rollout(s, run_id, approve=True, user="alice")
    with stack.session_factory() as s:
        suite_ref = services.get_assistant(s, ASSISTANT).suite_ref
    suite = [json.loads(line) for line in stored(stack, suite_ref).splitlines() if line.strip()]
    return {suite[row["index"]]["prompt"]: row["output"] for row in items if row["kind"] == "generate"}


def stored(stack, ref: str) -> str:
    from registry.artifacts import ArtifactStore

    return ArtifactStore(stack.data_dir / "artifacts").path(ref).read_text()


def ask_all(stack, questions: list[str], prefix: str, timeout: float) -> dict[str, str]:
    producer = stack.producer()
    ids = {f"{prefix}-{i}": q for i, q in enumerate(questions)}
    for request_id, question in ids.items():
        reply_to = {"channel": CHANNEL, "user": "bob", "request_id": request_id, "via": "console"}
        producer.enqueue("portllm.answer_question", ASSISTANT, CHANNEL, question, "bob", reply_to)
    deadline = time.monotonic() + timeout
    while True:
        done = {e["reply_to"]["request_id"]: e["text"] for e in stack.outbox() if e["type"] == "answer_done"}
        if all(r in done for r in ids):
            return {ids[r]: done[r] for r in ids}
        assert time.monotonic() < deadline, f"{sum(r in done for r in ids)} of {len(ids)} answered in {timeout} s"
        time.sleep(0.5)


def differences(scored: dict[str, str], answered: dict[str, str]) -> list[str]:
    return [f"{q!r}: gate {scored[q]!r} / ask {answered[q]!r}" for q in scored if answered[q].strip() != scored[q].strip()]


def test_the_text_the_gate_scored_is_the_text_ask_answers_locally(stack, scored):
    worker = WorkerProcess(stack, "serve", queues="serve", PORTLLM_SERVE_BACKEND="local")
    try:
        answered = ask_all(stack, list(scored), "local", 1200)
    finally:
        worker.stop()
    assert not differences(scored, answered)
    assert sum(bool(a.strip()) for a in answered.values()) == len(scored)


def test_vllm_answers_what_the_gate_scored(stack, scored, real_world):
    if not VLLM_PYTHON.exists():
        message = f"vLLM is not installed ({VLLM_PYTHON} is missing): run `make vllm`"
        if os.environ.get("PORTLLM_TEST_REQUIRE_VLLM") == "1":
            pytest.fail(message)
        pytest.skip(message)
    worker = WorkerProcess(stack, "vllm", queues="serve", PORTLLM_SERVE_BACKEND="vllm",
                           PORTLLM_VLLM_PYTHON=str(VLLM_PYTHON), PORTLLM_VLLM_ARGS=VLLM_ARGS,
                           PORTLLM_VLLM_START_TIMEOUT_S="400")
    try:
        worker.wait_for_log("serve worker ready: answers on vllm")
        answered = ask_all(stack, list(scored), "vllm", 1500)
    finally:
        worker.stop()
    answered = {q: a.split("\n\n", 1)[1] if a.startswith("(The engine") else a for q, a in answered.items()}
    story = [q for q in scored if q in real_world.questions] or list(scored)[:3]
    assert not differences({q: scored[q] for q in story}, answered), "the story's questions differ on vLLM"
    same = len(scored) - len(differences(scored, answered))
    print(f"vLLM answered {same} of {len(scored)} suite questions exactly as the gate scored them")
    assert same >= 0.9 * len(scored)
