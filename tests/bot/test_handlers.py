from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portllm_core.commands.handlers import Context, handle, retune
from portllm_core.flows.runs import RateLimits
from portllm_core.views import LineageView, RunCard, StatusView, Table
from registry.models import Rollout, Run
from tests.bot.conftest import (
    ADMIN,
    APPROVER,
    ASSISTANT,
    CHANNEL,
    OUTSIDER,
    awaiting_run,
    live_run,
)


def ctx(world, user=APPROVER, channel=CHANNEL, request_id="req-1", limits=RateLimits(100, 100)):
    return Context(user=user, channel=channel, session_factory=world.session_factory, enqueue=world.queue,
                   request_id=request_id, limits=limits, reply_to={"via": "test"})


def test_patch_creates_a_run_and_enqueues_it_by_name(world):
    reply = handle("Patch Support-Assistant onto V2", ctx(world))
    assert reply.ok, reply.text
    assert reply.text.startswith(f"Run #{reply.run_id} queued")
    with world.session_factory() as s:
        run = s.get(Run, reply.run_id)
        assert (run.kind, run.status, run.target_base.version, run.channel) == ("transplant", "queued", "v2", CHANNEL)
        assert run.idempotency_key == "req-1"
    assert world.messages("gpu") == [("portllm.transplant_and_evaluate", [reply.run_id])]


def test_the_same_request_twice_queues_one_run(world):
    first = handle("patch support-assistant onto v2", ctx(world))
    again = handle("patch support-assistant onto v2", ctx(world))
    assert again.ok and again.run_id == first.run_id and "already requested" in again.text
    assert len(world.messages("gpu")) == 1


def test_eval_enqueues_eval_only(world):
    reply = handle("eval support-assistant on v3", ctx(world))
    assert reply.ok
    with world.session_factory() as s:
        assert s.get(Run, reply.run_id).kind == "eval"
    assert world.messages("gpu") == [("portllm.eval_only", [reply.run_id])]


BAD_NAMES = [
    ("patch suport-assistant onto v2", "Did you mean: support-assistant"),
    ("patch support-assistant onto v4", "Unknown base version 'v4'"),
    ("patch support-assistant onto V22", "Did you mean: v2"),
    ("patch support-assistant onto w2", "Registered versions: v1, v2, v3"),
    ("status nobody-here", "Unknown assistant 'nobody-here'"),
    ("bases dmeo", "Did you mean: demo"),
    ("approve 999", "There is no run #999"),
    ("pacth support-assistant onto v2", "Try `patch <assistant> onto <version>`"),
]


def test_bad_names_are_refused_with_the_closest_ones(world):
    for text, expected in BAD_NAMES:  # one database for the table: setting one up is the slow part
        reply = handle(text, ctx(world))
        assert not reply.ok, text
        assert expected in reply.text, (text, reply.text)
    assert world.messages("gpu") == []


def test_approve_checks_the_approver_and_goes_live_once(world):
    run_id = awaiting_run(world.session_factory, key="k1")
    refused = handle(f"approve #{run_id}", ctx(world, user=OUTSIDER))
    assert not refused.ok and "not an approver" in refused.text
    approved = handle(f"approve {run_id}", ctx(world, user=APPROVER))
    assert approved.ok and approved.in_channel
    assert isinstance(approved.view, RunCard) and approved.view.rollout_state == "live"
    # Warm before live: the serve queue loads its base (or starts its engine) before anyone asks.
    assert world.messages("serve") == [("portllm.warm_answers", [ASSISTANT, CHANNEL])]
    twice = handle(f"approve {run_id}", ctx(world, user=APPROVER))
    assert not twice.ok and "not awaiting approval" in twice.text
    assert world.messages("serve") == []  # a refused approval warms nothing


def test_reject_with_reason(world):
    run_id = awaiting_run(world.session_factory, key="k1")
    reply = handle(f"reject {run_id} answers drifted", ctx(world))
    assert reply.ok and reply.view.rollout_state == "rejected"
    assert reply.view.decision_reason == "answers drifted"


def test_failed_gate_offers_a_retune_and_needs_an_admin_with_a_reason(world):
    passed = awaiting_run(world.session_factory, key="k0", version="v3")
    run_id = awaiting_run(world.session_factory, key="k1", verdict="fail")
    assert not retune(passed, ctx(world)).ok
    first, again = retune(run_id, ctx(world, request_id="click-1")), retune(run_id, ctx(world, request_id="click-2"))
    assert first.ok and again.run_id == first.run_id and "already requested" in again.text
    with world.session_factory() as s:
        assert s.get(Run, first.run_id).kind == "retune"
    assert world.messages("gpu") == [("portllm.retune", [first.run_id])]
    typed = handle(f"retune #{run_id}", ctx(world, request_id="typed"))  # the console's twin of the button
    assert typed.ok and typed.run_id == first.run_id
    assert "only an admin" in handle(f"approve {run_id}", ctx(world, user=APPROVER)).text
    reply = handle(f"approve {run_id} known flaky items", ctx(world, user=ADMIN))
    assert reply.ok and reply.view.rollout_state == "live"


