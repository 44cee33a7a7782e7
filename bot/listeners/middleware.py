"""Drop Slack's redeliveries of events before any listener sees them."""
from __future__ import annotations

from collections.abc import Callable

from slack_bolt import App, BoltRequest, BoltResponse

from bot.listeners.deps import Deps

# Slack retries an event it got no 2xx for within 3 s. Our listeners ack at once, so a retry
# for a timeout means the first delivery reached us and is being handled (by this or another
# worker process). Other reasons (connection failed, HTTP error) may mean it never ran: those
# are processed, unless this process already handled the same event_id.
SKIP_RETRY_REASONS = frozenset({"http_timeout"})


def register(app: App, deps: Deps) -> None:
    @app.middleware
    def skip_redelivered_events(req: BoltRequest, resp: BoltResponse, next: Callable[[], BoltResponse]):
        if req.body.get("type") != "event_callback":
            return next()
        retry_num = _header(req, "x-slack-retry-num")
        retry_reason = _header(req, "x-slack-retry-reason")
        if retry_num and retry_reason in SKIP_RETRY_REASONS:
            return BoltResponse(status=200, body="")
        event_id = req.body.get("event_id")
        if event_id and not deps.seen.first_time(f"event:{event_id}"):
            return BoltResponse(status=200, body="")
        return next()


def _header(req: BoltRequest, name: str) -> str | None:
    values = req.headers.get(name)
    return values[0] if values else None
