"""Issue 14 on a real worker process and the console: a release reaches every live channel once,
answers are rated (`status --json` moves), and the live guard's card appears after enough 👎."""
from __future__ import annotations

import io
import json

import pytest
from rich.console import Console
from sqlalchemy import func, select
from typer.testing import CliRunner

from portllm_cli.console import ConsoleSession
from portllm_core.errors import BadInput
from portllm_core.flows import catalog
from portllm_core.flows.releases import start_release
from portllm_core.settings import Settings
from portllm_core.views import GuardProposal, find_release, release_view
from portllm_core.workspace import Workspace
from registry import services
from registry.db import session_scope
from registry.models import Run
from tests.admin.tiny_world import new_version_of
from tests.workers.conftest import stack_for
from tests.workers.harness import WorkerProcess
from tests.workers.seed import ASSISTANT

pytestmark = pytest.mark.slow

OTHER = "style-assistant"


@pytest.fixture(scope="module", params=["sqlite"])
def stack(request, tmp_path_factory, demo_world):
    yield from stack_for(request, tmp_path_factory, demo_world, redis_db=12)


@pytest.fixture(scope="module")
def worker(stack):
    worker = WorkerProcess(stack, "release").ready()
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def workspace(stack):
    ws = Workspace(Settings(data_dir=stack.data_dir, database_url=stack.database_url, broker_url=stack.broker_url))
    yield ws
    ws.close()


def make_live(s, assistant: str, version: str, channel: str) -> None:
    """A rollout live in `channel` as if it had been run and approved (its patch is the real one)."""
    patch_id = services.current_patch(s, assistant).id
    run, _ = services.request_run(s, assistant=assistant, version=version, idempotency_key=f"live-{assistant}-"
                                  f"{version}-{channel}", requested_by="alice", channel=channel, patch_id=patch_id)
    services.claim_run(s, run.id, "setup")
    services.finish_run(s, run.id, status="succeeded")
    services.open_rollout(s, run.id, verdict="pass")
    services.decide_rollout(s, run.id, approve=True, user="alice")


@pytest.fixture(scope="module")
def live_in_three_channels(stack):
    """support-assistant live in #support (v2, replacing v1) and #sales (v1); style-assistant in #style (v1)."""
    with session_scope(stack.session_factory) as s:
        support = services.get_assistant(s, ASSISTANT)
        patch = services.get_patch(s, stack.ids["patch"])
        services.create_assistant(s, name=OTHER, family="demo", suite_ref=support.suite_ref,
                                  suite_digest=support.suite_digest, min_accuracy=0.5, approvers=["alice"],
                                  actor="test")
        services.register_patch(s, assistant=OTHER, origin_base="v1", artifact_ref=patch.artifact_ref,
                                artifact_digest=patch.artifact_digest, rank=patch.rank, alpha=patch.alpha,
                                target_modules=patch.target_modules, size_bytes=patch.size_bytes,
                                provenance=patch.provenance, actor="test")
        make_live(s, ASSISTANT, "v1", "#support")
        make_live(s, ASSISTANT, "v2", "#support")
        make_live(s, ASSISTANT, "v1", "#sales")
        make_live(s, OTHER, "v1", "#style")


def run_count(stack) -> int:
    with stack.session_factory() as s:
        return s.scalar(select(func.count(Run.id)))


def test_a_release_queues_one_run_per_live_channel_and_a_second_registration_none(
        stack, worker, workspace, live_in_three_channels, demo_world, tmp_path):
    before = run_count(stack)
    v4 = new_version_of(demo_world.bases["v3"], tmp_path / "v4")
    added = catalog.register_base(workspace, "demo", "v4", str(v4), actor="console:test")
    assert sorted((a, c) for _, a, c in added.release.queued) == sorted([
        (ASSISTANT, "#sales"), (ASSISTANT, "#support"), (OTHER, "#style")])
    assert run_count(stack) == before + 3
    for run_id, _, _ in added.release.queued:
        run = stack.wait_for(run_id, "succeeded", "failed", timeout=300)
        assert run.status == "succeeded", run.error
        assert run.rollout.state in ("awaiting_approval", "blocked")  # approval stays with people

    with pytest.raises(BadInput, match="already registered"):
        catalog.register_base(workspace, "demo", "v4", str(v4), actor="console:test")
    again = start_release(workspace.session_factory, workspace.queue, "demo", "v4", actor="console:test")
    assert not again.created and again.queued == () and run_count(stack) == before + 3

    with stack.session_factory() as s:
        summary = release_view(find_release(s, "demo", "v4")).to_json()
    assert len(summary["runs"]) == 3 and all(r["verdict"] in ("pass", "fail", "inconclusive") for r in summary["runs"])
    released = [e for e in stack.outbox() if e["type"] == "release"]
    assert released and all(f"run #{r['run_id']}" in released[-1]["text"]
                            for r in summary["runs"])


def console(stack, user: str) -> tuple[ConsoleSession, io.StringIO]:
    out = io.StringIO()
    session = ConsoleSession(channel="#support", user=user, settings=Settings(data_dir=stack.data_dir),
                             session_factory=stack.session_factory, enqueue=stack.producer(),
                             out=Console(file=out, width=200), poll_s=0.1, wait_s=180)
    return session, out


def status_json(stack, monkeypatch) -> dict:
    from portllm_cli.main import app

    monkeypatch.setenv("PORTLLM_DATA_DIR", str(stack.data_dir))
    monkeypatch.setenv("PORTLLM_DATABASE_URL", stack.database_url)
    result = CliRunner().invoke(app, ["status", ASSISTANT, "--json"])
    assert result.exit_code == 0, result.output
    return next(row for row in json.loads(result.output)["live"] if row["channel"] == "#support")


def test_a_rating_changes_status_json_and_enough_thumbs_down_bring_the_guards_card(
        stack, worker, workspace, live_in_three_channels, demo_world, monkeypatch):
    catalog.update_assistant(workspace, ASSISTANT, actor="console:test", live_guard="2:0.5")
    assert status_json(stack, monkeypatch)["satisfaction"]["people"] == 0

    bob, bob_out = console(stack, "bob")
    assert bob.run_line(f"ask {ASSISTANT} {demo_world.questions[0]}").ok
    answer = bob.last_answer_id
    assert answer is not None and f"rate {answer} up" in bob_out.getvalue()

    reply = bob.run_line(f"rate {answer} down")
    assert reply.ok and reply.view is None, reply.text
    assert status_json(stack, monkeypatch)["satisfaction"] == {"people": 1, "ratings": 1, "up": 0.0, "rate": 0.0,
                                                               "ci95": pytest.approx([0.0, 0.7935], abs=1e-3)}

    carol, carol_out = console(stack, "carol")
    reply = carol.run_line(f"rate {answer} down")  # the second rating: the guard watches from 2
    assert isinstance(reply.view, GuardProposal) and reply.view.previous_version == "v1"
    assert "live guard" in carol_out.getvalue() and "rollback support-assistant" in carol_out.getvalue()
    assert carol.run_line(f"rate {answer} down").view is None  # proposed once per rollout

    alice, alice_out = console(stack, "alice")
    assert alice.run_line(f"rollback {ASSISTANT}").ok, alice_out.getvalue()
    with stack.session_factory() as s:
        assert services.live_rollout(s, ASSISTANT, "#support").run.target_base.version == "v1"
