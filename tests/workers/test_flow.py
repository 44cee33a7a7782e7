"""The main flow on a real worker process: once on the embedded SQLite queue, once on Redis.

One worker serves the whole module (per broker); the tests run in file order and later ones
use the rollout the first one opened.
"""
from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from registry import services
from registry.db import session_scope
from registry.models import Evaluation, Rollout, Run
from tests.workers.conftest import stack_for
from tests.workers.harness import WorkerProcess
from tests.workers.seed import ASSISTANT, CHANNEL, register_patch_dir, request

pytestmark = pytest.mark.slow

TRANSPLANT = "portllm.transplant_and_evaluate"


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def stack(request, tmp_path_factory, demo_world):
    yield from stack_for(request, tmp_path_factory, demo_world, redis_db=11)


@pytest.fixture(scope="module")
def worker(stack):
    worker = WorkerProcess(stack, "flow").ready()
    yield worker
    worker.stop()


def run_on(stack, version: str, key: str, *, kind: str = "transplant", patch_id: int | None = None) -> int:
    return request(stack.session_factory, version, key=key, kind=kind, patch_id=patch_id or stack.ids["patch"])


def audit_actions(stack, run_id: int) -> list[str]:
    with stack.session_factory() as s:
        return [e.action for e in services.audit_events(s, entity_type="run", entity_id=run_id)]


def ask(stack, assistant: str, channel: str, question: str, request_id: str) -> None:
    """As the bot's console sends it (portllm_core.commands.handlers)."""
    reply_to = {"channel": channel, "user": "bob", "request_id": request_id, "via": "console"}
    stack.producer().enqueue("portllm.answer_question", assistant, channel, question, "bob", reply_to)


