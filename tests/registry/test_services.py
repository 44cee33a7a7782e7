"""Services against a real database: validation, messages for people, audit in the same transaction."""
from __future__ import annotations

import pytest
from sqlalchemy import func, select

from portllm_core.views import lineage_view, status_view
from registry import services as sv
from registry.db import session_scope
from registry.errors import (
    DuplicateError,
    GateFailedNeedsAdmin,
    NotApprover,
    NothingToRollBack,
    RegistryError,
    RunNotAwaitingApproval,
    UnknownAssistant,
    UnknownBase,
    UnknownPatch,
    UnknownRun,
)
from registry.models import RAW_PROMPT_DIGEST, AuditEvent, Run
from tests.registry.helpers import ASSISTANT, finished_run, live, proposed, record_scored, register_patch, seed


@pytest.fixture
def factory(session_factory):
    with session_scope(session_factory) as s:
        seed(s)
    return session_factory


def _audit_count(s, action):
    return s.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.action == action))


def test_unknown_names_suggest_close_matches(factory):
    with session_scope(factory) as s:
        with pytest.raises(UnknownAssistant) as exc:
            sv.get_assistant(s, "suport-assistant")
        assert str(exc.value) == "Unknown assistant 'suport-assistant'. Did you mean: support-assistant?"
        with pytest.raises(UnknownAssistant, match="Known assistants: support-assistant"):
            sv.get_assistant(s, "billing")
        with pytest.raises(UnknownBase, match=r"Did you mean: v2\?"):
            sv.get_base(s, "demo", "v22")
        with pytest.raises(UnknownBase, match="Registered versions: v1, v2, v3"):
            sv.get_base(s, "demo", "latest")
        with pytest.raises(UnknownRun, match="There is no run #404"):
            sv.get_run(s, 404)


def test_names_are_case_and_space_tolerant(factory):
    with session_scope(factory) as s:
        assert sv.get_assistant(s, "  Support-Assistant ").name == ASSISTANT
        assert sv.get_base(s, "DEMO", "V2").version == "v2"
        assert [b.version for b in sv.list_bases(s, "demo")] == ["v1", "v2", "v3"]


def test_duplicates_are_refused(factory):
    with session_scope(factory) as s:
        with pytest.raises(DuplicateError, match="demo/v1 is already registered"):
            sv.register_base(s, family="demo", version="v1", source_ref="x", fingerprint="f",
                             signature={}, tokenizer_fingerprint="t", actor="eng")
        with pytest.raises(DuplicateError, match="already exists"):
            sv.create_assistant(s, name="Support-Assistant", family="demo", suite_ref="s",
                                suite_digest="d", actor="eng")


def test_thresholds_are_validated(factory):
    with session_scope(factory) as s:
        with pytest.raises(RegistryError, match="between 0 and 1"):
            sv.create_assistant(s, name="x", family="demo", suite_ref="s", suite_digest="d",
                                min_accuracy=1.5, actor="eng")
        with pytest.raises(RegistryError, match="Cannot change name"):
            sv.update_assistant(s, ASSISTANT, actor="eng", name="y")


def test_update_assistant_audits_old_and_new(factory):
    with session_scope(factory) as s:
        sv.update_assistant(s, ASSISTANT, actor="eng", approvers=["alice", "zed"], min_accuracy=0.7)
    with session_scope(factory) as s:
        event = sv.audit_events(s, assistant=ASSISTANT, action="assistant.updated")[-1]
        assert event.details["changes"] == {"approvers": [["alice", "bob"], ["alice", "zed"]],
                                            "min_accuracy": [0.6, 0.7]}
        assert sv.is_approver(sv.get_assistant(s, ASSISTANT), "@ZED")


def test_request_run_is_idempotent_on_its_key(factory):
    with session_scope(factory) as s:
        run, created = sv.request_run(s, assistant=ASSISTANT, version="v2", idempotency_key="slack:T1:abc",
                                      requested_by="dave", channel="support")
        assert created and run.status == "queued" and run.kind == "transplant"
        assert run.target_base.version == "v2" and run.patch_id == sv.current_patch(s, ASSISTANT).id
    with session_scope(factory) as s:
        again, created = sv.request_run(s, assistant=ASSISTANT, version="v3", idempotency_key="slack:T1:abc",
                                        requested_by="dave", channel="support")
        assert not created and again.id == run.id and again.target_base.version == "v2"
        assert s.scalar(select(func.count()).select_from(Run)) == 1
        assert _audit_count(s, "run.requested") == 1


