"""The bot's /metrics over HTTP: gunicorn with two workers on loopback, signed requests, then a scrape."""
from __future__ import annotations

import time

import pytest

from registry import services
from registry.db import session_scope
from registry.models import Rating, Run
from tests.bot import slack_http
from tests.bot.conftest import APPROVER, ASSISTANT, CHANNEL, OUTSIDER, live_run
from tests.fixtures.fake_slack import BOT_USER_ID
from tests.fixtures.metrics import scrape

QUESTION = "how do I reset the frobnicator?"


@pytest.fixture
def server(world, fake_slack, migrated_url, data_dir, tmp_path):
    env = {"PORTLLM_DATA_DIR": str(data_dir), "PORTLLM_DATABASE_URL": migrated_url,
           "SLACK_BOT_TOKEN": "xoxb-test-token", "SLACK_SIGNING_SECRET": slack_http.SIGNING_SECRET,
           "SLACK_API_URL": fake_slack.url, "PORTLLM_RUNS_PER_USER_PER_HOUR": "1"}
    # Two gunicorn workers: a scrape answered by either must add up what both counted.
    running = slack_http.start_server(env, tmp_path / "server.log", workers=2, threads=8)
    yield running
    running.stop()


def command(server, fake_slack, text: str, *, user: str, channel: str = CHANNEL, name: str) -> str:
    response = slack_http.slash(server.url, text, user=user, channel=channel, trigger_id=f"trig-{name}",
                                response_url=fake_slack.url + f"response/{name}")
    assert response.status_code == 200
    [reply] = fake_slack.wait_for(f"response/{name}", 1)
    return reply.body["text"]


def test_the_bot_counts_requests_refusals_and_ratings_and_reads_live_rollouts(server, world, fake_slack):
    metrics_url = server.url.replace("/slack/events", "/metrics")
    live = live_run(world.session_factory, key="k-live", version="v1")
    with session_scope(world.session_factory) as s:
        answer = services.record_answer(s, s.get(Run, live).rollout, asked_by=OUTSIDER, question=QUESTION)
        services.set_answer_message(s, answer.id, "1700000000.000100")
    before = scrape(metrics_url)
    assert before.value("portllm_rollouts_live", assistant=ASSISTANT) == 1
    assert before.value("portllm_runs_requested_total") == 0

    assert "queued" in command(server, fake_slack, "patch support-assistant onto v2", user=OUTSIDER, name="ok")
    with world.session_factory() as s:
        run_id = s.query(Run).filter_by(requested_by=OUTSIDER).one().id
    assert "the most allowed" in command(server, fake_slack, "patch support-assistant onto v3", user=OUTSIDER,
                                         name="quota")
    assert "not an approver" in command(server, fake_slack, f"approve {run_id}", user=OUTSIDER, name="perm")
    assert "belongs to" in command(server, fake_slack, f"approve {run_id}", user=APPROVER, channel="COTHER1",
                                   name="channel")
    response = slack_http.event(server.url, {"type": "reaction_added", "user": OUTSIDER, "reaction": "+1",
                                             "item": {"type": "message", "channel": CHANNEL, "ts": "1700000000.000100"},
                                             "event_ts": "1700000000.5"}, event_id="Ev-rate", bot_user=BOT_USER_ID)
    assert response.status_code == 200
    deadline = time.monotonic() + 10  # Bolt acks first and rates after
    while time.monotonic() < deadline:
        with world.session_factory() as s:
            if s.query(Rating).count():
                break
        time.sleep(0.05)

    for _ in range(6):  # whichever gunicorn worker answers, it reads what both counted
        after = scrape(metrics_url)
        assert after.value("portllm_runs_requested_total", assistant=ASSISTANT, channel=CHANNEL,
                           kind="transplant") == 1
        assert after.value("portllm_refusals_total", reason="rate_limit") == 1
        assert after.value("portllm_refusals_total", reason="permission") == 1
        assert after.value("portllm_refusals_total", reason="channel_scope") == 1
        assert after.value("portllm_ratings_up_total", assistant=ASSISTANT, channel=CHANNEL) == 1
        assert after.value("portllm_ratings_down_total") == 0
        assert after.value("portllm_rollouts_live", assistant=ASSISTANT) == 1
        after.assert_only_allowed_labels(forbidden={APPROVER, OUTSIDER, QUESTION, "patch support-assistant onto v2"})
