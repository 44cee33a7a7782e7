"""Drop Slack's redeliveries of events before any listener sees them."""
from __future__ import annotations

from collections.abc import Callable

from slack_bolt import App, BoltRequest, BoltResponse

from bot.listeners.deps import Deps


def register(app: App, deps: Deps) -> None:
    @app.middleware
    def skip_redelivered_events(req: BoltRequest, resp: BoltResponse, next: Callable[[], BoltResponse]):
        # A retry (or a copy on another process) of an event some process already claimed is
        # acknowledged and dropped; one whose first delivery never reached us is processed.
        event_id = req.body.get("event_id") if req.body.get("type") == "event_callback" else None
        if event_id and not deps.seen.first_time(f"event:{event_id}"):
            return BoltResponse(status=200, body="")
        return next()
