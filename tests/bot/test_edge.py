"""Issue 26, items 5-7, through the real edge: gunicorn serving the Bolt app over signed HTTP, a fake
Web API, a PostgreSQL server of the test's own stopped and started under the bot, both dedupe stores."""
from __future__ import annotations

import json
import time

import pytest
import requests

from tests.bot import slack_http
from tests.bot.conftest import CHANNEL, OUTSIDER

ENV = {"SLACK_BOT_TOKEN": "xoxb-test-token", "SLACK_SIGNING_SECRET": slack_http.SIGNING_SECRET}


@pytest.fixture
def serve(fake_slack, data_dir, tmp_path):
    """Start one app process (gunicorn) with the given env on top of the test's; stopped after."""
    started: list[slack_http.Server] = []

    def start(**env: str) -> slack_http.Server:
        full = {**ENV, "PORTLLM_DATA_DIR": str(data_dir), "SLACK_API_URL": fake_slack.url, **env}
        server = slack_http.start_server(full, tmp_path / f"server-{len(started)}.log", workers=1, threads=8)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def response_url(fake_slack, name: str) -> str:
    return fake_slack.url + f"response/{name}"


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
                          response_url=response_url(fake_slack, "ok"))
    assert ok.status_code == 200 and "PortLLM commands" in ok.json()["text"]
    log = (tmp_path / "server-0.log").read_text()
    assert "Traceback" not in log
    assert log.count("refused a signed request that is not a Slack payload we handle") == 4
