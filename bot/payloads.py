"""Which signed bodies are Slack payloads of a kind the listeners handle.

Bolt and the listeners read fields without checking their types (`body["user"]["id"]`,
`event["channel"]`): a signed body of another shape (a list, a number, an `event` that is a
string, JSON nested past the parser's depth) would raise inside them and answer 500 with a
traceback. The request guard asks `handled` first and refuses anything else with 400.
"""
from __future__ import annotations

from typing import Any

from slack_bolt.request import BoltRequest

# The fields the listeners read, per kind: each must be a string where it is present.
COMMAND_FIELDS = ("command", "text", "user_id", "channel_id", "team_id", "trigger_id", "response_url")
EVENT_FIELDS = {
    "app_mention": ("channel", "ts", "thread_ts", "text", "user"),
    "message": ("channel", "ts", "thread_ts", "text", "user", "subtype", "bot_id", "channel_type",
                "parent_user_id"),
    "reaction_added": ("reaction", "user"),
    "reaction_removed": ("reaction", "user"),
    "app_home_opened": ("user", "tab"),
}
REQUIRED_EVENT_FIELDS = {"app_mention": ("channel", "ts"), "message": ("channel", "ts")}
ITEM_FIELDS = ("type", "channel", "ts")
ACTION_FIELDS = ("action_id", "value", "action_ts")


def handled(text: str, content_type: str | None) -> bool:
    """Whether `text` parses as Bolt parses it into a slash command, a card click, an event we
    listen to, or Slack's URL or SSL check, with the fields we read of the types we expect."""
    try:
        # Bolt's own parsing and context building: what it would choke on, it chokes on here.
        body = BoltRequest(body=text, headers={"content-type": content_type or ""}).body
    except Exception:  # bad JSON, too deep for the parser (RecursionError), odd shapes in Bolt's extractors
        return False
    if not isinstance(body, dict):
        return False
    if "command" in body:
        return _strings(body, COMMAND_FIELDS)
    if body.get("ssl_check") == "1":
        return True
    kind = body.get("type")
    if kind == "url_verification":
        return isinstance(body.get("challenge"), str)
    if kind == "event_callback":
        return isinstance(body.get("event_id"), str) and _event(body.get("event"))
    if kind == "block_actions":
        return _click(body)
    return False


def _event(event: Any) -> bool:
    if not isinstance(event, dict) or event.get("type") not in EVENT_FIELDS:
        return False
    kind = event["type"]
    required = all(isinstance(event.get(name), str) for name in REQUIRED_EVENT_FIELDS.get(kind, ()))
    item = event.get("item", {})
    return required and _strings(event, EVENT_FIELDS[kind]) and isinstance(item, dict) and _strings(item, ITEM_FIELDS)


def _click(body: dict) -> bool:
    actions, user = body.get("actions"), body.get("user")
    channel, container = body.get("channel", {}), body.get("container", {})
    return (isinstance(actions, list) and bool(actions) and isinstance(actions[0], dict)
            and _strings(actions[0], ACTION_FIELDS) and isinstance(user, dict) and isinstance(user.get("id"), str)
            and isinstance(channel, dict) and isinstance(container, dict)
            and _strings(channel, ("id",)) and _strings(container, ("channel_id", "message_ts")))


def _strings(mapping: dict, names: tuple[str, ...]) -> bool:
    return all(isinstance(mapping[name], str) for name in names if name in mapping)
