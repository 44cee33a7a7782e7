"""Notifiers: the console outbox, and Slack against a local fake of its Web API."""
from __future__ import annotations

import json
import time

import pytest
from slack_sdk import WebClient
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler

from registry import services
from registry.db import session_scope
from registry.models import Run
from tests.workers.seed import request, seed_fake
from workers.notify import ConsoleNotifier, SlackNotifier, Throttle, make_notifier
from portllm_core.settings import Settings, SettingsError


@pytest.fixture
def session_factory(tmp_path):
    """SQLite only: what is tested here is the Slack and console side, not the database."""
    from registry.cli import upgrade
    from registry.db import make_session_factory

    url = f"sqlite:///{tmp_path / 'registry.db'}"
    upgrade(url)
    factory = make_session_factory(url)
    yield factory
    factory.kw["bind"].dispose()


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def slack(fake, session_factory, interval: float = 1.0) -> SlackNotifier:
    client = WebClient(token="xoxb-test", base_url=fake.url)
    client.retry_handlers.append(RateLimitErrorRetryHandler(max_retry_count=2))
    return SlackNotifier(client, session_factory, interval=interval)


def progress(session_factory, run_id: int, value: float, step: str) -> None:
    with session_scope(session_factory) as s:
        services.report_progress(s, run_id, value, step)


def test_throttle_lets_one_update_a_second_and_every_final_one():
    now = [0.0]
    throttle = Throttle(1.0, clock=lambda: now[0])
    assert throttle.allow(1) and not throttle.allow(1) and throttle.allow(2)
    assert throttle.allow(1, final=True)
    now[0] = 1.0
    assert throttle.allow(1)


def test_console_notifier_writes_run_events_and_answers(session_factory, tmp_path):
    run_id = seed_fake(session_factory)
    outbox = tmp_path / "console" / "outbox.jsonl"
    notifier = ConsoleNotifier(outbox, session_factory, interval=60)
    notifier.run_changed(run_id)
    notifier.run_changed(run_id)  # throttled
    notifier.run_changed(run_id, final=True)
    text = notifier.answer_stream({"channel": "#support", "id": 7}, iter(["Hel", "lo"]))
    events = lines(outbox)
    assert [e["type"] for e in events] == ["run", "run", "answer_chunk", "answer_chunk", "answer_done"]
    assert events[0]["run_id"] == run_id and events[0]["status"] == "queued" and not events[0]["final"]
    assert f"Run #{run_id}" in events[0]["text"] and events[1]["final"]
    assert text == "Hello" and events[-1] == {"type": "answer_done", "reply_to": {"channel": "#support", "id": 7}, "text": "Hello"}


def test_slack_run_message_is_posted_once_then_updated_at_most_once_a_second(session_factory, fake_slack):
    run_id = seed_fake(session_factory)
    notifier = slack(fake_slack, session_factory)
    with session_scope(session_factory) as s:
        services.claim_run(s, run_id, "w1")
    started = time.monotonic()
    while time.monotonic() - started < 2.5:  # a worker reporting progress far faster than Slack allows
        progress(session_factory, run_id, min((time.monotonic() - started) / 3, 1), "evaluating")
        notifier.run_changed(run_id)
        time.sleep(0.05)
    notifier.run_changed(run_id, final=True)
    posts, updates = fake_slack.calls_to("chat.postMessage"), fake_slack.calls_to("chat.update")
    assert len(posts) == 1 and posts[0].body["channel"] == "#support"
    assert 2 <= len(updates) <= 4  # ~1/s for 2.5 s, plus the final one
    gaps = [b.at - a.at for a, b in zip(updates, updates[1:-1])]
    assert all(gap >= 0.9 for gap in gaps)
    assert len({u.body["ts"] for u in updates}) == 1  # one message, updated in place
    with session_factory() as s:
        assert s.get(Run, run_id).notify_ref == {"channel": "#support", "ts": updates[0].body["ts"]}
    assert any(b.get("block_id") == "portllm_run_progress" for b in updates[0].body["blocks"])


def test_slack_update_rides_out_a_rate_limit(session_factory, fake_slack):
    run_id = seed_fake(session_factory)
    second = request(session_factory, "v2", key="fake-2", notify_ref={"channel": "C1", "ts": "1.000001"})
    notifier = slack(fake_slack, session_factory)
    fake_slack.rate_limit("chat.update", times=1, retry_after=1)
    notifier.run_changed(second, final=True)
    updates = fake_slack.calls_to("chat.update")
    assert len(updates) == 2 and updates[1].at - updates[0].at >= 0.9  # waited Retry-After, then won
    assert updates[1].body["channel"] == "C1" and updates[1].body["ts"] == "1.000001"
    assert not fake_slack.calls_to("chat.postMessage") and run_id != second


def test_slack_answer_streams_into_the_thread(session_factory, fake_slack):
    notifier = slack(fake_slack, session_factory, interval=0.0)
    reply_to = {"channel": "C1", "thread_ts": "1.000001", "user": "U1", "team": "T1"}
    assert notifier.answer_stream(reply_to, iter(["The ", "answer."])) == "The answer."
    start = fake_slack.calls_to("chat.startStream")
    assert len(start) == 1 and start[0].body["thread_ts"] == "1.000001"
    assert fake_slack.calls_to("chat.stopStream")
    assert not fake_slack.calls_to("chat.postMessage")


