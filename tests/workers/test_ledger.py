"""The evaluation ledger on a real worker process: a release to three channels computes each
distinct score once, and a run while something is live always compares with live on the same
items (the false pass: the full stage used to fall back to the floor when live had no full score)."""
from __future__ import annotations

import json
import time

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from portllm_core.blocks import run_card_blocks
from portllm_core.flows.releases import start_release
from portllm_core.gate import interval_gate
from portllm_core.settings import Settings
from portllm_core.views import run_card
from portllm_core.workspace import Workspace
from registry import services
from registry.db import session_scope
from registry.models import Evaluation, Run, Score
from tests.bot.slack_http import free_port
from tests.fixtures.metrics import scrape
from tests.workers.conftest import stack_for
from tests.workers.harness import WorkerProcess
from tests.workers.seed import ASSISTANT, request
from tests.workers.test_release_and_ratings import make_live

pytestmark = pytest.mark.slow

CHANNELS = ("#a", "#b", "#c")
GUARDED = "guarded-assistant"  # a quick suite and a full one, for the false-pass case


@pytest.fixture(scope="module", params=["sqlite"])
def stack(request, tmp_path_factory, demo_world):
    yield from stack_for(request, tmp_path_factory, demo_world, redis_db=13)


@pytest.fixture(scope="module")
def worker(stack):
    port = free_port()
    worker = WorkerProcess(stack, "ledger", PORTLLM_METRICS_PORT=str(port)).ready()
    worker.metrics_url = f"http://127.0.0.1:{port}/metrics"
    yield worker
    worker.stop()


def computed_metric(worker) -> float:
    return scrape(worker.metrics_url).value("portllm_evaluations_computed_total", assistant=GUARDED)


@pytest.fixture(scope="module")
def workspace(stack):
    ws = Workspace(Settings(data_dir=stack.data_dir, database_url=stack.database_url, broker_url=stack.broker_url))
    yield ws
    ws.close()


def evaluations_of(stack, run_ids) -> list[tuple[int, str, str, int, bool]]:
    with stack.session_factory() as s:
        rows = s.scalars(select(Evaluation).where(Evaluation.run_id.in_(run_ids)).order_by(Evaluation.id))
        return [(e.run_id, e.subject, e.stage, e.score_id, e.computed) for e in rows]


