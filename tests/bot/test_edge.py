"""Issue 26, items 5-7, through the real edge: gunicorn serving the Bolt app over signed HTTP, a fake
Web API, a PostgreSQL server of the test's own stopped and started under the bot, both dedupe stores."""
from __future__ import annotations

import io
import json
import time

import pytest
import requests

from portllm_core.commands.replies import REGISTRY_UNREACHABLE
from portllm_core.ids import Action
from registry.models import AuditEvent, Rating, Run
from tests.bot import slack_http
from tests.bot.conftest import (
    APPROVER,
    ASSISTANT,
    CHANNEL,
    OUTSIDER,
    awaiting_run,
    broker_messages,
    live_run,
    register_world,
)
from tests.fixtures.fake_slack import BOT_USER_ID

ENV = {"SLACK_BOT_TOKEN": "xoxb-test-token", "SLACK_SIGNING_SECRET": slack_http.SIGNING_SECRET}
RETRY = {"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_error"}


@pytest.fixture
def serve(fake_slack, data_dir, tmp_path):
    """Start one app process (gunicorn) with the given env on top of the test's; stopped after."""
    with slack_http.app_servers({**ENV, "PORTLLM_DATA_DIR": str(data_dir), "SLACK_API_URL": fake_slack.url},
                                tmp_path) as start:
        yield start


# -- 5. the request edge never answers 500 -----------------------------------------------------------

def test_signed_bodies_that_are_not_slack_payloads_get_400_and_one_log_line(serve, migrated_url, fake_slack,
                                                                               tmp_path):
    server = serve(PORTLLM_DATABASE_URL=migrated_url, PORTLLM_MAX_REQUEST_BYTES="200000")
    envelope = {"type": "event_callback", "event_id": "Ev-string", "team_id": slack_http.TEAM, "event": "hello"}
    bodies = [("payload=[1,2,3]", "application/x-www-form-urlencoded"),
              ("12345", "application/json"),
              (json.dumps(envelope), "application/json"),
              ("[" * 50_000 + "]" * 50_000, "application/json")]
    assert [slack_http.post(server.url, body, kind).status_code for body, kind in bodies] == [400] * 4

    def unsigned(timestamp: str, signature: str) -> int:
        return requests.post(server.url, data=b"{}", timeout=10, headers={
            "Content-Type": "application/json", "X-Slack-Request-Timestamp": timestamp.encode("latin-1"),
            "X-Slack-Signature": signature.encode("latin-1")}).status_code

    now = str(int(time.time()))
    # `²`: str.isdigit() is true and int() raises; a non-ASCII signature makes compare_digest raise.
    assert unsigned("\u00b2", "v0=00") == 401 and unsigned(now, "v0=\u00b2") == 401 and unsigned(now, "") == 401
    stale = slack_http.post(server.url, "{}", "application/json", timestamp=int(time.time()) - 600)
    assert stale.status_code == 401

    ok = slack_http.slash(server.url, "help", user=OUTSIDER, channel=CHANNEL, trigger_id="t-ok",
                          response_url=slack_http.response_url(fake_slack, "ok"))
    assert ok.status_code == 200 and "PortLLM commands" in ok.json()["text"]
    log = (tmp_path / "server-0.log").read_text()
    assert "Traceback" not in log
    assert log.count("refused a signed request that is not a Slack payload we handle") == 4


# -- 6. the database down, the bot up --------------------------------------------------------------

@pytest.fixture(params=["database", "redis"])
def dedupe_store(request) -> dict[str, str]:
    """The env that selects the dedupe store (and broker): the registry database, or Redis."""
    if request.param == "database":
        return {}
    return {"PORTLLM_BROKER_URL": request.getfixturevalue("redis_db")(12)}


ANSWER_TS = "1700000300.000100"


