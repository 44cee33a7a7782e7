"""Card buttons: Approve, Reject, Re-tune. Ack first; the registry checks who may decide.

A click is handled once, by whichever process claims it first (a double delivery does nothing).
"""
from __future__ import annotations

from slack_bolt import Ack, App, Respond
from slack_sdk import WebClient

from portllm_core import blocks
from portllm_core.commands.handlers import decide, retune
from portllm_core.commands.replies import Reply
from portllm_core.ids import Action
from bot.listeners.deps import Deps
from portllm_core.views import RunCard


def register(app: App, deps: Deps) -> None:
    def context_of(body: dict):
        action = body["actions"][0]
        container = body.get("container", {})
        channel = container.get("channel_id") or body.get("channel", {}).get("id", "")
        ctx = deps.context(user=body["user"]["id"], channel=channel,
                           request_id=f"slack-action:{action.get('action_ts', '')}:{body['user']['id']}")
        return ctx, int(action["value"]), container

    def show(reply: Reply, client: WebClient, respond: Respond, ctx, container: dict) -> None:
        """Replace the card in place (buttons become the outcome), or tell only the clicker why not."""
        if not reply.ok or not isinstance(reply.view, RunCard):
            client.chat_postEphemeral(channel=ctx.channel, user=ctx.user, text=blocks.fallback_text(reply.text))
            return
        message = blocks.run_card_message(reply.view)
        if container.get("is_ephemeral") or not container.get("message_ts"):
            respond(replace_original=True, **message)
        else:
            client.chat_update(channel=ctx.channel, ts=container["message_ts"], **message)

    @app.action(Action.APPROVE.value)
    def approve_clicked(ack: Ack, body: dict, client: WebClient, respond: Respond) -> None:
        ack()
        ctx, run_id, container = context_of(body)
        if deps.seen.first_time(ctx.request_id):
            show(decide(run_id, True, ctx), client, respond, ctx, container)

    @app.action(Action.REJECT.value)
    def reject_clicked(ack: Ack, body: dict, client: WebClient, respond: Respond) -> None:
        ack()
        ctx, run_id, container = context_of(body)
        if deps.seen.first_time(ctx.request_id):
            show(decide(run_id, False, ctx), client, respond, ctx, container)

    @app.action(Action.RETUNE.value)
    def retune_clicked(ack: Ack, body: dict, client: WebClient) -> None:
        ack()
        ctx, run_id, _ = context_of(body)
        if deps.seen.first_time(ctx.request_id):
            reply = retune(run_id, ctx)
            client.chat_postEphemeral(channel=ctx.channel, user=ctx.user, text=blocks.fallback_text(reply.text))