def answers(stack, request_id: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = [e for e in stack.outbox() if e["type"] == "answer_done" and e["reply_to"]["request_id"] == request_id]
        if done:
            return done[0]["text"]
        time.sleep(0.3)
    raise AssertionError(f"no answer for {request_id} in {timeout} s")


def test_a_transplant_delivered_twice_ends_once_with_a_rollout_awaiting_approval(stack, worker):
    run_id = run_on(stack, "v2", "flow-v2")
    queue = stack.producer()
    queue.enqueue(TRANSPLANT, run_id)
    queue.enqueue(TRANSPLANT, run_id)  # the same task delivered twice
    run = stack.wait_for(run_id, "succeeded", "failed")
    assert run.status == "succeeded", run.error
    assert sorted(e.subject for e in run.evaluations) == ["candidate", "target_base"]
    candidate, base = run.evaluation("candidate"), run.evaluation("target_base")
    assert candidate.accuracy > base.accuracy and candidate.items_ref
    assert run.rollout.state == "awaiting_approval" and run.rollout.verdict in ("pass", "inconclusive")
    assert run.compat_report["compatible"] and run.drift_report["overall"] > 0 and run.attempts == 1

    worker.wait_for_log(f"run #{run_id} is already succeeded; nothing to do")
    queue.enqueue(TRANSPLANT, run_id)  # redelivered long after: still nothing to do
    deadline = time.monotonic() + 30
    while worker.text().count(f"run #{run_id} is already succeeded") < 2 and time.monotonic() < deadline:
        time.sleep(0.3)
    assert worker.text().count(f"run #{run_id} is already succeeded") == 2
    assert audit_actions(stack, run_id).count("run.started") == 1
    with stack.session_factory() as s:
        assert s.query(Rollout).filter_by(run_id=run_id).count() == 1

    events = [e for e in stack.outbox() if e["type"] == "run" and e["run_id"] == run_id]
    assert events[-1]["final"] and events[-1]["status"] == "succeeded"
    assert any(e["status"] == "running" for e in events)


def test_questions_are_answered_by_the_live_patch_and_nothing_live_says_so(stack, worker, demo_world):
    run_id = run_on(stack, "v2", "flow-v2")  # the same request: the first test's run
    with session_scope(stack.session_factory) as s:
        services.decide_rollout(s, run_id, approve=True, user="alice")
    question = demo_world.questions[0]
    for request_id in ("q1", "q2"):
        ask(stack, ASSISTANT, CHANNEL, question, request_id)
    assert answers(stack, "q1").strip() and answers(stack, "q2") == answers(stack, "q1")
    # One resident copy per process: the run loaded v2, both answers attached the patch to it.
    loads = [line for line in worker.text().splitlines() if "loading base" in line and "v2 from" in line]
    assert len(loads) == 1, loads

    ask(stack, ASSISTANT, "#random", question, "q3")
    assert "is not live in #random" in answers(stack, "q3")
    ask(stack, "suport-assistant", CHANNEL, question, "q4")
    assert "Did you mean: support-assistant" in answers(stack, "q4")


def test_an_incompatible_patch_fails_with_the_compat_report(stack, worker):
    run_id = run_on(stack, "other", "flow-other")
    stack.producer().enqueue(TRANSPLANT, run_id)
    run = stack.wait_for(run_id, "succeeded", "failed")
    assert run.status == "failed" and "does not fit demo/other" in run.error
    # The reason first, on one line, however many modules failed.
    assert "does not fit demo/other: the base's architecture is not the one the patch was trained on" in run.error
    assert "\n" not in run.error and len(run.error) < 400
    assert not run.compat_report["compatible"] and run.compat_report["errors"]
    assert run.evaluations == [] and run.rollout is None


def test_eval_only_scores_without_opening_a_rollout(stack, worker):
    run_id = run_on(stack, "v3", "flow-eval-v3", kind="eval")
    stack.producer().enqueue("portllm.eval_only", run_id)
    run = stack.wait_for(run_id, "succeeded", "failed")
    assert run.status == "succeeded", run.error
    assert len(run.evaluations) == 2 and run.rollout is None


def test_a_corrupt_patch_file_fails_before_anything_is_loaded(stack, worker, demo_world, tmp_path):
    import shutil

    from registry.artifacts import ArtifactStore

    copy = tmp_path / "patch"
    shutil.copytree(demo_world.patch, copy)
    (copy / "NOTE.txt").write_text("a copy, so it is stored apart from the real patch\n")
    store = ArtifactStore(stack.data_dir / "artifacts")
    with session_scope(stack.session_factory) as s:
        patch = register_patch_dir(s, store, copy)
        patch_id, stored = patch.id, store.path(patch.artifact_ref)
    weights = stored / "adapter_model.safetensors"
    weights.chmod(0o644)
    data = bytearray(weights.read_bytes())
    data[-8:] = b"\x00" * 8
    weights.write_bytes(bytes(data))
    loads_before = worker.text().count("loading base")

    run_id = run_on(stack, "v3", "flow-corrupt", patch_id=patch_id)
    stack.producer().enqueue(TRANSPLANT, run_id)
    run = stack.wait_for(run_id, "succeeded", "failed")
    assert run.status == "failed" and "corrupt" in run.error and "nothing was loaded" in run.error
    assert run.compat_report is None and run.drift_report is None and run.evaluations == []
    assert worker.text().count("loading base") == loads_before


def test_a_retune_registers_a_child_patch_and_evaluates_it_like_a_transplant(stack, worker):
    run_id = run_on(stack, "v3", "flow-retune", kind="retune")
    stack.producer().enqueue("portllm.retune", run_id)
    run = stack.wait_for(run_id, "succeeded", "failed")
    assert run.status == "succeeded", run.error
    with stack.session_factory() as s:
        run = s.get(Run, run_id)
        child = run.result_patch
        assert child.parent_patch_id == stack.ids["patch"] and child.origin_base.version == "v3"
        assert child.train_data_ref == run.patch.train_data_ref
        assert child.provenance["retuned_from_patch"] == stack.ids["patch"]
        # the re-tuned candidate and the base alone (and live, when an earlier test made one live here)
        assert {"candidate", "target_base"} <= {e.subject for e in run.evaluations}
        assert run.rollout is not None
        transplanted = s.scalar(select(Evaluation).join(Run).where(Run.idempotency_key == "flow-eval-v3",
                                                                   Evaluation.subject == "candidate"))
        assert run.evaluation("candidate").accuracy > transplanted.accuracy  # the re-tune helped


def test_an_inconclusive_quick_suite_continues_on_the_full_one_and_live_is_compared_item_by_item(
        stack, worker, demo_world, tmp_path):
    import json

    from registry.artifacts import ArtifactStore

    # A quick suite of two questions nobody can answer: its verdict cannot be sure either way.
    quick = tmp_path / "quick.jsonl"
    quick.write_text("".join(json.dumps({"kind": "generate", "prompt": f"Say the secret code {i}.",
                                         "target": f"zq{i}xj", "match": "exact"}) + "\n" for i in range(2)))
    store = ArtifactStore(stack.data_dir / "artifacts")
    from portllm_engine.kpi import suite_digest

    with session_scope(stack.session_factory) as s:
        services.update_assistant(s, ASSISTANT, actor="test", suite_ref=store.put_file(quick),
                                  suite_digest=suite_digest(quick), full_suite_ref=store.put_file(demo_world.suite),
                                  full_suite_digest=suite_digest(demo_world.suite), min_accuracy=0.6)

    def transplant(key: str):
        run_id = request(stack.session_factory, "v2", key=key, patch_id=stack.ids["patch"], channel="#stages")
        stack.producer().enqueue(TRANSPLANT, run_id)
        run = stack.wait_for(run_id, "succeeded", "failed")
        assert run.status == "succeeded", run.error
        return run

    first = transplant("stages-1")
    quick_score, full_score = first.evaluation("candidate", "quick"), first.evaluation("candidate", "full")
    assert (quick_score.n, quick_score.accuracy) == (2, 0.0) and full_score.n > 2
    assert first.evaluation("candidate") == full_score  # the full suite decided
    stages = first.gate_report["stages"]
    assert [(st["stage"], st["verdict"], st["test"]) for st in stages] == [
        ("quick", "inconclusive", "interval"), ("full", first.rollout.verdict, "interval")]
    assert first.rollout.verdict == "pass" and first.rollout.accuracy == full_score.accuracy

    with session_scope(stack.session_factory) as s:
        services.decide_rollout(s, first.id, approve=True, user="alice")
    second = transplant("stages-2")  # the same candidate again, now against a live one scored on the same items
    [quick_stage, full_stage] = second.gate_report["stages"]
    assert quick_stage["test"] == full_stage["test"] == "paired"
    assert full_stage["verdict"] == "pass" and "On the same" in full_stage["explanation"]
