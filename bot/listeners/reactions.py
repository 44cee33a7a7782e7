"""👍/👎 reactions on an answer rate it (the live KPI), removing one takes the rating back; the live
guard's card is posted when it trips."""
from __future__ import annotations

import logging

from slack_bolt import App
from slack_sdk import WebClient

from portllm_core import blocks
from portllm_core.commands.handlers import rated
from portllm_core.flows.ratings import REACTIONS, rate_message, unrate_message
from bot.listeners.deps import Deps

log = logging.getLogger(__name__)


def _rating_reaction(event: dict) -> tuple[dict, bool] | None:
    """The message and 👍 (True) or 👎 (False) a reaction event is about; None for any other reaction."""
    item = event.get("item") or {}
    up = REACTIONS.get(event.get("reaction", "").split("::")[0])  # "+1::skin-tone-2" is a 👍 too
    if up is None or item.get("type") != "message" or not event.get("user"):
        return None
    return item, up


def register(app: App, deps: Deps) -> None:
    @app.event("reaction_added")
    def reaction_added(event: dict, client: WebClient) -> None:
        if (found := _rating_reaction(event)) is None:
            return
        item, up = found
        rating = rate_message(deps.session_factory, item["channel"], item["ts"], user=event["user"], up=up)
        if rating is None or rating.guard is None:  # not an answer, or nothing to say: a reaction needs no reply
            return
        reply = rated(rating)
        # The rollout's own channel, always: only there can its approvers see and use the card.
        client.chat_postMessage(channel=rating.channel, text=blocks.clip(blocks.guard_text(rating.guard), 3000),
                                blocks=blocks.reply_blocks(reply))

    @app.event("reaction_removed")
    def reaction_removed(event: dict) -> None:
        if (found := _rating_reaction(event)) is not None:
            item, up = found
            unrate_message(deps.session_factory, item["channel"], item["ts"], user=event["user"], up=up)
