"""The /portllm slash command: ack at once, then run the command and respond().

Only pure work happens before the ack (parsing: a typo or `help` is answered in the ack
itself). Everything that touches the database or the queue runs after it, so a burst of
commands never makes Slack wait on SQLite's single writer; the reply follows through the
command's response_url a moment later ("Run #12 queued", or the answer to a read).
"""
from __future__ import annotations

import logging

from slack_bolt import Ack, App, Respond
from slack_sdk import WebClient

from portllm_core import blocks
from portllm_core.commands import grammar
from portllm_core.commands.handlers import handle_help, run_command
from portllm_core.commands.replies import REGISTRY_UNREACHABLE, Reply
from bot.listeners.deps import Deps
from portllm_core.views import RunCard
from registry.db import unreachable

log = logging.getLogger(__name__)


def _message(reply: Reply) -> dict:
    return {"text": blocks.fallback_text(reply.text), "blocks": blocks.reply_blocks(reply),
            "response_type": "in_channel" if reply.in_channel else "ephemeral"}


def register(app: App, deps: Deps) -> None:
    @app.command("/portllm")
    def portllm_command(ack: Ack, command: dict, respond: Respond, client: WebClient) -> None:
        parsed = grammar.parse(command.get("text", ""))
        if isinstance(parsed, grammar.ParseError):
            ack(**_message(Reply(str(parsed), ok=False)))
            return
        if isinstance(parsed, grammar.Help):  # pure text: no reason to make it a second message
            ack(**_message(handle_help()))
            return
        ack()
        # The rest runs on the small after-ack pool: at most a few commands write at once per
        # process (SQLite takes one writer anyway), so the GIL stays free for the next acks.
        deps.after_ack.submit(_run_and_respond, deps, parsed, command, respond, client)


def _run_and_respond(deps: Deps, parsed: grammar.Command, command: dict, respond: Respond,
                     client: WebClient) -> None:
    try:
        team = command.get("team_id", "")
        # trigger_id is unique per invocation: a redelivered command maps to the same run.
        invocation = command.get("trigger_id") or command.get("response_url")
        ctx = deps.context(user=command["user_id"], channel=command["channel_id"],
                           request_id=f"slack:{team}:{invocation}",
                           reply_to={"response_url": command.get("response_url"), "team": team})
        try:
            first = deps.seen.first_time(ctx.request_id)
        except Exception as exc:  # the registry is the dedupe store, and it is down: say so, within seconds
            if not unreachable(exc):
                raise
            respond(**_message(REGISTRY_UNREACHABLE))
            return
        if not first:  # a redelivery another process answers
            return
        reply = run_command(parsed, ctx)  # never raises: an outage comes back as REGISTRY_UNREACHABLE
        respond(**_message(reply))
        if reply.ok and isinstance(reply.view, RunCard):  # a typed approve/reject: update the posted card
            deps.refresh_run_message(client, reply.view.run_id)
    except Exception:  # run_command never raises; this is Slack unreachable or a stale card
        log.exception("replying to /portllm failed")
