"""@mentions, thread replies and direct messages: questions for the channel's live assistant, or commands.

An @mention arrives twice (app_mention and message events, different event ids): both go
through one claim on (channel, ts), so the first one answers and the second does nothing.
"""
from __future__ import annotations

import re

from slack_bolt import App, BoltContext
from slack_sdk import WebClient

from portllm_core import blocks, views
from portllm_core.commands import grammar
from portllm_core.commands.handlers import run_command
from portllm_core.commands.replies import Reply
from bot.listeners.deps import Deps, Retry

_MENTION = re.compile(r"<@[A-Z0-9]+(?:\|[^>]*)?>")


def register(app: App, deps: Deps) -> None:
    def answer(event: dict, client: WebClient, context: BoltContext) -> None:
        channel, ts = event["channel"], event["ts"]
        thread_ts = event.get("thread_ts") or ts
        ctx = deps.context(user=event.get("user", ""), channel=channel, request_id=f"slack-msg:{channel}:{ts}",
                           reply_to={"thread_ts": thread_ts, "ts": ts, "team": context.team_id})
        if not deps.claim(ctx.request_id, context):  # the other delivery of this message
            return
        deps.seen.first_time(f"thread:{channel}:{thread_ts}")  # replies in this thread are for us now
        command = _command_for(event.get("text", ""), channel)
        reply = command if isinstance(command, Reply) else run_command(command, ctx)
        if reply.unreachable:  # not an answer to post: Slack's retry will get one (listeners.middleware)
            raise Retry(reply.text)
        if reply.reply_to is not None:  # a question was queued: the worker answers in the thread
            return
        client.chat_postMessage(channel=channel, thread_ts=thread_ts, text=blocks.fallback_text(reply.text),
                                blocks=blocks.reply_blocks(reply))

    def _command_for(raw: str, channel: str) -> grammar.Command | Reply:
        """A known command verb runs the command; anything else is a question for the live assistant."""
        refused = grammar.refuse_control(raw)  # before the split below, which takes some for spaces
        if refused is not None:
            return Reply(str(refused), ok=False)
        text = " ".join(_MENTION.sub(" ", raw).split())
        first = text.split(None, 1)[0].lower() if text else ""
        if first in grammar.USAGE:
            parsed = grammar.parse(text)
            return parsed if not isinstance(parsed, grammar.ParseError) else Reply(str(parsed), ok=False)
        if not text:
            return grammar.Help()
        with deps.session_factory() as s:
            live = views.live_assistants(s, channel)
        named = [name for name in live if name.casefold() in text.casefold()]
        if len(live) == 1 or len(named) == 1:
            return grammar.Ask((named or live)[0], text)
        if not live:
            return Reply("No assistant is live in this channel yet. `/portllm status` shows what awaits "
                         "approval.", ok=False)
        return Reply(f"Several assistants are live here ({', '.join(live)}): "
                     "ask one by name, e.g. `ask <assistant> <question>`.", ok=False)

    @app.event("app_mention")
    def on_mention(event: dict, client: WebClient, context: BoltContext) -> None:
        answer(event, client, context)

    @app.event("message")
    def on_message(event: dict, client: WebClient, context: BoltContext) -> None:
        if event.get("subtype") or event.get("bot_id"):
            return
        if event.get("channel_type") == "im":  # a direct message is always for us
            answer(event, client, context)
            return
        if "thread_ts" not in event:
            return
        bot_user = context.bot_user_id or ""
        in_our_thread = (event.get("parent_user_id") == bot_user
                         or f"thread:{event['channel']}:{event['thread_ts']}" in deps.seen)
        if in_our_thread or f"<@{bot_user}>" in event.get("text", ""):
            answer(event, client, context)

