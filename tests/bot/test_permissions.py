"""Who may do what, where: the rules a command passes before it queues or decides anything."""
from __future__ import annotations

import pytest

from portllm_core.commands.handlers import Context, handle, retune
from portllm_core.flows.runs import RateLimits
from registry import services
from registry.db import session_scope
from registry.models import AuditEvent, Rollout, Run
from tests.bot.conftest import (
    ADMIN,
    APPROVER,
    ASSISTANT,
    CHANNEL,
    OUTSIDER,
    awaiting_run,
    live_run,
)

OTHER_CHANNEL = "COTHER1"


def ctx(world, user=APPROVER, channel=CHANNEL, request_id="req-1", limits=RateLimits(100, 100)):
    return Context(user=user, channel=channel, session_factory=world.session_factory, enqueue=world.queue,
                   request_id=request_id, limits=limits, reply_to={"via": "test"})


def set_assistant(world, **fields):
    with session_scope(world.session_factory) as s:
        services.update_assistant(s, ASSISTANT, actor="ops", **fields)


def rollout_state(world, run_id: int) -> str:
    with world.session_factory() as s:
        return s.query(Rollout).filter_by(run_id=run_id).one().state


def end_as_failed(world, run_id: int) -> None:
    with session_scope(world.session_factory) as s:
        services.claim_run(s, run_id, "test-worker")
        services.finish_run(s, run_id, status="failed", error="out of memory")


def test_retune_needs_an_approver_or_admin(world):
    run_id = awaiting_run(world.session_factory, key="k1", verdict="fail")
    refused = retune(run_id, ctx(world, user=OUTSIDER))
    assert not refused.ok and "not an approver of support-assistant" in refused.text
    assert handle(f"retune {run_id}", ctx(world, user=ADMIN)).ok  # admins may, like approvers
    with world.session_factory() as s:
        assert [r.requested_by for r in s.query(Run).filter_by(kind="retune")] == [ADMIN]


def test_a_failed_retune_can_be_requested_again(world):
    run_id = awaiting_run(world.session_factory, key="k1", verdict="fail")
    first = retune(run_id, ctx(world, request_id="click-1"))
    assert first.ok and "queued" in first.text
    again = retune(run_id, ctx(world, request_id="click-2"))
    assert again.run_id == first.run_id and "already requested" in again.text and "queued" in again.text
    end_as_failed(world, first.run_id)
    second = retune(run_id, ctx(world, request_id="click-3"))
    assert second.ok and second.run_id != first.run_id and "queued" in second.text
    assert [args for _, args in world.messages("gpu")] == [[first.run_id], [second.run_id]]


@pytest.mark.parametrize("command", ["approve {run}", "reject {run} not now", "retune {run}"])
def test_decisions_act_only_in_the_runs_channel(world, command):
    run_id = awaiting_run(world.session_factory, key="k1", verdict="fail" if "retune" in command else "pass")
    reply = handle(command.format(run=run_id), ctx(world, channel=OTHER_CHANNEL))
    assert not reply.ok and reply.view is None  # no card (KPIs, who asked) in the wrong channel
    assert f"Run #{run_id} belongs to #{CHANNEL}" in reply.text and "there" in reply.text
    assert rollout_state(world, run_id) in ("awaiting_approval", "blocked")
    with world.session_factory() as s:
        assert s.query(Run).filter_by(kind="retune").count() == 0


def test_rollback_acts_on_the_channel_it_is_typed_in(world):
    live_run(world.session_factory, key="k1", version="v1")
    newer = live_run(world.session_factory, key="k2", version="v2")
    elsewhere = handle(f"rollback {ASSISTANT}", ctx(world, channel=OTHER_CHANNEL))
    assert not elsewhere.ok
    assert elsewhere.text == f"The live support-assistant belongs to #{CHANNEL}: roll it back there."
    assert rollout_state(world, newer) == "live"
    outsider = handle(f"rollback {ASSISTANT}", ctx(world, user=OUTSIDER, channel=OTHER_CHANNEL))
    assert "not an approver" in outsider.text  # where it is live is no outsider's business
    assert handle(f"rollback {ASSISTANT}", ctx(world)).ok


def test_four_eyes_keeps_a_requester_from_approving_their_own_run(world):
    set_assistant(world, four_eyes=True)
    run_id = awaiting_run(world.session_factory, key="k1")  # requested by APPROVER
    own = handle(f"approve {run_id}", ctx(world, user=APPROVER))
    assert not own.ok and "four-eyes" in own.text and "another approver" in own.text
    assert rollout_state(world, run_id) == "awaiting_approval"
    assert handle(f"reject {run_id}", ctx(world, user=APPROVER)).ok  # withdrawing one's own run is fine
    second = awaiting_run(world.session_factory, key="k2")
    assert handle(f"approve {second}", ctx(world, user="alice")).ok


def test_only_the_listed_requesters_may_request_runs(world):
    set_assistant(world, requesters=["UREQUESTER1"])
    refused = handle(f"patch {ASSISTANT} onto v2", ctx(world, user=OUTSIDER))
    assert not refused.ok and "Only @UREQUESTER1 may request runs of support-assistant" in refused.text
    assert "--add-requester" in refused.text
    assert handle(f"eval {ASSISTANT} on v2", ctx(world, user="UREQUESTER1", request_id="r2")).ok
    assert handle(f"patch {ASSISTANT} onto v2", ctx(world, user=APPROVER, request_id="r3")).ok
    set_assistant(world, requesters=[])  # empty again: everyone in the channel
    assert handle(f"patch {ASSISTANT} onto v2", ctx(world, user=OUTSIDER, request_id="r4")).ok


def test_requests_are_rate_limited_per_person_and_per_assistant(world):
    limits = RateLimits(per_user=2, per_assistant=3)

    def patch(user, request_id):
        return handle(f"patch {ASSISTANT} onto v2", ctx(world, user=user, request_id=request_id, limits=limits))

    assert patch(OUTSIDER, "a1").ok and patch(OUTSIDER, "a2").ok
    assert "already requested" in patch(OUTSIDER, "a2").text  # a redelivery is not another request
    third = patch(OUTSIDER, "a3")
    assert not third.ok and third.text.startswith("Your runs: 2 requested in the last 60 minutes")
    assert "Try again in 60 min (after " in third.text and " UTC)" in third.text
    assert patch("UOTHER1", "b1").ok
    full = patch("UOTHER2", "c1")
    assert not full.ok and full.text.startswith("Runs of support-assistant: 3 requested")
    with world.session_factory() as s:
        assert s.query(Run).count() == 3
    assert len(world.messages("gpu")) == 3


def test_status_in_a_channel_shows_that_channel_only(world):
    live_run(world.session_factory, key="k1", version="v1", channel=CHANNEL)
    private = awaiting_run(world.session_factory, key="k2", version="v2", channel="CPRIVATE1")
    here = handle("status", ctx(world))
    assert [row.channel for row in here.view.live] == [CHANNEL]
    assert private not in [row.run_id for row in here.view.pending]
    assert "CPRIVATE1" not in here.text and "CPRIVATE1" not in str(here.view.to_json())
    there = handle("status", ctx(world, channel="CPRIVATE1"))
    assert [row.run_id for row in there.view.pending] == [private] and not there.view.live


def test_decisions_are_audited_as_who_made_them(world):
    run_id = awaiting_run(world.session_factory, key="k1")
    assert handle(f"approve {run_id}", ctx(world, user="console:alice")).ok  # the console's actor
    with world.session_factory() as s:
        actors = {e.actor for e in s.query(AuditEvent).filter_by(action="rollout.approved")}
    assert actors == {"console:alice"}
