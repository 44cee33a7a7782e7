"""Issue 12 through the real edge: gunicorn serving the Bolt app, signed requests, a fake Web API,
and two app processes sharing one dedupe store."""
from __future__ import annotations

import json
import socket
import time
import uuid
from urllib.parse import urlsplit

import pytest
import requests

from portllm_core.ids import Action
from portllm_core.settings import Settings, SettingsError
from registry.models import Rollout, Run
from tests.bot import slack_http
from tests.bot.conftest import APPROVER, ASSISTANT, CHANNEL, OUTSIDER, awaiting_run
from tests.fixtures.fake_slack import BOT_USER_ID

SMALL_LIMIT = 4096  # bytes; Slack's payloads are far below PORTLLM_MAX_REQUEST_BYTES' default


@pytest.fixture
def serve(world, fake_slack, migrated_url, data_dir, tmp_path):
    """Start app processes (gunicorn, one worker each) on the test's registry; all stopped after."""
    base = {"PORTLLM_DATA_DIR": str(data_dir), "PORTLLM_DATABASE_URL": migrated_url,
            "SLACK_BOT_TOKEN": "xoxb-test-token", "SLACK_SIGNING_SECRET": slack_http.SIGNING_SECRET,
            "SLACK_API_URL": fake_slack.url, "PORTLLM_MAX_REQUEST_BYTES": str(SMALL_LIMIT)}
    with slack_http.app_servers(base, tmp_path) as start:
        yield start


# -- 1. bounded bodies, 401 for anything unsigned or malformed -----------------------------------

def test_a_body_over_the_limit_is_refused_before_it_is_read(serve):
    server = serve()
    host, port = urlsplit(server.url).hostname, urlsplit(server.url).port
    with socket.create_connection((host, port), timeout=5) as conn:
        # Announces 200 MB and sends none of it: the answer must not wait for the body.
        conn.sendall(b"POST /slack/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 209715200\r\n\r\n")
        started = time.monotonic()
        status_line = conn.recv(4096).split(b"\r\n", 1)[0]
    assert b" 413 " in status_line and time.monotonic() - started < 2
    signed = slack_http.post(server.url, json.dumps({"pad": "x" * 2 * SMALL_LIMIT}), "application/json")
    assert signed.status_code == 413  # a valid signature does not buy a bigger body
    chunked = requests.post(server.url, data=iter([b"x" * 1024] * 8), timeout=10,
                            headers={"Content-Type": "application/json"})  # no length: read to the limit
    assert chunked.status_code == 413


def test_unsigned_requests_get_401_and_signed_garbage_400_never_500(serve, world, fake_slack):
    server = serve()
    unsigned = requests.post(server.url, data="payload=garbage", timeout=10,
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
    signed_garbage = slack_http.post(server.url, "payload=garbage", "application/x-www-form-urlencoded")
    signed_bad_json = slack_http.post(server.url, "{not json", "application/json")
    bad_timestamp = requests.post(server.url, data="{}", timeout=10, headers={
        "Content-Type": "application/json", "X-Slack-Request-Timestamp": "soon", "X-Slack-Signature": "v0=00"})
    assert [r.status_code for r in (unsigned, bad_timestamp)] == [401] * 2
    assert [r.status_code for r in (signed_garbage, signed_bad_json)] == [400] * 2  # signed, not a Slack payload
    ok = slack_http.slash(server.url, "status", user=OUTSIDER, channel=CHANNEL, trigger_id="t-after",
                          response_url=slack_http.response_url(fake_slack, "after"))
    assert ok.status_code == 200 and fake_slack.wait_for("response/after", 1)


@pytest.mark.parametrize("variable, value, says", [
    ("SLACK_SIGNING_SECRET", "your-signing-secret", "still the placeholder from .env.example"),
    ("SLACK_SIGNING_SECRET", "", "SLACK_SIGNING_SECRET is not set"),
    ("SLACK_BOT_TOKEN", "xoxb-your-bot-token", "SLACK_BOT_TOKEN is still the placeholder"),
    ("SLACK_BOT_TOKEN", "  ", "SLACK_BOT_TOKEN is not set"),
])
def test_the_server_refuses_to_start_with_empty_or_placeholder_secrets(monkeypatch, variable, value, says):
    from bot.server import serve_http

    monkeypatch.setenv("SLACK_SIGNING_SECRET", slack_http.SIGNING_SECRET)
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-a-real-looking-token")
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=says):
        serve_http(slack_http.free_port(), "127.0.0.1", settings=Settings())


