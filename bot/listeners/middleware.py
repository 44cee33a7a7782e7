"""Drop Slack's redeliveries of events before any listener sees them; give a failed event's
claims back and answer 5xx, so that Slack's retry is handled once the cause is gone."""
from __future__ import annotations

import logging
from collections.abc import Callable

from slack_bolt import App, BoltContext, BoltRequest, BoltResponse

from bot.listeners.deps import CLAIMS, Deps, Retry
from registry.db import outage_reason, unreachable

log = logging.getLogger(__name__)


def register(app: App, deps: Deps) -> None:
    @app.middleware
    def skip_redelivered_events(req: BoltRequest, resp: BoltResponse, next: Callable[[], BoltResponse]):
        # A retry (or a copy on another process) of an event some process already claimed is
        # acknowledged and dropped; one whose first delivery never reached us is processed.
        event_id = req.body.get("event_id") if req.body.get("type") == "event_callback" else None
        if event_id and not deps.claim(f"event:{event_id}", req.context):
            return BoltResponse(status=200, body="")
        return next()

    @app.error
    def handling_failed(error: Exception, context: BoltContext, body: dict) -> BoltResponse:
        # Events are handled before the answer (process_before_response): a 5xx makes Slack retry,
        # and the claims given back let that retry through. Clicks and commands ack first and get
        # here only for a fault before their ack.
        for key in context.get(CLAIMS, []):
            try:
                deps.seen.forget(key)
            except Exception as exc:  # the store is down too: the retry will be dropped as seen
                log.warning("could not give back the claim %s: %s", key, exc)
        kind = body.get("event", {}).get("type") if isinstance(body.get("event"), dict) else body.get("type")
        if isinstance(error, Retry) or unreachable(error):
            why = str(error) if isinstance(error, Retry) else f"the registry is unreachable: {outage_reason(error)}"
            log.warning("%s not handled (%s); answered 503 for Slack to retry", kind or "request", why)
            return BoltResponse(status=503, body="")
        log.error("%s not handled: answered 500 for Slack to retry", kind or "request", exc_info=error)
        return BoltResponse(status=500, body="")