def test_a_registry_outage_under_the_bot(own_postgres, serve, fake_slack, data_dir, dedupe_store):
    """During the outage a slash command and a click are told within 3 s, ephemerally, and nothing is
    recorded; a mention and a reaction answer 5xx and give their claims back, so that Slack's retry
    is handled exactly once when the database is back."""
    from registry import services
    from registry.cli import upgrade
    from registry.db import make_session_factory, session_scope

    upgrade(own_postgres.url)
    factory = make_session_factory(own_postgres.url)
    register_world(factory)
    live = live_run(factory, key="k-live", version="v1")
    awaiting = awaiting_run(factory, key="k-wait", version="v2")
    with session_scope(factory) as s:
        answer = services.record_answer(s, s.get(Run, live).rollout, asked_by=OUTSIDER, question="reset?")
        services.set_answer_message(s, answer.id, ANSWER_TS)
    with factory() as s:
        runs_before, audit_before = s.query(Run).count(), s.query(AuditEvent).count()
    server = serve(PORTLLM_DATABASE_URL=own_postgres.url, **dedupe_store)

    mention = {"type": "app_mention", "channel": CHANNEL, "user": OUTSIDER, "text": f"<@{BOT_USER_ID}> status",
               "ts": "1700000300.000200", "event_ts": "1700000300.000200"}
    reaction = {"type": "reaction_added", "user": APPROVER, "reaction": "+1", "event_ts": "1700000300.000300",
                "item": {"type": "message", "channel": CHANNEL, "ts": ANSWER_TS}}

    def deliver(headers: dict | None = None) -> list[int]:
        return [slack_http.event(server.url, body, event_id=event_id, bot_user=BOT_USER_ID, headers=headers).status_code
                for event_id, body in (("Ev-mention", mention), ("Ev-reaction", reaction))]

    own_postgres.stop()
    try:
        sent = time.time()
        typed = slack_http.slash(server.url, f"patch {ASSISTANT} onto v3", user=OUTSIDER, channel=CHANNEL,
                                 trigger_id="t-outage", response_url=slack_http.response_url(fake_slack, "typed"))
        clicked = slack_http.click(server.url, Action.APPROVE, awaiting, user=APPROVER, channel=CHANNEL,
                                   message_ts="1700000300.000050", response_url=slack_http.response_url(fake_slack, "clicked"))
        assert typed.status_code == 200 and clicked.status_code == 200
        for name in ("typed", "clicked"):
            [told] = fake_slack.wait_for(f"response/{name}", 1, timeout=3)
            assert told.body["text"] == REGISTRY_UNREACHABLE.text and told.body["response_type"] == "ephemeral"
            assert told.at - sent < 3
        assert all(status >= 500 for status in deliver()), "an event that failed must make Slack retry"
        assert not fake_slack.calls_to("chat.postMessage") and not fake_slack.calls_to("chat.update")
    finally:
        own_postgres.start()

    assert deliver(RETRY) == [200, 200]  # Slack's retries, now handled
    assert deliver(RETRY) == [200, 200]  # and a second retry is dropped as seen
    [posted] = fake_slack.wait_for("chat.postMessage", 1)
    assert posted.body["thread_ts"] == mention["ts"]
    time.sleep(1)  # time for a duplicate to show up
    assert len(fake_slack.calls_to("chat.postMessage")) == 1
    with factory() as s:
        assert s.query(Rating).filter_by(answer_id=answer.id).count() == 1
        assert s.query(Run).count() == runs_before  # the patch asked for during the outage was not half-made
        assert s.query(AuditEvent).count() == audit_before + 1  # the one rating
        assert s.get(Run, awaiting).rollout.state != "live"
    factory.kw["bind"].dispose()
    broker = dedupe_store.get("PORTLLM_BROKER_URL") or f"sqla+sqlite:///{data_dir / 'queue.db'}"
    assert broker_messages(broker, "gpu") == []


# -- 7. input ---------------------------------------------------------------------------------------

def test_a_console_line_that_is_not_utf8_gets_the_control_character_refusal(world, data_dir):
    from portllm_cli.console import run_console
    from portllm_core.settings import Settings

    raw = io.BytesIO(b"status \xff\xfe\n" + f"ask {ASSISTANT} reset \xe9?\n".encode("latin-1") + b"status\n")
    stdin = io.TextIOWrapper(raw, encoding="utf-8", errors="surrogateescape")  # what sys.stdin reads it as
    out = io.StringIO()
    code = run_console("#support", "alice", stdin=stdin, out=out, settings=Settings(data_dir=data_dir),
                       session_factory=world.session_factory, enqueue=world.queue, poll_s=0.05, wait_s=5)
    said = out.getvalue()
    assert code == 1 and said.count("The message contains control characters") == 2
    assert "nothing is live yet" in said  # the valid line after them was answered
    assert world.messages("serve") == []
    # The operator's name and channel come from argv (surrogateescape too) and go to the audit trail.
    for channel, user in (("#support", "al\udcffice"), ("#sup\udcffport", "alice")):
        out = io.StringIO()
        code = run_console(channel, user, stdin=io.StringIO("status\n"), out=out, settings=Settings(data_dir=data_dir),
                           session_factory=world.session_factory, enqueue=world.queue, wait_s=5)
        assert code == 1 and "contains control characters" in out.getvalue()


@pytest.mark.parametrize("spelling", ["U1", "<@U1>", "<@U1|bob>", "console:U1", "@u1"])
def test_one_person_is_one_voice_however_written(session_factory, spelling):
    """Ratings, quotas, four-eyes and roles all go by registry.services.catalog.person."""
    from registry import services
    from registry.db import session_scope
    from registry.errors import OwnRunUnderFourEyes, RateLimited
    from registry.services.permissions import require_decider, require_run_quota

    register_world(session_factory)
    live = live_run(session_factory, key="k-live", version="v1")
    with session_scope(session_factory) as s:
        services.update_assistant(s, ASSISTANT, actor="test", approvers=["<@U1>"], four_eyes=True)
        answer = services.record_answer(s, s.get(Run, live).rollout, asked_by=OUTSIDER, question="reset?")
        services.rate(s, answer, user="U1", up=True)
        services.rate(s, answer, user=spelling, up=False)  # the same person changing their mind
    with session_scope(session_factory) as s:
        assert [r.up for r in s.query(Rating).filter_by(answer_id=answer.id)] == [False]
        assert services.satisfaction(s, [s.get(Run, live).rollout.id])[s.get(Run, live).rollout.id].people == 1
        assert services.is_approver(s.get(Run, live).assistant, spelling)

    with session_scope(session_factory) as s:  # the hour's one run, asked for as U1
        run, _ = services.request_run(s, assistant=ASSISTANT, version="v2", idempotency_key="q-1",
                                      requested_by="U1", channel=CHANNEL)
    with pytest.raises(RateLimited), session_scope(session_factory) as s:
        require_run_quota(s, s.get(Run, run.id).assistant, spelling, per_user=1, per_assistant=100,
                                   window_s=3600)
    with session_scope(session_factory) as s:
        with pytest.raises(OwnRunUnderFourEyes):
            require_decider(s.get(Run, run.id), spelling, CHANNEL, action="approve", approving=True)