def run_show_json(stack, monkeypatch, run_id: int) -> dict:
    from portllm_cli.main import app

    monkeypatch.setenv("PORTLLM_DATA_DIR", str(stack.data_dir))
    monkeypatch.setenv("PORTLLM_DATABASE_URL", stack.database_url)
    result = CliRunner().invoke(app, ["run", "show", str(run_id), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_a_release_to_three_channels_computes_each_distinct_score_once(stack, worker, workspace, monkeypatch):
    with session_scope(stack.session_factory) as s:
        for channel in CHANNELS:
            make_live(s, ASSISTANT, "v1", channel)
        scores_before = len(services.list_scores(s))
    started = start_release(workspace.session_factory, workspace.queue, "demo", "v2", actor="console:test")
    run_ids = sorted(run_id for run_id, _, _ in started.queued)
    assert len(run_ids) == 3
    for run_id in run_ids:
        run = stack.wait_for(run_id, "succeeded", "failed", timeout=300)
        assert run.status == "succeeded", run.error

    used = evaluations_of(stack, run_ids)
    # Each run used three scores: the candidate, the base alone, and live (v1 + patch) on the quick suite.
    assert sorted((run, subject) for run, subject, *_ in used) == sorted(
        (run, subject) for run in run_ids for subject in ("candidate", "target_base", "live"))
    computed = [(subject, score) for _, subject, _, score, was_computed in used if was_computed]
    assert sorted(subject for subject, _ in computed) == ["candidate", "live", "target_base"]  # once each
    by_subject = {subject: {score for _, s, _, score, _ in used if s == subject} for subject in ("candidate", "live")}
    assert all(len(scores) == 1 for scores in by_subject.values())  # every run read the same entries
    with stack.session_factory() as s:
        assert len(services.list_scores(s)) == scores_before + 3  # one ledger entry per distinct key

    first, *later = run_ids
    assert all(e["reused_from_run"] is None for e in run_show_json(stack, monkeypatch, first)["evaluations"])
    for run_id in later:
        assert {e["reused_from_run"] for e in run_show_json(stack, monkeypatch, run_id)["evaluations"]} == {first}
        with stack.session_factory() as s:
            card = run_card(s, run_id)
        assert card.reused_from_runs == (first,)
        assert f"scores reused from run #{first}" in json.dumps(run_card_blocks(card))  # the card says it in words
        assert any(row.subject.startswith("live") and row.n for row in card.kpi)  # live on the same items


@pytest.fixture(scope="module")
def guarded(stack, demo_world, tmp_path_factory):
    """An assistant live in #guarded on v1 (the patch's own base: every item right), with no score
    of live anywhere in the ledger. Its full suite is the demo suite, on which v2 + patch drops
    about 20 points; its quick suite is 9 items v2 + patch gets right and 1 it misses: a 10-point
    drop on 10 items, too few to be sure of a regression, so the quick stage is inconclusive."""
    from portllm_engine.kpi import evaluate, load_suite, suite_digest
    from portllm_engine.transplant import PatchServer

    server = PatchServer(demo_world.bases["v2"], device="cpu")
    server.attach("patch", demo_world.patch)
    with server.use("patch") as model:
        correct = [item["correct"] for item in evaluate(model, server.tokenizer, load_suite(demo_world.suite)).items]
    lines = demo_world.suite.read_text().splitlines(keepends=True)
    right, wrong = [i for i, ok in enumerate(correct) if ok], [i for i, ok in enumerate(correct) if not ok]
    folder = tmp_path_factory.mktemp("suites")
    quick, full = folder / "quick.jsonl", folder / "full.jsonl"
    quick.write_text("".join(lines[i] for i in sorted(right[:9] + wrong[:1])))
    full.write_text("".join(reversed(lines)))  # its own digest: nothing in the ledger has scored it

    store = Workspace(Settings(data_dir=stack.data_dir)).store
    with session_scope(stack.session_factory) as s:
        patch = services.get_patch(s, stack.ids["patch"])
        services.create_assistant(s, name=GUARDED, family="demo", suite_ref=store.put_file(quick),
                                  suite_digest=suite_digest(quick), full_suite_ref=store.put_file(full),
                                  full_suite_digest=suite_digest(full), min_accuracy=0.5,
                                  max_regression=0.05, approvers=["alice"], actor="test")
        services.register_patch(s, assistant=GUARDED, origin_base="v1", artifact_ref=patch.artifact_ref,
                                artifact_digest=patch.artifact_digest, rank=patch.rank, alpha=patch.alpha,
                                target_modules=patch.target_modules, size_bytes=patch.size_bytes,
                                provenance=patch.provenance, actor="test")
        make_live(s, GUARDED, "v1", "#guarded")
    return GUARDED


def test_the_full_stage_compares_with_live_even_when_the_ledger_lacks_live_there(stack, worker, guarded):
    with session_scope(stack.session_factory) as s:
        run, _ = services.request_run(s, assistant=guarded, version="v2", kind="transplant", idempotency_key="fp-1",
                                      requested_by="alice", channel="#guarded")
        run_id = run.id
        assert s.scalar(select(Score).where(Score.suite_digest == run.assistant.full_suite_digest)) is None
    stack.producer().enqueue("portllm.transplant_and_evaluate", run_id)
    run = stack.wait_for(run_id, "succeeded", "failed", timeout=300)
    assert run.status == "succeeded", run.error

    stages = run.gate_report["stages"]
    assert [stage["stage"] for stage in stages] == ["quick", "full"], stages  # the quick stage could not decide
    assert all(stage["test"] == "paired" for stage in stages)  # item by item against live, at both stages
    assert run.rollout.verdict in ("fail", "inconclusive")
    used = {(e.subject, e.stage): e for e in run.evaluations}
    live_full, candidate_full = used["live", "full"], used["candidate", "full"]
    assert live_full.computed and live_full.n == candidate_full.n  # live scored by this run, on the same items
    # The old floor-only fallback would have passed this candidate: the false pass.
    assert interval_gate(candidate_full.accuracy, (candidate_full.ci_low, candidate_full.ci_high), None,
                         0.5, 0.05).verdict == "pass"
    assert candidate_full.accuracy < live_full.accuracy - 0.05


def test_going_live_scores_live_on_the_full_suite_in_the_background(stack, worker, workspace, guarded):
    """Approving puts live's full-suite score in the ledger, so the next release finds it ready."""
    from portllm_core.flows.runs import decide

    with session_scope(stack.session_factory) as s:
        run, _ = services.request_run(s, assistant=guarded, version="v1", kind="transplant", idempotency_key="bg-1",
                                      requested_by="bob", channel="#bg")
        run_id, full_digest = run.id, run.assistant.full_suite_digest
    stack.producer().enqueue("portllm.transplant_and_evaluate", run_id)
    run = stack.wait_for(run_id, "succeeded", "failed", timeout=300)
    assert run.status == "succeeded" and run.rollout.verdict == "pass", run.gate_report
    with session_scope(stack.session_factory) as s:  # whatever earlier tests scored on it is forgotten
        services.forget_scores(s, actor="test", suite_digest=full_digest)

    computed_before = computed_metric(worker)
    decide(workspace.session_factory, workspace.queue, run_id, approve=True, user="alice", channel="#bg")
    deadline = time.monotonic() + 240
    while True:
        with stack.session_factory() as s:
            full = s.scalar(select(Score).where(Score.suite_digest == full_digest, Score.forgotten_at.is_(None)))
        if full is not None and computed_metric(worker) == computed_before + 1:  # and the metrics count it
            break
        assert time.monotonic() < deadline, "live was not scored (and counted) on the full suite after it went live"
        time.sleep(0.5)
    assert full.run_id == run_id  # entered under the live rollout's run, whose candidate it scores
    with stack.session_factory() as s:
        assert full.patch_digest == s.get(Run, run_id).candidate_patch.artifact_digest


def test_operators_list_the_ledger_and_forget_a_base(stack, worker, monkeypatch):
    from portllm_cli.main import app

    monkeypatch.setenv("PORTLLM_DATA_DIR", str(stack.data_dir))
    monkeypatch.setenv("PORTLLM_DATABASE_URL", stack.database_url)
    runner = CliRunner()

    def listed() -> list[dict]:
        result = runner.invoke(app, ["ledger", "list", "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    with stack.session_factory() as s:
        v2 = services.get_base(s, "demo", "v2").fingerprint
    before = listed()
    on_v2 = [row for row in before if row["model_fingerprint"] == v2]
    assert on_v2 and {row["patch_digest"] is None for row in on_v2} == {True, False}  # alone and patched
    assert all(row["run_id"] and row["scorer_version"] >= 1 and row["device_kind"] == "cpu" for row in before)

    result = runner.invoke(app, ["ledger", "forget", "--base", "demo", "v2"])
    assert result.exit_code == 0, result.output
    assert f"Forgot {len(on_v2)} ledger score" in result.output
    assert [row["id"] for row in listed()] == [row["id"] for row in before if row["model_fingerprint"] != v2]

    refused = runner.invoke(app, ["ledger", "forget"])
    assert refused.exit_code == 2 and "exactly one of --base FAMILY VERSION or --suite FILE" in refused.output