# -- 4. one reply per event and per command, across processes -------------------------------------

@pytest.fixture(params=["database", "redis"])
def shared_store(request) -> dict[str, str]:
    """The env that selects the dedupe store: the registry database (embedded default) or Redis."""
    if request.param == "database":
        return {}
    return {"PORTLLM_BROKER_URL": request.getfixturevalue("redis_db")(13)}


def test_two_app_processes_answer_each_event_and_command_once(serve, fake_slack, shared_store):
    first, second = serve(**shared_store), serve(**shared_store)
    thread_ts, ts = "1700000001.000100", f"1700000001.{uuid.uuid4().int % 10**6:06d}"
    mention = {"type": "app_mention", "channel": CHANNEL, "user": OUTSIDER, "text": f"<@{BOT_USER_ID}> help",
               "ts": ts, "thread_ts": thread_ts, "event_ts": ts}
    as_message = {**mention, "type": "message"}  # Slack's second delivery of the same @mention
    event_id = f"Ev{uuid.uuid4().hex[:10]}"
    retry = {"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_error"}
    assert slack_http.event(first.url, mention, event_id=event_id, bot_user=BOT_USER_ID).status_code == 200
    assert slack_http.event(second.url, as_message, event_id=event_id + "m", bot_user=BOT_USER_ID).status_code == 200
    assert slack_http.event(second.url, mention, event_id=event_id, bot_user=BOT_USER_ID,
                            headers=retry).status_code == 200
    fake_slack.wait_for("chat.postMessage", 1)

    trigger = f"trig-{uuid.uuid4().hex[:8]}"
    for server in (first, second):  # one slash command delivered to both processes
        slack_http.slash(server.url, "status", user=OUTSIDER, channel=CHANNEL, trigger_id=trigger,
                         response_url=slack_http.response_url(fake_slack, "once"))
    fake_slack.wait_for("response/once", 1)
    time.sleep(1.5)  # time for a duplicate to show up
    assert len(fake_slack.calls_to("chat.postMessage")) == 1
    assert len(fake_slack.calls_to("response/once")) == 1


# -- 2, 3, 5. roles, channel scope, rate limits and escaping as Slack sees them -------------------

def test_a_click_in_another_channel_or_by_an_outsider_changes_nothing(serve, world, fake_slack):
    server = serve()
    run_id = awaiting_run(world.session_factory, key="k-scope", verdict="fail")
    slack_http.click(server.url, Action.RETUNE, run_id, user=OUTSIDER, channel=CHANNEL,
                     message_ts="1700000000.000100", response_url=slack_http.response_url(fake_slack, "c1"))
    slack_http.click(server.url, Action.REJECT, run_id, user=APPROVER, channel="COTHER1",
                     message_ts="1700000000.000100", response_url=slack_http.response_url(fake_slack, "c2"))
    refusals = {call.body["user"]: call.body for call in fake_slack.wait_for("chat.postEphemeral", 2)}
    outsider, elsewhere = refusals[OUTSIDER], refusals[APPROVER]
    assert "not an approver" in outsider["text"]
    assert elsewhere["channel"] == "COTHER1" and f"belongs to #{CHANNEL}" in elsewhere["text"]
    assert not fake_slack.calls_to("chat.update")  # no card rendered anywhere
    with world.session_factory() as s:
        assert s.query(Rollout).filter_by(run_id=run_id).one().state == "blocked"
        assert s.query(Run).filter_by(kind="retune").count() == 0


def test_a_person_over_the_rate_limit_is_told_when_to_try_again(serve, world, fake_slack):
    server = serve(PORTLLM_RUNS_PER_USER_PER_HOUR="1")
    for n in (1, 2):
        slack_http.slash(server.url, f"patch {ASSISTANT} onto v2", user=OUTSIDER, channel=CHANNEL,
                         trigger_id=f"rl-{n}", response_url=slack_http.response_url(fake_slack, f"rl-{n}"))
        fake_slack.wait_for(f"response/rl-{n}", 1)
    [refused] = fake_slack.calls_to("response/rl-2")
    assert "Your runs: 1 requested in the last 60 minutes" in refused.body["text"]
    assert "Try again in 60 min" in refused.body["text"]
    with world.session_factory() as s:
        assert s.query(Run).count() == 1


