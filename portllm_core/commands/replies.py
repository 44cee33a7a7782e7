"""What a handler returns: text for people, an optional card, and what to follow up on."""
from __future__ import annotations

from dataclasses import dataclass

from portllm_core.views import GuardProposal, LineageView, ReleaseView, RunCard, StatusView, Table

View = RunCard | StatusView | LineageView | Table | GuardProposal | ReleaseView


@dataclass(frozen=True)
class Reply:
    text: str  # one or a few lines for people; Slack's notification fallback; the console prints it
    ok: bool = True  # False when the command was refused (bad input, unknown name, not allowed)
    view: View | None = None
    run_id: int | None = None  # the run this command queued, for the console to follow
    reply_to: dict | None = None  # where a queued answer will be delivered
    in_channel: bool = False  # Slack: a state change everyone should see, not an ephemeral reply
    unreachable: bool = False  # the registry could not be reached: nothing was done, the same request may retry


REGISTRY_UNREACHABLE = Reply("The registry is unreachable; nothing was requested. Try again in a minute.",
                             ok=False, unreachable=True)
