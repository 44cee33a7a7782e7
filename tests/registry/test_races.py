"""Concurrent deciders: the database picks exactly one winner.

Written for PostgreSQL (row locks, READ COMMITTED); the same races also run on the embedded
SQLite default, where writers queue on the database lock.
"""
from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from sqlalchemy import func, select

from registry import services as sv
from registry.db import session_scope
from registry.errors import ConcurrentUpdate, ReplacedByNewerRun, RunNotAwaitingApproval
from registry.models import RAW_PROMPT_DIGEST, AuditEvent, Rollout, Run, Score
from tests.registry.helpers import ASSISTANT, finished_run, live, proposed, seed

THREADS = 10


def _race(session_factory, act: Callable[[object, int], object]) -> list[object]:
    """Run `act(session, i)` in THREADS threads released at once, each in its own transaction."""
    barrier = threading.Barrier(THREADS)
    outcomes: list[object] = [None] * THREADS

    def worker(i: int) -> None:
        barrier.wait()
        try:
            with session_scope(session_factory) as s:
                outcomes[i] = act(s, i)
        except Exception as exc:  # noqa: BLE001 - outcomes are asserted by the test
            outcomes[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return outcomes


def _count(s, model, *where):
    return s.scalar(select(func.count()).select_from(model).where(*where))


def test_ten_approvals_of_one_rollout_have_one_winner(session_factory):
    with session_scope(session_factory) as s:
        seed(s)
        previous = live(s, "v2")
        candidate = proposed(s, "v3")
    approvers = ["alice", "bob", "carol"]
    outcomes = _race(session_factory, lambda s, i: sv.decide_rollout(
        s, candidate.run_id, approve=True, user=approvers[i % 3]).state)

    assert outcomes.count("live") == 1, outcomes
    losers = [o for o in outcomes if o != "live"]
    assert all(isinstance(o, RunNotAwaitingApproval) for o in losers), losers
    assert {str(o) for o in losers} == {f"Run #{candidate.run_id} is not awaiting approval (it is live)."}
    with session_scope(session_factory) as s:
        assert _count(s, Rollout, Rollout.state == "live") == 1
        assert sv.live_rollout(s, ASSISTANT, "support").id == candidate.id
        assert s.get(Rollout, previous.id).state == "superseded"
        assert _count(s, AuditEvent, AuditEvent.action == "rollout.approved",
                      AuditEvent.entity_id == candidate.id) == 1
        assert _count(s, AuditEvent, AuditEvent.action == "rollout.superseded") == 1


def test_ten_candidates_approved_at_once_leave_one_live(session_factory):
    # Each on its own base version: a newer proposal for the same base retires the older one.
    versions = [f"v{i}" for i in range(1, THREADS + 2)]
    with session_scope(session_factory) as s:
        seed(s, versions=tuple(versions))
        live(s, "v1")
        candidates = [proposed(s, version).run_id for version in versions[1:]]
    outcomes = _race(session_factory, lambda s, i: sv.decide_rollout(
        s, candidates[i], approve=True, user="alice").state)

    winners = outcomes.count("live")
    assert winners >= 1
    assert all(o == "live" or isinstance(o, ConcurrentUpdate) for o in outcomes), outcomes
    with session_scope(session_factory) as s:
        assert _count(s, Rollout, Rollout.state == "live") == 1
        assert _count(s, AuditEvent, AuditEvent.action == "rollout.approved") == 1 + winners
        # every approval superseded exactly the one live before it: a single chain
        assert _count(s, Rollout, Rollout.state == "superseded") == winners


def test_ten_proposals_for_one_base_opened_at_once_leave_the_newest_pending(session_factory):
    with session_scope(session_factory) as s:
        seed(s)
        runs = [finished_run(s, "v3").id for _ in range(THREADS)]
    outcomes = _race(session_factory, lambda s, i: sv.open_rollout(s, runs[i], verdict="pass").state)

    assert all(isinstance(o, str) for o in outcomes), outcomes
    with session_scope(session_factory) as s:
        pending = s.scalars(select(Rollout).where(Rollout.state == "awaiting_approval")).all()
        assert [r.run_id for r in pending] == [max(runs)]
        assert _count(s, Rollout, Rollout.state == "superseded_by_newer") == THREADS - 1
        assert _count(s, AuditEvent, AuditEvent.action == "rollout.superseded_by_newer") == THREADS - 1
        with pytest.raises(ReplacedByNewerRun, match=rf"decide run #{max(runs)}\.$"):
            sv.decide_rollout(s, min(runs), approve=True, user="alice")


def test_ten_requests_with_one_key_make_one_run(session_factory):
    with session_scope(session_factory) as s:
        seed(s)
    outcomes = _race(session_factory, lambda s, i: (lambda run, created: (run.id, created))(
        *sv.request_run(s, assistant=ASSISTANT, version="v2", idempotency_key="slack:T1:trigger-42",
                        requested_by=f"user{i}", channel="support")))

    assert all(isinstance(o, tuple) for o in outcomes), outcomes
    assert len({run_id for run_id, _ in outcomes}) == 1
    assert sum(created for _, created in outcomes) == 1
    with session_scope(session_factory) as s:
        assert _count(s, Run) == 1
        assert _count(s, AuditEvent, AuditEvent.action == "run.requested") == 1


def test_ten_workers_claiming_one_run_have_one_winner(session_factory):
    with session_scope(session_factory) as s:
        seed(s)
        run, _ = sv.request_run(s, assistant=ASSISTANT, version="v2", idempotency_key="k",
                                requested_by="dave", channel="support")
    outcomes = _race(session_factory, lambda s, i: getattr(sv.claim_run(s, run.id, f"gpu-{i}"), "worker", None))

    winners = [o for o in outcomes if o is not None]
    assert len(winners) == 1 and not any(isinstance(o, Exception) for o in outcomes), outcomes
    with session_scope(session_factory) as s:
        assert s.get(Run, run.id).worker == winners[0] and s.get(Run, run.id).attempts == 1


def test_two_requests_at_once_cannot_both_take_the_last_free_run(session_factory, monkeypatch):
    """The quota is counted under the assistant's lock: with one run left in the hour, two requests
    arriving together give one run and one refusal that says when to try again. (The gap between
    counting and recording is widened so that, unlocked, both would count zero.)"""
    import time

    from portllm_core.flows.runs import RateLimits, request_run

    with session_scope(session_factory) as s:
        seed(s)
    recorded = sv.request_run

    def slow_record(*args, **kwargs):
        time.sleep(0.5)
        return recorded(*args, **kwargs)

    monkeypatch.setattr(sv, "request_run", slow_record)
    barrier = threading.Barrier(2)
    outcomes: list[object] = [None, None]

    def ask(i: int) -> None:
        barrier.wait()
        try:
            outcomes[i] = request_run(session_factory, lambda *a: None, kind="transplant", assistant=ASSISTANT,
                                      version="v2", user=f"user-{i}", channel="support",
                                      idempotency_key=f"race-{i}", limits=RateLimits(per_user=5, per_assistant=1))
        except Exception as exc:  # noqa: BLE001 - asserted below
            outcomes[i] = exc

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    refused = [o for o in outcomes if isinstance(o, Exception)]
    assert len(refused) == 1 and "try again" in str(refused[0]).lower(), outcomes
    with session_scope(session_factory) as s:
        assert _count(s, Run) == 1


def test_ten_runs_recording_the_same_missing_score_keep_one_ledger_entry(session_factory):
    """The evaluation ledger's unique key: the first recording wins, every other one reads it."""
    with session_scope(session_factory) as s:
        seed(s)
        run_ids = [finished_run(s, "v2").id for _ in range(THREADS)]
    key = sv.ScoreKey("f" * 64, "1" * 64, "5" * 64, RAW_PROMPT_DIGEST, "float32", "cpu", 1)

    def record(s, i: int):
        score, inserted = sv.record_score(s, key, run_id=run_ids[i], computed_by=f"worker-{i}", n=10,
                                          accuracy=i / 10, ci_low=0.0, ci_high=1.0, metrics={}, items_ref=None,
                                          duration_s=1.0, prompt_format="raw")
        return score.id, score.run_id, inserted

    outcomes = _race(session_factory, record)
    assert all(isinstance(o, tuple) for o in outcomes), outcomes
    assert [inserted for *_, inserted in outcomes].count(True) == 1
    assert len({(score, run) for score, run, _ in outcomes}) == 1  # every racer uses the winner's entry
    with session_scope(session_factory) as s:
        assert _count(s, Score) == 1 + 2 * THREADS  # the seeded runs' own scores, and one entry for the key
        assert sv.find_score(s, key).run_id == outcomes[0][1]


def test_ten_requests_by_one_person_at_once_across_assistants_and_channels_keep_the_personal_quota(
        session_factory, monkeypatch):
    """Issue 20: the per-person limit holds exactly when one person's requests for two assistants in
    two channels arrive together (the assistants' locks alone let both assistants' requests count
    the same free slots). The gap between counting and recording is widened, as above."""
    import time

    from portllm_core.flows.runs import RateLimits, request_run
    from registry.errors import RateLimited

    with session_scope(session_factory) as s:
        seed(s)
        sv.create_assistant(s, name="other-assistant", family="demo", suite_ref="sha256:" + "5" * 64,
                            suite_digest="5" * 64, min_accuracy=0.6, max_regression=0.05, approvers=["alice"],
                            admins=[], actor="eng")
        sv.register_patch(s, assistant="other-assistant", origin_base="v1", artifact_ref="sha256:" + "1" * 64,
                          artifact_digest="1" * 64, rank=8, alpha=16.0, target_modules=["q_proj"],
                          size_bytes=1, provenance={}, actor="eng")
    recorded = sv.request_run

    def slow_record(*args, **kwargs):
        time.sleep(0.3)
        return recorded(*args, **kwargs)

    monkeypatch.setattr(sv, "request_run", slow_record)
    targets = [(ASSISTANT, "support"), ("other-assistant", "sales")]
    outcomes = _race(session_factory, lambda s, i: request_run(
        session_factory, lambda *a: None, kind="eval", assistant=targets[i % 2][0], version="v2", user="mallory",
        channel=targets[i % 2][1], idempotency_key=f"quota-{i}", limits=RateLimits(per_user=2, per_assistant=100)))

    granted = [o for o in outcomes if not isinstance(o, Exception)]
    refused = [o for o in outcomes if isinstance(o, Exception)]
    assert len(granted) == 2 and all(isinstance(o, RateLimited) for o in refused), outcomes
    assert all(str(o).startswith("Your runs: 2 requested in the last 60 minutes") for o in refused)
    with session_scope(session_factory) as s:
        assert _count(s, Run, Run.requested_by == "mallory") == 2
