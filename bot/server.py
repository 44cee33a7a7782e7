"""Serve the Slack app: gunicorn over HTTP on /slack/events, or Socket Mode.

Not Bolt's development server: its listen backlog of 5 resets connections in a burst of
commands, and it serves one request at a time. gunicorn's gthread workers give a deep backlog
and a thread per in-flight request; each worker builds its own app after the fork, so database
and broker connections are never shared between processes.
"""
from __future__ import annotations

import logging

from gunicorn.app.base import BaseApplication

from portllm_core.settings import Settings, require

EVENTS_PATH = "/slack/events"
HEALTH_PATH = "/healthz"  # for load balancers and the compose health check; says nothing else


class _Gunicorn(BaseApplication):
    def __init__(self, settings: Settings, options: dict) -> None:
        self.settings = settings
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        from slack_bolt.adapter.wsgi import SlackRequestHandler

        from portllm_core.tasks import TaskQueue
        from bot.slack_app import build_app

        queue = TaskQueue(self.settings)
        queue.connect()  # before the first command, not during it
        return with_health_check(SlackRequestHandler(build_app(self.settings, enqueue=queue), path=EVENTS_PATH))


def with_health_check(handler):
    """Answer GET /healthz with 200 without touching Slack's handler (no signature to check)."""

    def app(environ, start_response):
        if environ.get("PATH_INFO") == HEALTH_PATH and environ.get("REQUEST_METHOD") == "GET":
            start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
            return [b"ok"]
        return handler(environ, start_response)

    return app


def gunicorn_options(port: int, host: str, workers: int, threads: int) -> dict:
    return {
        "bind": f"{host}:{port}",
        "worker_class": "gthread",
        "workers": workers,
        "threads": threads,
        # Connections Slack may open at once before a worker accepts them (a burst of commands).
        "backlog": 2048,
        "timeout": 60,
        "graceful_timeout": 10,
        "keepalive": 5,
        "accesslog": None,  # every request line would read "POST /slack/events"
        "errorlog": "-",
        "loglevel": "info",
        "proc_name": "portllm-slack",
        # gunicorn's runtime control socket sits at one fixed path per user: two servers would share it.
        "control_socket_disable": True,
    }


def serve_http(port: int, host: str = "0.0.0.0", *, settings: Settings | None = None,
               workers: int = 2, threads: int = 32) -> None:
    """Serve commands, interactivity and events on http://host:port/slack/events until stopped."""
    settings = settings or Settings()
    require(settings.slack_signing_secret, "SLACK_SIGNING_SECRET",
            "Slack's signing secret, to verify that requests come from Slack")
    require(settings.slack_bot_token, "SLACK_BOT_TOKEN", "the bot token (xoxb-…) from the Slack app")
    _Gunicorn(settings, gunicorn_options(port, host, workers, threads)).run()


def serve_socket(settings: Settings | None = None) -> None:
    """Connect to Slack over Socket Mode (SLACK_APP_TOKEN, xapp-…): no public URL needed."""
    from slack_bolt.adapter.socket_mode import SocketModeHandler

    from portllm_core.tasks import TaskQueue
    from bot.slack_app import build_app

    settings = settings or Settings()
    app_token = require(settings.slack_app_token, "SLACK_APP_TOKEN",
                        "an app-level token (xapp-…) with connections:write, for Socket Mode")
    logging.basicConfig(level=logging.INFO)
    queue = TaskQueue(settings)
    queue.connect()
    # The handler's Web API client is the app's, so SLACK_API_URL applies to it as well.
    SocketModeHandler(build_app(settings, enqueue=queue, socket_mode=True), app_token).start()
