"""A newer proposal retires the older ones for the same assistant, channel and target base."""
from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from registry import services as sv
from registry.db import session_scope
from registry.errors import ReplacedByNewerRun, RunNotAwaitingApproval
from registry.models import AuditEvent, Rollout
from tests.registry.helpers import finished_run, proposed, seed


@pytest.fixture
def factory(session_factory):
    with session_scope(session_factory) as s:
        seed(s)
    return session_factory


def _states(s, *rollouts: Rollout) -> list[str]:
    return [s.get(Rollout, r.id, populate_existing=True).state for r in rollouts]


def _retirements(s) -> list[AuditEvent]:
    return sv.audit_events(s, action="rollout.superseded_by_newer")


def test_two_proposals_for_one_base_leave_the_newer_awaiting(factory):
    with session_scope(factory) as s:
        older = proposed(s, "v3")
        newer = proposed(s, "v3")
        assert newer.state == "awaiting_approval"
        assert [r.id for r in newer.retired] == [older.id]
    with session_scope(factory) as s:  # `retired` stays readable after commit, for the caller's cards
        assert _states(s, older, newer) == ["superseded_by_newer", "awaiting_approval"]
        retired = s.get(Rollout, older.id)
        assert retired.newer_rollout_id == newer.id and retired.ended_at is not None
        [event] = _retirements(s)
        assert (event.actor, event.entity_id) == ("system:newer-proposal", older.id)
        assert event.details == {"run_id": older.run_id, "channel": "support", "state_before": "awaiting_approval",
                                 "newer_run_id": newer.run_id, "newer_rollout_id": newer.id}
        reopened = sv.open_rollout(s, newer.run_id, verdict="pass")  # idempotent: the same answer
    assert [r.id for r in reopened.retired] == [older.id]


def test_a_newer_proposal_retires_a_blocked_one_too(factory):
    with session_scope(factory) as s:
        blocked = proposed(s, "v3", verdict="fail")
        newer = proposed(s, "v3", verdict="inconclusive")
        assert _states(s, blocked, newer) == ["superseded_by_newer", "awaiting_approval"]
        assert _retirements(s)[0].details["state_before"] == "blocked"


@pytest.mark.parametrize("other", [{"version": "v2"}, {"channel": "sales"}], ids=["other base", "other channel"])
def test_proposals_for_another_base_or_channel_stay_pending(factory, other):
    with session_scope(factory) as s:
        first = proposed(s, "v3")
        second = proposed(s, other.get("version", "v3"), channel=other.get("channel", "support"))
        assert second.retired == []
        assert _states(s, first, second) == ["awaiting_approval", "awaiting_approval"]
        assert _retirements(s) == []


def test_deciding_a_retired_proposal_names_the_run_to_decide(factory):
    with session_scope(factory) as s:
        older = proposed(s, "v3")
        newer = proposed(s, "v3")
    expected = (f"Run #{older.run_id} was replaced by run #{newer.run_id} for support-assistant on v3 "
                f"in #support: decide run #{newer.run_id}.")
    for approve in (True, False):
        with session_scope(factory) as s:
            with pytest.raises(ReplacedByNewerRun) as exc:
                sv.decide_rollout(s, older.run_id, approve=approve, user="alice", reason="ok")
            assert str(exc.value) == expected
            assert isinstance(exc.value, RunNotAwaitingApproval) and exc.value.current_run_id == newer.run_id
    with session_scope(factory) as s:
        assert _states(s, older) == ["superseded_by_newer"]
        sv.decide_rollout(s, newer.run_id, approve=True, user="alice")
    with session_scope(factory) as s:
        with pytest.raises(ReplacedByNewerRun) as exc:
            sv.decide_rollout(s, older.run_id, approve=True, user="alice")
        assert str(exc.value).endswith(f"in #support; run #{newer.run_id} is live.")


def test_the_refusal_follows_a_chain_of_replacements_to_the_current_run(factory):
    with session_scope(factory) as s:
        first, second, third = (proposed(s, "v3") for _ in range(3))
        assert _states(s, first, second, third) == ["superseded_by_newer", "superseded_by_newer",
                                                     "awaiting_approval"]
        with pytest.raises(ReplacedByNewerRun, match=rf"replaced by run #{third.run_id} .*decide run #{third.run_id}\.$"):
            sv.decide_rollout(s, first.run_id, approve=True, user="alice")


def test_an_older_run_proposing_late_is_retired_at_once(factory):
    # Two runs for one base finish out of order: the newer run's proposal is the one to decide.
    with session_scope(factory) as s:
        older_run = finished_run(s, "v3")
        newer = proposed(s, "v3")
        late = sv.open_rollout(s, older_run.id, verdict="pass")
        assert late.state == "superseded_by_newer" and late.newer_rollout_id == newer.id
        assert _states(s, newer) == ["awaiting_approval"]
        events = sv.audit_events(s, entity_type="rollout", entity_id=late.id)
        assert [e.action for e in events] == ["rollout.opened", "rollout.superseded_by_newer"]
        assert sv.open_rollout(s, older_run.id, verdict="pass").id == late.id  # still idempotent


def test_the_database_refuses_a_retired_rollout_without_its_replacement(factory):
    with session_scope(factory) as s:
        rollout = proposed(s, "v3")
    with pytest.raises(IntegrityError):
        with session_scope(factory) as s:
            s.execute(sa.update(Rollout).where(Rollout.id == rollout.id).values(state="superseded_by_newer"))