def live_answer(session_factory) -> int:
    """An answer row of a live rollout, as the worker records it before generating."""
    run_id = seed_fake(session_factory)
    with session_scope(session_factory) as s:
        services.claim_run(s, run_id, "w1")
        services.finish_run(s, run_id, status="succeeded")
        rollout = services.open_rollout(s, run_id, verdict="pass")
        services.decide_rollout(s, run_id, approve=True, user="alice")
        return services.record_answer(s, rollout, asked_by="U1", question="q").id


@pytest.mark.parametrize("streaming", [True, False])
def test_a_posted_answer_remembers_its_message_so_reactions_rate_it(session_factory, fake_slack, streaming):
    answer_id = live_answer(session_factory)
    notifier = slack(fake_slack, session_factory, interval=0.0)
    if not streaming:
        fake_slack.fail("chat.startStream", "unknown_method")
    reply_to = {"channel": "C1", "thread_ts": "1.000001", "user": "U1", "team": "T1", "answer_id": answer_id}
    notifier.answer_stream(reply_to, iter(["The ", "answer."]))
    with session_factory() as s:
        ts = services.get_answer(s, answer_id).message_ts
    assert ts  # the stream's (or the fallback message's) ts, which reaction events name
    assert fake_slack.calls_to("chat.startStream" if streaming else "chat.postMessage")


def test_slack_answer_falls_back_to_updates_where_streaming_is_refused(session_factory, fake_slack):
    notifier = slack(fake_slack, session_factory, interval=0.0)
    fake_slack.fail("chat.startStream", "unknown_method")
    reply_to = {"channel": "C1", "thread_ts": "1.000001", "user": "U1", "team": "T1"}
    assert notifier.answer_stream(reply_to, iter(["The ", "answer", "."])) == "The answer."
    posts, updates = fake_slack.calls_to("chat.postMessage"), fake_slack.calls_to("chat.update")
    assert len(posts) == 1 and posts[0].body["thread_ts"] == "1.000001"
    assert posts[0].body["text"] == "The answer"  # the piece the refused stream held is not lost
    assert [u.body["text"] for u in updates] == ["The answer."]


def test_slack_notifier_needs_a_token(session_factory, monkeypatch):
    monkeypatch.delenv("SLACK_BOT_TOKEN", raising=False)
    with pytest.raises(SettingsError, match="SLACK_BOT_TOKEN"):
        make_notifier(Settings(notifier="slack"), session_factory)


def test_the_slack_notifier_is_built_from_slack_settings(session_factory, fake_slack, monkeypatch):
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-test")
    monkeypatch.setenv("SLACK_API_URL", fake_slack.url)
    notifier = make_notifier(Settings(notifier="slack"), session_factory)
    assert notifier.client.base_url == fake_slack.url
    assert any(isinstance(h, RateLimitErrorRetryHandler) for h in notifier.client.retry_handlers)
    notifier.run_changed(seed_fake(session_factory), final=True)
    assert fake_slack.calls_to("chat.postMessage")[0].headers["authorization"] == "Bearer xoxb-test"


def test_slack_being_unreachable_never_breaks_a_run(session_factory):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    notifier = SlackNotifier(WebClient(token="xoxb-test", base_url=f"http://127.0.0.1:{port}/api/", timeout=2),
                             session_factory)
    notifier.run_changed(seed_fake(session_factory), final=True)  # logged, not raised
    reply_to = {"channel": "C1", "thread_ts": "1.000001", "user": "U1", "team": "T1"}
    assert notifier.answer_stream(reply_to, iter(["still ", "returns"])) == "still returns"


HOSTILE = ["Sure. <!channel> see ", "<https://evil.example|reset your password>", " & more"]
ESCAPED = "Sure. &lt;!channel&gt; see &lt;https://evil.example|reset your password&gt; &amp; more"


def test_a_streamed_answer_cannot_ping_the_channel_or_disguise_a_link(session_factory, fake_slack):
    notifier = slack(fake_slack, session_factory, interval=0.0)
    reply_to = {"channel": "C1", "thread_ts": "1.000001", "user": "U1", "team": "T1"}
    assert notifier.answer_stream(reply_to, iter(HOSTILE)) == "".join(HOSTILE)  # the answer as generated
    streamed = "".join(chunk["text"] if isinstance(chunk, dict) else ""
                       for method in ("chat.startStream", "chat.appendStream", "chat.stopStream")
                       for call in fake_slack.calls_to(method)
                       for chunk in [*call.body.get("chunks", []), {"text": call.body.get("markdown_text", "")}])
    assert streamed == ESCAPED


def test_an_answer_posted_by_updates_is_escaped_too(session_factory, fake_slack):
    notifier = slack(fake_slack, session_factory, interval=0.0)
    fake_slack.fail("chat.startStream", "unknown_method")
    notifier.answer_stream({"channel": "C1", "thread_ts": "1.000001"}, iter(HOSTILE))
    texts = [c.body["text"] for c in fake_slack.calls_to("chat.postMessage") + fake_slack.calls_to("chat.update")]
    assert texts[-1] == ESCAPED and not any("<!channel>" in text for text in texts)
