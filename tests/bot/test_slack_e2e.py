"""The Slack app end to end over real HTTP: gunicorn on loopback, signed requests, a fake Web API."""
from __future__ import annotations

import threading
import time

import pytest

from portllm_core.ids import Action, Block
from registry import services
from registry.models import Rollout, Run
from tests.bot import slack_http
from tests.bot.conftest import APPROVER, ASSISTANT, CHANNEL, OUTSIDER, awaiting_run, broker_messages, live_run
from tests.fixtures.fake_slack import BOT_USER_ID


@pytest.fixture
def server(world, fake_slack, migrated_url, data_dir, tmp_path):
    env = {"PORTLLM_DATA_DIR": str(data_dir), "PORTLLM_DATABASE_URL": migrated_url,
           "SLACK_BOT_TOKEN": "xoxb-test-token", "SLACK_SIGNING_SECRET": slack_http.SIGNING_SECRET,
           "SLACK_API_URL": fake_slack.url,
           # the burst below is one person's 50 runs; the limits have their own tests
           "PORTLLM_RUNS_PER_USER_PER_HOUR": "100", "PORTLLM_RUNS_PER_ASSISTANT_PER_HOUR": "100"}
    running = slack_http.start_server(env, tmp_path / "server.log", workers=1, threads=16)
    yield running
    running.stop()


def response_url(fake_slack, name: str = "abc") -> str:
    return fake_slack.url + f"response/{name}"


def test_slash_command_acks_within_3s_and_queues_a_run(server, world, fake_slack):
    started = time.monotonic()
    response = slack_http.slash(server.url, "patch Support-Assistant onto v2", user=APPROVER, channel=CHANNEL,
                                trigger_id="trig-1", response_url=response_url(fake_slack, "patch"))
    elapsed = time.monotonic() - started
    assert response.status_code == 200 and elapsed < 3.0
    [reply] = fake_slack.wait_for("response/patch", 1)  # respond(), right after the ack
    assert reply.body["response_type"] == "ephemeral"
    with world.session_factory() as s:
        [run] = s.query(Run).all()
        assert (run.status, run.requested_by, run.channel) == ("queued", APPROVER, CHANNEL)
        assert run.idempotency_key == "slack:T0PORTLLM:trig-1"
    assert reply.body["text"] == f"Run #{run.id} queued: transplant of support-assistant onto v2."
    assert world.messages("gpu") == [("portllm.transplant_and_evaluate", [run.id])]


def test_a_burst_of_50_commands_is_acked_in_time_and_queues_50_runs(server, world, fake_slack):
    results: list = []

    def send(i: int) -> None:
        started = time.monotonic()
        response = slack_http.slash(server.url, "patch support-assistant onto v2", user=APPROVER, channel=CHANNEL,
                                    trigger_id=f"burst-{i}", response_url=response_url(fake_slack, f"burst-{i}"))
        results.append((response.status_code, time.monotonic() - started))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(code for code, _ in results) == [200] * 50
    assert max(elapsed for _, elapsed in results) < 3.0
    for i in range(50):
        fake_slack.wait_for(f"response/burst-{i}", 1, timeout=30)
    with world.session_factory() as s:
        assert s.query(Run).count() == 50
    assert len(world.messages("gpu")) == 50


def test_reads_reply_through_respond_and_typos_in_the_ack(server, world, fake_slack):
    live_run(world.session_factory, key="k-live")
    response = slack_http.slash(server.url, "status", user=OUTSIDER, channel=CHANNEL, trigger_id="t2",
                                response_url=response_url(fake_slack, "status"))
    assert response.status_code == 200
    [reply] = fake_slack.wait_for("response/status", 1)
    assert reply.body["blocks"][0]["block_id"] == Block.STATUS_HEADER
    bad = slack_http.slash(server.url, "pacth support-assistant onto v2", user=OUTSIDER, channel=CHANNEL,
                           trigger_id="t3", response_url=response_url(fake_slack, "typo")).json()
    # escaped like everything posted, so Slack shows `<assistant>` rather than taking it for markup
    assert "patch &lt;assistant&gt; onto &lt;version&gt;" in bad["text"] and bad["response_type"] == "ephemeral"
    helped = slack_http.slash(server.url, "HELP", user=OUTSIDER, channel=CHANNEL, trigger_id="t5",
                              response_url=response_url(fake_slack, "help")).json()
    assert "ask &lt;assistant&gt; &lt;question&gt;" in helped["text"]
    approved = slack_http.slash(server.url, "approve 1", user=OUTSIDER, channel=CHANNEL, trigger_id="t4",
                                response_url=response_url(fake_slack, "approve"))
    assert approved.status_code == 200
    [refusal] = fake_slack.wait_for("response/approve", 1)
    assert "not awaiting approval" in refusal.body["text"] or "not an approver" in refusal.body["text"]