def test_ten_signed_requests_at_once_across_assistants_and_channels_keep_the_personal_quota(serve, world, fake_slack):
    """Issue 20: one person's slash commands for two assistants in two channels, all sent at once to two
    app processes, get exactly the hour's quota of runs; every other one is told to wait."""
    from concurrent.futures import ThreadPoolExecutor

    from registry import services
    from registry.db import session_scope

    with session_scope(world.session_factory) as s:
        services.create_assistant(s, name="sales-assistant", family="demo", suite_ref="suite", suite_digest="d" * 64,
                                  min_accuracy=0.5, max_regression=0.05, approvers=[APPROVER], admins=[], actor="setup")
        services.register_patch(s, assistant="sales-assistant", origin_base="v1", artifact_ref="sha256:" + "e" * 64,
                                artifact_digest="e" * 64, rank=8, alpha=16, target_modules=["q_proj"],
                                size_bytes=1000, provenance={}, actor="setup")
    limits = {"PORTLLM_RUNS_PER_USER_PER_HOUR": "2", "PORTLLM_RUNS_PER_ASSISTANT_PER_HOUR": "100"}
    servers = [serve(**limits), serve(**limits)]
    targets = [(ASSISTANT, CHANNEL), ("sales-assistant", "CSALES01")]

    def send(i: int) -> int:
        assistant, channel = targets[i % 2]
        return slack_http.slash(servers[i % 2].url, f"eval {assistant} on v2", user=OUTSIDER, channel=channel,
                                trigger_id=f"t-quota-{i}", response_url=slack_http.response_url(fake_slack, f"quota-{i}")).status_code

    with ThreadPoolExecutor(10) as pool:
        assert list(pool.map(send, range(10))) == [200] * 10
    replies = [fake_slack.wait_for(f"response/quota-{i}", 1)[0].body["text"] for i in range(10)]
    refused = [text for text in replies if "Your runs: 2 requested in the last 60 minutes" in text]
    assert len(refused) == 8, replies
    with world.session_factory() as s:
        assert s.query(Run).filter_by(requested_by=OUTSIDER).count() == 2


def test_what_a_person_typed_is_escaped_in_the_reply(serve, fake_slack):
    server = serve()
    hostile = "patch <!channel> onto <https://evil.example|v2>"
    slack_http.slash(server.url, hostile, user=OUTSIDER, channel=CHANNEL, trigger_id="t-hostile",
                     response_url=slack_http.response_url(fake_slack, "hostile"))
    [reply] = fake_slack.wait_for("response/hostile", 1)
    everything = json.dumps(reply.body)
    assert "<!channel>" not in everything and "<https://evil" not in everything
    assert "&lt;!channel&gt;" in reply.body["text"]  # the fallback text too, not only the blocks


# -- issue 20: ratings, offers, quotas and input, as Slack sees them ------------------------------

def answered_here(world, *, guard: tuple[int, float] | None = None) -> int:
    """A live rollout in CHANNEL (v1, then v2 to roll back from) and one answer it gave there."""
    from registry import services
    from registry.db import session_scope
    from tests.bot.conftest import live_run

    live_run(world.session_factory, key="k-v1", version="v1")
    v2 = live_run(world.session_factory, key="k-v2", version="v2")
    with session_scope(world.session_factory) as s:
        if guard is not None:
            services.update_assistant(s, ASSISTANT, actor="test", guard_min_ratings=guard[0],
                                      guard_min_satisfaction=guard[1])
        return services.record_answer(s, s.get(Run, v2).rollout, asked_by=OUTSIDER, question="reset?").id