def test_a_retune_result_is_the_current_patch_only_once_it_went_live(factory):
    with session_scope(factory) as s:
        original = sv.current_patch(s, ASSISTANT)
        blocked = sv.open_rollout(s, finished_run(s, "v3").id, verdict="fail")
        retuned = register_patch(s, origin_base="v3", parent_patch=original.id)
        retune_run = finished_run(s, "v3", kind="retune", result_patch_id=retuned.id)
        assert blocked.state == "blocked"
        assert sv.current_patch(s, ASSISTANT).id == original.id  # a candidate, not approved yet
        sv.open_rollout(s, retune_run.id, verdict="pass")
        sv.decide_rollout(s, retune_run.id, approve=True, user="alice")
        assert sv.current_patch(s, ASSISTANT).id == retuned.id
        newer = register_patch(s, origin_base="v2")  # an operator's own patch is current at once
        assert sv.current_patch(s, ASSISTANT).id == newer.id


def test_request_run_validates(factory):
    with session_scope(factory) as s:
        with pytest.raises(UnknownBase):
            sv.request_run(s, assistant=ASSISTANT, version="v9", idempotency_key="k", requested_by="d", channel="c")
        with pytest.raises(RegistryError, match="Unknown run kind"):
            sv.request_run(s, assistant=ASSISTANT, version="v2", kind="distill", idempotency_key="k",
                           requested_by="d", channel="c")
        other = sv.create_assistant(s, name="billing", family="demo", suite_ref="s", suite_digest="d", actor="eng")
        with pytest.raises(UnknownPatch, match="billing has no patch yet"):
            sv.request_run(s, assistant=other, version="v2", idempotency_key="k", requested_by="d", channel="c")
        with pytest.raises(UnknownPatch, match="does not belong to billing"):
            sv.request_run(s, assistant="billing", version="v2", idempotency_key="k", requested_by="d",
                           channel="c", patch_id=sv.current_patch(s, ASSISTANT).id)


def test_worker_lifecycle(factory):
    with session_scope(factory) as s:
        run, _ = sv.request_run(s, assistant=ASSISTANT, version="v2", idempotency_key="k",
                                requested_by="dave", channel="support", notify_ref={"channel": "C1", "ts": "1.2"})
    with session_scope(factory) as s:
        claimed = sv.claim_run(s, run.id, "gpu-1")
        assert claimed.status == "running" and claimed.worker == "gpu-1" and claimed.attempts == 1
        assert claimed.started_at.tzinfo is not None
        assert sv.claim_run(s, run.id, "gpu-2") is None  # redelivered task: nothing to do
        assert sv.claim_run(s, 404, "gpu-2") is None
    with session_scope(factory) as s:
        first_beat = sv.get_run(s, run.id).heartbeat_at
        assert sv.heartbeat(s, run.id).heartbeat_at >= first_beat
        progressed = sv.report_progress(s, run.id, 1.7, "evaluating candidate")
        assert progressed.progress == 1.0 and progressed.step == "evaluating candidate"
        sv.set_notify_ref(s, run.id, {"channel": "C1", "ts": "9.9"})
        first = record_scored(s, run.id, subject="candidate", accuracy=0.5).score_id
        # a retried attempt replaces the earlier result for the same subject
        score, _ = sv.record_score(s, sv.ScoreKey("m", "", "d", RAW_PROMPT_DIGEST, "float32", "cpu", 1), run_id=run.id, computed_by="w",
                                   n=10, accuracy=0.7, ci_low=0.4, ci_high=0.9, metrics={}, items_ref=None,
                                   duration_s=1.0, prompt_format="raw")
        sv.record_evaluation(s, run.id, subject="candidate", stage="quick", score_id=score.id, computed=True)
        assert score.id != first
        done = sv.finish_run(s, run.id, status="succeeded", drift_report={"overall": 0.28, "modules": {}})
    with session_scope(factory) as s:
        run = sv.get_run(s, run.id)
        assert (run.status, run.progress, run.notify_ref) == ("succeeded", 1.0, {"channel": "C1", "ts": "9.9"})
        assert [e.accuracy for e in run.evaluations] == [0.7]
        assert run.finished_at >= run.started_at >= run.created_at
        assert run.drift_report["overall"] == 0.28
        actions = [e.action for e in sv.audit_events(s, entity_type="run", entity_id=run.id)]
        assert actions == ["run.requested", "run.started", "run.succeeded"]
    assert done.status == "succeeded"