def test_bad_or_stale_signatures_are_refused_and_nothing_is_queued(server, world, fake_slack):
    url = response_url(fake_slack)
    forged = slack_http.slash(server.url, "patch support-assistant onto v2", user=APPROVER, channel=CHANNEL,
                              trigger_id="t-forged", response_url=url, secret="not-the-secret")
    stale = slack_http.slash(server.url, "patch support-assistant onto v2", user=APPROVER, channel=CHANNEL,
                             trigger_id="t-stale", response_url=url, timestamp=int(time.time()) - 600)
    body = slack_http.command_body("patch support-assistant onto v2", user=APPROVER, channel=CHANNEL,
                                   trigger_id="t-unsigned", response_url=url)
    unsigned = slack_http.requests.post(server.url, data=body, timeout=10,
                                        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert [forged.status_code, stale.status_code, unsigned.status_code] == [401, 401, 401]
    with world.session_factory() as s:
        assert s.query(Run).count() == 0
    assert world.messages("gpu") == []


def test_approve_click_checks_the_approver_and_goes_live_once(server, world, fake_slack):
    run_id = awaiting_run(world.session_factory, key="k-await")
    card_ts = "1700000000.000100"
    url = response_url(fake_slack)

    def clicked(user):
        response = slack_http.click(server.url, Action.APPROVE, run_id, user=user, channel=CHANNEL,
                                    message_ts=card_ts, response_url=url)
        assert response.status_code == 200

    clicked(OUTSIDER)
    [refusal] = fake_slack.wait_for("chat.postEphemeral", 1)
    assert refusal.body["user"] == OUTSIDER and "not an approver" in refusal.body["text"]
    with world.session_factory() as s:
        assert s.query(Rollout).filter_by(run_id=run_id).one().state == "awaiting_approval"

    clicked(APPROVER)
    [update] = fake_slack.wait_for("chat.update", 1)
    assert update.body["ts"] == card_ts and update.body["channel"] == CHANNEL
    outcome = update.body["blocks"][-1]
    assert outcome["block_id"] == Block.RUN_OUTCOME and f"<@{APPROVER}>" in outcome["elements"][0]["text"]
    assert all(b["type"] != "actions" for b in update.body["blocks"])

    clicked(APPROVER)
    second = fake_slack.wait_for("chat.postEphemeral", 2)[1]
    assert "not awaiting approval" in second.body["text"]
    with world.session_factory() as s:
        assert s.query(Rollout).filter_by(run_id=run_id).one().state == "live"
        approvals = services.audit_events(s, action="rollout.approved", entity_type="rollout")
        assert [e.actor for e in approvals if e.details["run_id"] == run_id] == [APPROVER]
    assert len(fake_slack.calls_to("chat.update")) == 1


def test_event_retries_and_double_delivery_give_one_answer(server, world, fake_slack):
    live_run(world.session_factory, key="k-live")
    ts = "1700000001.000200"
    mention = {"type": "app_mention", "user": OUTSIDER, "text": f"<@{BOT_USER_ID}> how do I reset the X200?",
               "ts": ts, "channel": CHANNEL, "event_ts": ts}
    message = {**mention, "type": "message", "channel_type": "channel"}

    def deliver(body, event_id, headers=None):
        response = slack_http.event(server.url, body, event_id=event_id, bot_user=BOT_USER_ID, headers=headers)
        assert response.status_code == 200

    deliver(mention, "Ev1")
    deliver(mention, "Ev1", {"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"})
    deliver(mention, "Ev1", {"X-Slack-Retry-Num": "2", "X-Slack-Retry-Reason": "http_error"})
    deliver(message, "Ev2")  # the same message as a message.channels event
    answers = wait_for_answers(world, 1)
    assert len(answers) == 1
    [(task, args)] = answers
    assert task == "portllm.answer_question"
    assert args[:4] == [ASSISTANT, CHANNEL, "how do I reset the X200?", OUTSIDER]
    assert args[4]["thread_ts"] == ts and args[4]["via"] == "slack"

    # A follow-up in that thread needs no mention; chatter in other threads is left alone.
    reply_ts = "1700000001.000300"
    follow_up = {"type": "message", "channel_type": "channel", "user": OUTSIDER, "text": "and for the X300?",
                 "ts": reply_ts, "thread_ts": ts, "parent_user_id": OUTSIDER, "channel": CHANNEL}
    deliver(follow_up, "Ev3")
    deliver({**follow_up, "ts": "1700000009.000100", "thread_ts": "1700000008.000100"}, "Ev4")
    [(_, args)] = wait_for_answers(world, 1)
    assert args[2] == "and for the X300?" and args[4]["thread_ts"] == ts

    # A mention inside a thread arrives as app_mention and as message: one answer.
    mention_ts = "1700000001.000400"
    in_thread = {**follow_up, "ts": mention_ts, "text": f"<@{BOT_USER_ID}> and the X400?"}
    deliver({**in_thread, "type": "app_mention"}, "Ev5")
    deliver(in_thread, "Ev6")
    [(_, args)] = wait_for_answers(world, 1)
    assert args[2] == "and the X400?"


def wait_for_answers(world, count: int) -> list:
    answers: list = []
    deadline = time.monotonic() + 10
    while len(answers) < count and time.monotonic() < deadline:
        answers += broker_messages(world.broker_url, "serve")
    time.sleep(1.0)  # let any duplicate land before counting
    return answers + broker_messages(world.broker_url, "serve")


def test_app_home_shows_only_what_the_viewer_requested_or_may_decide(server, world, fake_slack):
    live_run(world.session_factory, key="k-live")
    waiting = awaiting_run(world.session_factory, key="k-wait", version="v2")

    def home_of(user: str, n: int) -> str:
        response = slack_http.event(server.url, {"type": "app_home_opened", "user": user, "channel": "D0HOME",
                                                 "tab": "home", "event_ts": f"{n}.0"},
                                    event_id=f"EvHome{n}", bot_user=BOT_USER_ID)
        assert response.status_code == 200
        publish = fake_slack.wait_for("views.publish", n)[-1]
        assert publish.body["user_id"] == user and publish.body["view"]["type"] == "home"
        return str(publish.body["view"]["blocks"])

    seen_by_approver = home_of(APPROVER, 1)
    assert f"#{waiting}" in seen_by_approver and "awaiting approval" in seen_by_approver
    seen_by_outsider = home_of(OUTSIDER, 2)  # neither asked for these runs nor may decide them
    assert f"#{waiting}" not in seen_by_outsider and CHANNEL not in seen_by_outsider
    assert "Nothing is live yet" in seen_by_outsider and "Nothing waiting" in seen_by_outsider


def test_thumbs_down_reactions_rate_the_answer_and_the_guard_card_rolls_back_in_one_click(server, world, fake_slack):
    from registry.db import session_scope

    live_run(world.session_factory, key="k-v1", version="v1")
    v2 = live_run(world.session_factory, key="k-v2", version="v2")
    with session_scope(world.session_factory) as s:
        services.update_assistant(s, ASSISTANT, actor="test", guard_min_ratings=2, guard_min_satisfaction=0.5)
        answer = services.record_answer(s, s.get(Run, v2).rollout, asked_by=OUTSIDER, question="reset?")
        services.set_answer_message(s, answer.id, "1700000000.000100")
    item = {"type": "message", "channel": CHANNEL, "ts": "1700000000.000100"}
    for i, user in enumerate((OUTSIDER, APPROVER)):
        response = slack_http.event(server.url, {"type": "reaction_added", "user": user, "reaction": "-1",
                                                 "item": item, "event_ts": f"17000000{i}.0"},
                                    event_id=f"Ev-react-{i}", bot_user=BOT_USER_ID)
        assert response.status_code == 200
    [card] = fake_slack.wait_for("chat.postMessage", 1)
    assert card.body["channel"] == CHANNEL and "below the guard's 50%" in card.body["text"]
    [button] = [e for b in card.body["blocks"] if b["type"] == "actions" for e in b["elements"]]
    assert button["action_id"] == Action.ROLLBACK and button["value"] == ASSISTANT
    with world.session_factory() as s:
        assert services.satisfaction(s, [s.get(Run, v2).rollout.id])[s.get(Run, v2).rollout.id].people == 2

    # Taking a reaction back takes the rating back; removing a 👍 the person never gave changes nothing.
    for i, reaction in enumerate(("+1", "-1")):
        response = slack_http.event(server.url, {"type": "reaction_removed", "user": OUTSIDER, "reaction": reaction,
                                                 "item": item, "event_ts": f"17000001{i}.0"},
                                    event_id=f"Ev-unreact-{i}", bot_user=BOT_USER_ID)
        assert response.status_code == 200
    with world.session_factory() as s:
        rollout_id = s.get(Run, v2).rollout.id
        deadline = time.monotonic() + 10  # Bolt acks first and runs the listener after
        while services.satisfaction(s, [rollout_id])[rollout_id].people != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
            s.expire_all()
        assert services.satisfaction(s, [rollout_id])[rollout_id] == services.Satisfaction(people=1, ratings=1, up=0.0)

    response = slack_http.click(server.url, Action.ROLLBACK, ASSISTANT, user=APPROVER, channel=CHANNEL,
                                message_ts="1700000001.000200", response_url=response_url(fake_slack, "rb"))
    assert response.status_code == 200
    [update] = fake_slack.wait_for("chat.update", 1)
    assert "Rolled back support-assistant" in update.body["text"]
    with world.session_factory() as s:
        assert services.live_rollout(s, ASSISTANT, CHANNEL).run.target_base.version == "v1"