def test_a_rating_counts_only_in_the_answers_channel_and_the_guard_card_goes_there(serve, world, fake_slack):
    server = serve()
    answer = answered_here(world, guard=(2, 0.5))

    def rate(text: str, user: str, channel: str, name: str) -> dict:
        slack_http.slash(server.url, text, user=user, channel=channel, trigger_id=f"t-{name}",
                         response_url=slack_http.response_url(fake_slack, name))
        [reply] = fake_slack.wait_for(f"response/{name}", 1)
        return reply.body

    elsewhere = rate(f"rate {answer} down", OUTSIDER, "COTHER1", "other")
    missing = rate(f"rate {answer + 1000} down", OUTSIDER, "COTHER1", "missing")
    # The same refusal as for a number that is no answer at all: nothing about #support leaks.
    assert elsewhere["text"] == missing["text"].replace(str(answer + 1000), str(answer))
    assert f"There is no answer #{answer} here" in elsewhere["text"]
    leaked = json.dumps(elsewhere)
    assert CHANNEL not in leaked and ASSISTANT not in leaked and "v2" not in leaked
    assert elsewhere["response_type"] == "ephemeral"
    with world.session_factory() as s:
        assert s.query(Rollout).filter(Rollout.guard_tripped_at.is_not(None)).count() == 0

    rate(f"rate {answer} down", OUTSIDER, CHANNEL, "here-1")
    tripped = rate(f"rate {answer} down", APPROVER, CHANNEL, "here-2")
    assert tripped["response_type"] == "in_channel" and "below the guard's 50%" in json.dumps(tripped["blocks"])
    assert [c.method for c in fake_slack.calls if "below the guard" in json.dumps(c.body)] == ["response/here-2"]


def test_a_release_offer_click_passes_the_same_requester_and_quota_checks_as_typing(serve, world, fake_slack):
    from registry import services
    from registry.db import session_scope
    from tests.bot.conftest import live_run

    server = serve(PORTLLM_RUNS_PER_USER_PER_HOUR="1")
    live_run(world.session_factory, key="k-v1", version="v1")
    with session_scope(world.session_factory) as s:
        services.update_assistant(s, ASSISTANT, actor="test", on_release="ask", requesters=["UREQUESTER1", "UBUSY1"])
        release, _ = services.open_release(s, services.get_base(s, "demo", "v2"), actor="test")
        release_id = release.id
    with session_scope(world.session_factory) as s:  # UBUSY1 used up their hour already
        services.request_run(s, assistant=ASSISTANT, version="v3", idempotency_key="busy",
                             requested_by="UBUSY1", channel=CHANNEL)
    with world.session_factory() as s:
        runs_before = s.query(Run).count()

    def accept(user: str, name: str) -> None:
        slack_http.click(server.url, Action.ACCEPT_OFFER, f"{release_id}:{ASSISTANT}", user=user, channel=CHANNEL,
                         message_ts="1700000002.000100", response_url=slack_http.response_url(fake_slack, name))

    accept(OUTSIDER, "offer-outsider")
    accept("UBUSY1", "offer-busy")
    refusals = {c.body["user"]: c.body["text"] for c in fake_slack.wait_for("chat.postEphemeral", 2)}
    typed = {}
    for user in (OUTSIDER, "UBUSY1"):  # what typing the same request says to each of them
        slack_http.slash(server.url, f"patch {ASSISTANT} onto v2", user=user, channel=CHANNEL,
                         trigger_id=f"t-typed-{user}", response_url=slack_http.response_url(fake_slack, f"typed-{user}"))
        typed[user] = fake_slack.wait_for(f"response/typed-{user}", 1)[0].body["text"]
    assert "Only @UREQUESTER1" in refusals[OUTSIDER] and refusals[OUTSIDER] == typed[OUTSIDER]
    assert "Your runs: 1 requested" in refusals["UBUSY1"] and "Your runs: 1 requested" in typed["UBUSY1"]
    assert not fake_slack.calls_to("chat.update")  # the offer card still offers
    with world.session_factory() as s:
        assert s.query(Run).count() == runs_before

    accept("UREQUESTER1", "offer-ok")
    [update] = fake_slack.wait_for("chat.update", 1)
    assert "queued: transplant of support-assistant onto v2" in update.body["text"]
    with world.session_factory() as s:
        [run] = s.query(Run).filter_by(release_id=release_id).all()
        assert run.requested_by == "UREQUESTER1" and run.channel == CHANNEL


# Every control character a person could send, but tab and line breaks (which are spacing).
CONTROL_CHARACTERS = [chr(c) for c in (*range(0x00, 0x20), *range(0x7F, 0xA0)) if chr(c) not in "\t\n\r"]