def test_progress_of_a_cancelled_run_is_ignored_and_visible(factory):
    with session_scope(factory) as s:
        run, _ = sv.request_run(s, assistant=ASSISTANT, version="v2", idempotency_key="k",
                                requested_by="dave", channel="support")
        sv.claim_run(s, run.id, "gpu-1")
    with session_scope(factory) as s:
        with pytest.raises(NotApprover):
            sv.cancel_run(s, run.id, user="mallory")
        sv.cancel_run(s, run.id, user="dave")  # the requester may cancel
    with session_scope(factory) as s:
        seen = sv.report_progress(s, run.id, 0.5, "still going")
        assert seen.status == "cancelled" and seen.step == "cancelled"


def test_sweeper_finds_and_requeues_stale_runs(factory):
    from datetime import timedelta

    from registry.models import utcnow

    with session_scope(factory) as s:
        queued, _ = sv.request_run(s, assistant=ASSISTANT, version="v2", idempotency_key="a",
                                   requested_by="d", channel="c")
        running, _ = sv.request_run(s, assistant=ASSISTANT, version="v3", idempotency_key="b",
                                    requested_by="d", channel="c")
        sv.claim_run(s, running.id, "gpu-1")
    later = utcnow() + timedelta(minutes=10)
    with session_scope(factory) as s:
        stale = sv.stale_runs(s, queued_before=later, heartbeat_before=later)
        assert [r.id for r in stale["queued"]] == [queued.id]
        assert [r.id for r in stale["running"]] == [running.id]
        assert sv.stale_runs(s, queued_before=later - timedelta(hours=1),
                             heartbeat_before=later - timedelta(hours=1)) == {"queued": [], "running": []}
        requeued = sv.requeue_run(s, running.id, reason="worker gpu-1 vanished")
        assert requeued.status == "queued" and requeued.worker is None
    with session_scope(factory) as s:
        assert sv.claim_run(s, running.id, "gpu-2").attempts == 2


def test_audit_event_shares_the_services_transaction(factory):
    with pytest.raises(RuntimeError):
        with session_scope(factory) as s:
            sv.request_run(s, assistant=ASSISTANT, version="v2", idempotency_key="k",
                           requested_by="dave", channel="support")
            raise RuntimeError("the caller fails before commit")
    with session_scope(factory) as s:
        assert s.scalar(select(func.count()).select_from(Run)) == 0
        assert _audit_count(s, "run.requested") == 0


def test_approve_supersedes_and_records_the_decision(factory):
    with session_scope(factory) as s:
        first = live(s, "v2")
        assert first.state == "live" and first.replaced_rollout_id is None
        second = proposed(s, "v3")
        assert second.state == "awaiting_approval" and second.live_accuracy == first.accuracy
    with session_scope(factory) as s:
        with pytest.raises(NotApprover) as exc:
            sv.decide_rollout(s, second.run_id, approve=True, user="mallory")
        assert str(exc.value) == "You are not an approver of support-assistant (approvers: @alice, @bob)."
    with session_scope(factory) as s:
        approved = sv.decide_rollout(s, second.run_id, approve=True, user="<@BOB>")
        assert approved.state == "live" and approved.replaced_rollout_id == first.id
        assert approved.decided_by == "<@BOB>" and approved.decided_at is not None
    with session_scope(factory) as s:
        assert sv.live_rollout(s, ASSISTANT, "support").id == second.id
        assert s.get(type(first), first.id).state == "superseded"
        with pytest.raises(RunNotAwaitingApproval) as exc:
            sv.decide_rollout(s, second.run_id, approve=False, user="alice")
        assert str(exc.value) == f"Run #{second.run_id} is not awaiting approval (it is live)."


def test_rollouts_live_per_channel(factory):
    with session_scope(factory) as s:
        support = live(s, "v2", channel="support")
        sales = live(s, "v3", channel="sales")
        assert support.state == sales.state == "live" and sales.replaced_rollout_id is None
        assert sv.live_rollout(s, ASSISTANT, "support").id == support.id
        assert sv.live_rollout(s, ASSISTANT, "marketing") is None