def test_rollback_restores_the_previous_live(world):
    first = live_run(world.session_factory, key="k1", version="v1")
    live_run(world.session_factory, key="k2", version="v2")
    reply = handle(f"rollback {ASSISTANT}", ctx(world))
    assert reply.ok, reply.text
    assert f"run #{first}" in reply.text
    assert world.messages("serve") == [("portllm.warm_answers", [ASSISTANT, CHANNEL])]
    nothing = handle(f"rollback {ASSISTANT}", ctx(world))
    assert not nothing.ok and "Nothing to roll back" in nothing.text


def test_reads(world):
    live_run(world.session_factory, key="k1", version="v1")
    pending = awaiting_run(world.session_factory, key="k2", version="v2")
    status = handle("status", ctx(world))
    assert isinstance(status.view, StatusView)
    assert [r.version for r in status.view.live] == ["v1"]
    assert [r.run_id for r in status.view.pending] == [pending]
    lineage = handle(f"lineage {ASSISTANT}", ctx(world))
    assert isinstance(lineage.view, LineageView) and len(lineage.view.patches[0].runs) == 2
    hidden = handle(f"lineage {ASSISTANT}", ctx(world, channel="COTHER1"))  # another channel's runs may be private
    assert hidden.ok and hidden.view.patches and not hidden.view.patches[0].runs
    assert hidden.view.to_json()["channel"] == "COTHER1" and not hidden.view.to_json()["patches"][0]["runs"]
    bases = handle("bases", ctx(world))
    assert isinstance(bases.view, Table) and [r[1] for r in bases.view.rows] == ["v1", "v2", "v3"]
    assistants = handle("assistants", ctx(world))
    assert assistants.view.rows[0][0] == ASSISTANT and assistants.view.rows[0][4] == "v1"
    elsewhere = handle("assistants", ctx(world, channel="COTHER1"))  # where it lives is this channel's business
    assert elsewhere.view.rows[0][4] == "–"
    assert "patch <assistant> onto <version>" in handle("help", ctx(world)).text


def test_ask_enqueues_an_answer_with_where_to_reply(world):
    refused = handle(f"ask {ASSISTANT} how do I reset the X200?", ctx(world))
    assert not refused.ok and "not live" in refused.text
    live_run(world.session_factory, key="k1")
    reply = handle(f"ask {ASSISTANT} how do I reset the X200?", ctx(world, request_id="r-ask"))
    assert reply.ok
    [(task, args)] = world.messages("serve")
    assert task == "portllm.answer_question"
    assert args == [ASSISTANT, CHANNEL, "how do I reset the X200?", APPROVER,
                    {"channel": CHANNEL, "user": APPROVER, "request_id": "r-ask", "via": "test"}]


def test_run_card_read_model(world):
    live_run(world.session_factory, key="k1", version="v1")
    run_id = awaiting_run(world.session_factory, key="k2", version="v2")
    from portllm_core.views import run_card

    with world.session_factory() as s:
        card = run_card(s, run_id)
        assert s.get(Rollout, 1).state == "live"
    assert card.origin_version == "v1" and card.target_version == "v2"
    assert [r.subject for r in card.kpi] == ["candidate", "target base alone", "live (v1)"]
    assert card.drift_modules[0] == ("layers.0.q_proj", 0.31)
    assert card.verdict == "pass" and card.awaiting_decision and not card.can_retune


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(st.text(), st.builds(lambda v, rest: f"{v} {rest}", st.sampled_from(
    ["patch", "eval", "approve", "reject", "rollback", "status", "lineage", "bases", "ask", "help"]), st.text())))
def test_arbitrary_input_only_ever_replies(world, text):
    reply = handle(text, ctx(world, request_id=f"h-{hash(text)}"))
    assert isinstance(reply.text, str) and reply.text
    assert "went wrong on our side" not in reply.text  # bad input is refused, never a fault


def test_an_inconclusive_gate_offers_the_retune_too_but_a_decided_run_does_not(world):
    unsure = awaiting_run(world.session_factory, key="k-unsure", verdict="inconclusive")
    first = retune(unsure, ctx(world, request_id="click-unsure"))
    assert first.ok and "re-tune" in first.text
    decided = awaiting_run(world.session_factory, key="k-decided", version="v3", verdict="inconclusive")
    assert handle(f"reject {decided} not now", ctx(world, user=APPROVER)).ok
    refused = retune(decided, ctx(world, request_id="click-decided"))
    assert not refused.ok and "undecided" in refused.text