def test_every_control_character_is_refused_the_same_way_on_every_entry_point(serve, world, fake_slack, data_dir):
    """Issue 20: `<@UBOT> hello\\u0000` made the answer fail inside PostgreSQL and nobody replied.
    Each character goes through a slash command, an @mention (a question, with an assistant live),
    a DM, every card button and the console, and each gets the grammar's one refusal."""
    import io

    from portllm_cli.console import run_console
    from portllm_core.settings import Settings
    from tests.bot.conftest import live_run

    refusal = "The message contains control characters (such as NUL); type it again without them. Try `help`."
    server = serve()
    run_id = live_run(world.session_factory, key="k-live", version="v1")
    buttons = [(Action.APPROVE, str(run_id)), (Action.REJECT, str(run_id)), (Action.RETUNE, str(run_id)),
               (Action.ROLLBACK, ASSISTANT), (Action.ACCEPT_OFFER, f"1:{ASSISTANT}")]
    for i, char in enumerate(CONTROL_CHARACTERS):
        typed = slack_http.slash(server.url, f"status{char}", user=OUTSIDER, channel=CHANNEL, trigger_id=f"t-ctl-{i}",
                                 response_url=slack_http.response_url(fake_slack, f"ctl-{i}"))
        assert typed.status_code == 200 and typed.json()["text"] == refusal, (i, typed.text)
        ts = f"1700000100.{i:06d}"
        mention = {"type": "app_mention", "channel": CHANNEL, "user": OUTSIDER, "ts": ts, "event_ts": ts,
                   "text": f"<@{BOT_USER_ID}> hello{char} how do I reset the X200?"}
        direct = {"type": "message", "channel_type": "im", "channel": "D0DIRECT1", "user": OUTSIDER, "ts": ts,
                  "event_ts": ts, "text": f"status{char}"}
        for name, body in (("mention", mention), ("dm", direct)):
            assert slack_http.event(server.url, body, event_id=f"Ev-ctl-{name}-{i}",
                                    bot_user=BOT_USER_ID).status_code == 200
        for action, value in buttons:
            assert slack_http.click(server.url, action, value + char, user=APPROVER, channel=CHANNEL,
                                    message_ts=ts, response_url=slack_http.response_url(fake_slack, f"b-{i}")).status_code == 200

    n = len(CONTROL_CHARACTERS)
    posted = fake_slack.wait_for("chat.postMessage", 2 * n, timeout=60)
    told = fake_slack.wait_for("chat.postEphemeral", len(buttons) * n, timeout=60)
    assert {c.body["text"] for c in posted} == {refusal} and {c.body["text"] for c in told} == {refusal}
    assert sorted(c.body["channel"] for c in posted) == sorted([CHANNEL, "D0DIRECT1"] * n)  # a reply for each
    assert world.messages("serve") == [] and world.messages("gpu") == []  # nothing asked, nothing queued
    with world.session_factory() as s:
        assert s.query(Run).count() == 1 and s.query(Rollout).filter_by(state="live").count() == 1

    out = io.StringIO()
    code = run_console("#support", "alice", stdin=io.StringIO("".join(f"status{c}\n" for c in CONTROL_CHARACTERS)),
                       out=out, settings=Settings(data_dir=data_dir), session_factory=world.session_factory,
                       enqueue=world.queue, poll_s=0.05, wait_s=5)
    assert code == 1 and out.getvalue().count("The message contains control characters") == n


def test_bidi_controls_in_a_reason_are_neutralised_in_the_card(serve, world, fake_slack):
    """Issue 20: U+202E in a reject reason showed the reason reversed on the run card."""
    server = serve()
    run_id = awaiting_run(world.session_factory, key="k-bidi")
    reason = "\u202edesserper eb ot\u202c \u2067fine\u2069"
    slack_http.slash(server.url, f"reject {run_id} {reason}", user=APPROVER, channel=CHANNEL, trigger_id="t-bidi",
                     response_url=slack_http.response_url(fake_slack, "bidi"))
    [reply] = fake_slack.wait_for("response/bidi", 1)
    shown = json.dumps(reply.body, ensure_ascii=False)
    assert "Rejected by <@UAPPROVER1>: desserper eb ot fine" in shown
    assert not set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069") & set(shown)
