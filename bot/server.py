"""Serve the Slack app: gunicorn over HTTP on /slack/events, or Socket Mode.

Not Bolt's development server: its listen backlog of 5 resets connections in a burst of
commands, and it serves one request at a time. gunicorn's gthread workers give a deep backlog
and a thread per in-flight request; each worker builds its own app after the fork, so database
and broker connections are never shared between processes.
"""
from __future__ import annotations

import io
import logging

from gunicorn.app.base import BaseApplication
from slack_sdk.signature import SignatureVerifier

from bot.payloads import handled

from portllm_core.settings import Settings, require

log = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"
HEALTH_PATH = "/healthz"  # for load balancers and the compose health check; says nothing else
METRICS_PATH = "/metrics"  # Prometheus (portllm_core.metrics): for the operator's scraper, not for Slack


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

        from portllm_core import metrics
        from portllm_core.tasks import TaskQueue
        from bot.slack_app import build_app, signing_secret
        from portllm_core.workspace import open_registry

        queue = TaskQueue(self.settings)
        queue.connect()  # before the first command, not during it
        session_factory = open_registry(self.settings)
        bolt = SlackRequestHandler(build_app(self.settings, session_factory, enqueue=queue), path=EVENTS_PATH)
        guarded = with_request_guard(bolt, signing_secret=signing_secret(self.settings),
                                     max_body_bytes=self.settings.max_request_bytes)
        return with_health_check(with_metrics(guarded, metrics.scrape_registry(session_factory)))


def with_request_guard(handler, *, signing_secret: str, max_body_bytes: int):
    """Refuse what Bolt should never see, before it reads or parses anything.

    A body over `max_body_bytes` is refused with 413 by its Content-Length, unread (one without
    a length is read only up to the limit); an unsigned, stale or badly signed request gets 401;
    a signed body that is not a Slack payload we handle gets 400 and one log line (in Bolt it
    would escape as a 500 with a traceback).
    """
    verifier = SignatureVerifier(signing_secret)

    def app(environ, start_response):
        if environ.get("PATH_INFO") != EVENTS_PATH or environ.get("REQUEST_METHOD") != "POST":
            return handler(environ, start_response)
        body = _bounded_body(environ, max_body_bytes)
        if body is None:
            return _refuse(start_response, "413 Request Entity Too Large",
                           f"request body over {max_body_bytes} bytes")
        content_type = (environ.get("CONTENT_TYPE") or "").split(";")[0].strip() or None
        if not _signed(verifier, body, environ):
            return _refuse(start_response, "401 Unauthorized", "invalid request")
        if not _handled(body, content_type):
            log.warning("refused a signed request that is not a Slack payload we handle (%d bytes, %s)",
                        len(body), content_type or "no content type")
            return _refuse(start_response, "400 Bad Request", "not a Slack payload this app handles")
        environ["wsgi.input"] = io.BytesIO(body)  # what Bolt reads: the bytes already checked
        environ["CONTENT_LENGTH"] = str(len(body))
        return handler(environ, start_response)

    return app


def _bounded_body(environ, limit: int) -> bytes | None:
    """The request body, or None when it is longer than `limit` bytes."""
    try:
        declared = int(environ.get("CONTENT_LENGTH") or -1)
    except ValueError:
        return None
    if declared > limit:
        return None
    body = environ["wsgi.input"].read(declared if declared >= 0 else limit + 1)
    return body if len(body) <= limit else None


def _signed(verifier: SignatureVerifier, body: bytes, environ) -> bool:
    timestamp = environ.get("HTTP_X_SLACK_REQUEST_TIMESTAMP", "")
    signature = environ.get("HTTP_X_SLACK_SIGNATURE", "")
    try:
        return bool(signature) and verifier.is_valid(body, timestamp, signature)
    except (ValueError, TypeError):  # int() of `²` (isdigit() is true); compare_digest of non-ASCII
        return False


def _handled(body: bytes, content_type: str | None) -> bool:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return handled(text, content_type)


def _refuse(start_response, status: str, reason: str):
    body = reason.encode()
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body))),
                            ("Connection", "close")])
    return [body]


def with_health_check(handler):
    """Answer GET /healthz with 200 without touching Slack's handler (no signature to check)."""

    def app(environ, start_response):
        if environ.get("PATH_INFO") == HEALTH_PATH and environ.get("REQUEST_METHOD") == "GET":
            start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
            return [b"ok"]
        return handler(environ, start_response)

    return app


def with_metrics(handler, registry):
    """Answer GET /metrics from `registry` (every gunicorn worker's values) beside Slack's handler."""
    from prometheus_client import make_wsgi_app

    metrics_app = make_wsgi_app(registry)

    def app(environ, start_response):
        if environ.get("PATH_INFO") == METRICS_PATH and environ.get("REQUEST_METHOD") == "GET":
            return metrics_app(environ, start_response)
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
    from bot.slack_app import signing_secret

    settings = settings or Settings()
    signing_secret(settings)  # refuse to start without real secrets, before forking workers
    require(settings.slack_bot_token, "SLACK_BOT_TOKEN", "the bot token (xoxb-…) from the Slack app")
    from portllm_core import metrics

    # gunicorn forks its workers after this: each counts in its own files, /metrics adds them up.
    metrics.share_with_forked_processes(metrics.process_dir(settings.metrics_dir, "bot", port))
    _Gunicorn(settings, gunicorn_options(port, host, workers, threads)).run()


def serve_socket(settings: Settings | None = None) -> None:
    """Connect to Slack over Socket Mode (SLACK_APP_TOKEN, xapp-…): no public URL needed."""
    from slack_bolt.adapter.socket_mode import SocketModeHandler

    from portllm_core.tasks import TaskQueue
    from bot.slack_app import build_app
    from portllm_core.workspace import open_registry

    settings = settings or Settings()
    app_token = require(settings.slack_app_token, "SLACK_APP_TOKEN",
                        "an app-level token (xapp-…) with connections:write, for Socket Mode")
    logging.basicConfig(level=logging.INFO)
    queue = TaskQueue(settings)
    queue.connect()
    session_factory = open_registry(settings)
    if settings.metrics_port is not None:  # no HTTP server of its own: Prometheus gets a port
        from prometheus_client import start_http_server

        from portllm_core import metrics

        metrics.share_with_forked_processes(metrics.process_dir(settings.metrics_dir, "bot", settings.metrics_port))
        start_http_server(settings.metrics_port, registry=metrics.scrape_registry(session_factory))
    # The handler's Web API client is the app's, so SLACK_API_URL applies to it as well.
    SocketModeHandler(build_app(settings, session_factory, enqueue=queue, socket_mode=True), app_token).start()