def test_failed_gate_needs_an_admin_with_a_reason(factory):
    with session_scope(factory) as s:
        blocked = proposed(s, "v3", verdict="fail")
        assert blocked.state == "blocked"
    for user, reason in (("alice", "looks fine"), ("carol", None), ("carol", "   ")):
        with session_scope(factory) as s:
            with pytest.raises(GateFailedNeedsAdmin, match="only an admin of support-assistant .admins: @carol."):
                sv.decide_rollout(s, blocked.run_id, approve=True, user=user, reason=reason)
    with session_scope(factory) as s:
        approved = sv.decide_rollout(s, blocked.run_id, approve=True, user="carol",
                                     reason="v3 misses 2 obsolete questions; accepted")
        assert approved.state == "live" and approved.reason.startswith("v3 misses")
        event = sv.audit_events(s, action="rollout.approved")[-1]
        assert event.actor == "carol" and event.details["state_before"] == "blocked"


def test_eval_runs_cannot_be_rolled_out(factory):
    with session_scope(factory) as s:
        run = finished_run(s, "v2", kind="eval")
        with pytest.raises(RegistryError, match="eval-only run"):
            sv.open_rollout(s, run.id, verdict="pass")
        with pytest.raises(RunNotAwaitingApproval, match=r"\(it is an eval-only run\)"):
            sv.decide_rollout(s, run.id, approve=True, user="alice")


def test_open_rollout_is_idempotent(factory):
    with session_scope(factory) as s:
        rollout = proposed(s, "v2")
        assert sv.open_rollout(s, rollout.run_id, verdict="fail").id == rollout.id
        assert _audit_count(s, "rollout.opened") == 1


def test_rollback_restores_the_previous_live_rollout(factory):
    with session_scope(factory) as s:
        with pytest.raises(NothingToRollBack) as exc:
            sv.rollback(s, ASSISTANT, "support", "alice")
        assert str(exc.value) == "Nothing to roll back for support-assistant in #support."
        first = live(s, "v2")
        with pytest.raises(NothingToRollBack):
            sv.rollback(s, ASSISTANT, "support", "alice")
        second = live(s, "v3")
    with session_scope(factory) as s:
        with pytest.raises(NotApprover):
            sv.rollback(s, ASSISTANT, "support", "mallory")
        restored = sv.rollback(s, ASSISTANT, "support", "bob", reason="v3 answers worse")
        assert restored.id == first.id and restored.state == "live"
        assert s.get(type(second), second.id).state == "rolled_back"
    with session_scope(factory) as s:
        assert sv.live_rollout(s, ASSISTANT, "support").id == first.id
        with pytest.raises(NothingToRollBack):
            sv.rollback(s, ASSISTANT, "support", "alice")


def test_status(factory):
    with session_scope(factory) as s:
        live(s, "v2")
        waiting = proposed(s, "v3")
        queued, _ = sv.request_run(s, assistant=ASSISTANT, version="v3", idempotency_key="q",
                                   requested_by="dave", channel="support")
    with session_scope(factory) as s:
        view = status_view(s, ASSISTANT).to_json()
        assert view["assistant"] == ASSISTANT
        assert [(r["channel"], r["base"], r["approved_by"]) for r in view["live"]] == [
            ("support", "demo/v2", "alice")]
        assert [(r["run_id"], r["state"]) for r in view["awaiting_approval"]] == [
            (waiting.run_id, "awaiting_approval")]
        assert [(r["run_id"], r["status"]) for r in view["runs"]] == [(queued.id, "queued")]
        assert status_view(s).to_json() == {**view, "assistant": None}


def test_retune_needs_registered_training_data(factory):
    with session_scope(factory) as s:
        bare = sv.register_patch(s, assistant=ASSISTANT, origin_base="demo/v1", artifact_ref="sha256:" + "3" * 64,
                                 artifact_digest="3" * 64, rank=4, alpha=8, target_modules=["q_proj"],
                                 size_bytes=1, provenance={}, actor="eng")
        with pytest.raises(RegistryError, match="no registered training data"):
            sv.request_run(s, assistant=ASSISTANT, version="v2", kind="retune", idempotency_key="r",
                           requested_by="d", channel="c", patch_id=bare.id)
        ok = register_patch(s, origin_base="v1")
        run, _ = sv.request_run(s, assistant=ASSISTANT, version="v2", kind="retune", idempotency_key="r",
                                requested_by="d", channel="c", patch_id=ok.id)
        assert run.kind == "retune"
