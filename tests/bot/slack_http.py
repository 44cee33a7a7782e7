"""Signed requests to the Slack app over HTTP, as Slack sends them; and the server under test."""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import requests

from tests.fixtures.services import free_port

SIGNING_SECRET = "test-signing-secret-0123456789abcdef"
TEAM = "T0PORTLLM"
REPO = Path(__file__).resolve().parents[2]


def sign(body: str, timestamp: int, secret: str = SIGNING_SECRET) -> str:
    base = f"v0:{timestamp}:{body}".encode()
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def post(url: str, body: str, content_type: str, *, secret: str = SIGNING_SECRET, timestamp: int | None = None,
         headers: dict | None = None, session: requests.Session | None = None) -> requests.Response:
    timestamp = int(time.time()) if timestamp is None else timestamp
    all_headers = {"Content-Type": content_type, "X-Slack-Request-Timestamp": str(timestamp),
                   "X-Slack-Signature": sign(body, timestamp, secret), **(headers or {})}
    return (session or requests).post(url, data=body.encode(), headers=all_headers, timeout=10)


def command_body(text: str, *, user: str, channel: str, trigger_id: str, response_url: str) -> str:
    return urlencode({"token": "legacy", "team_id": TEAM, "team_domain": "fake", "channel_id": channel,
                      "channel_name": "support", "user_id": user, "user_name": user.lower(),
                      "command": "/portllm", "text": text, "api_app_id": "A0PORTLLM",
                      "response_url": response_url, "trigger_id": trigger_id})


def slash(url: str, text: str, *, user: str, channel: str, trigger_id: str, response_url: str,
          **kwargs) -> requests.Response:
    body = command_body(text, user=user, channel=channel, trigger_id=trigger_id, response_url=response_url)
    return post(url, body, "application/x-www-form-urlencoded", **kwargs)


def click(url: str, action_id: str, run_id: int, *, user: str, channel: str, message_ts: str,
          response_url: str, **kwargs) -> requests.Response:
    payload = {
        "type": "block_actions", "team": {"id": TEAM, "domain": "fake"}, "api_app_id": "A0PORTLLM",
        "user": {"id": user, "username": user.lower(), "team_id": TEAM},
        "channel": {"id": channel, "name": "support"},
        "container": {"type": "message", "message_ts": message_ts, "channel_id": channel, "is_ephemeral": False},
        "message": {"type": "message", "ts": message_ts, "text": "run card", "blocks": []},
        "trigger_id": f"trig-{time.time_ns()}", "response_url": response_url,
        "actions": [{"type": "button", "action_id": action_id, "block_id": "portllm_run_actions",
                     "value": str(run_id), "action_ts": f"{time.time():.6f}"}],
    }
    return post(url, urlencode({"payload": json.dumps(payload)}), "application/x-www-form-urlencoded", **kwargs)


def event(url: str, event_body: dict, *, event_id: str, bot_user: str, headers: dict | None = None,
          **kwargs) -> requests.Response:
    envelope = {"token": "legacy", "team_id": TEAM, "api_app_id": "A0PORTLLM", "event": event_body,
                "type": "event_callback", "event_id": event_id, "event_time": int(time.time()),
                "authorizations": [{"team_id": TEAM, "user_id": bot_user, "is_bot": True}]}
    return post(url, json.dumps(envelope), "application/json", headers=headers, **kwargs)


@dataclass
class Server:
    url: str
    process: subprocess.Popen

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)  # gunicorn's quick shutdown; TERM waits for keep-alives
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_server(env: dict[str, str], log_path: Path, *, workers: int = 1, threads: int = 16,
                 timeout_s: float = 60.0) -> Server:
    """`bot.server.serve_http` (gunicorn) in a child process; returns once it answers on the port."""
    port = free_port()
    code = f"from bot.server import serve_http; serve_http({port}, '127.0.0.1', workers={workers}, threads={threads})"
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env={**os.environ, **env},
                                   stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {log_path.read_text()[-3000:]}")
        try:
            if requests.get(base + "/healthz", timeout=2).status_code == 200:
                return Server(base + "/slack/events", process)
            raise RuntimeError(f"/healthz did not answer 200: {log_path.read_text()[-3000:]}")
        except requests.RequestException:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("server did not start in time")


@contextmanager
def app_servers(base_env: dict[str, str], log_dir: Path) -> Iterator[Callable[..., Server]]:
    """A starter of app processes (gunicorn), each with `base_env` and the given env on top; every
    one it started is stopped at the end."""
    started: list[Server] = []

    def start(**env: str) -> Server:
        server = start_server({**base_env, **env}, log_dir / f"server-{len(started)}.log", workers=1, threads=8)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


def response_url(fake_slack, name: str) -> str:
    """Where the fake Web API takes a slash command's or a click's delayed replies."""
    return fake_slack.url + f"response/{name}"
