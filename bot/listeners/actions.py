"""Card buttons: Approve, Reject, Re-tune, the guard's Roll back, a release offer's Transplant.
Ack first; the registry checks who may decide."""
from __future__ import annotations

from slack_bolt import Ack, App, Respond
from slack_sdk import WebClient

from portllm_core import blocks
from portllm_core.commands import grammar
from portllm_core.commands.handlers import accept_offer, decide, retune, run_command
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
        return ctx, action["value"], container

    def show(reply: Reply, client: WebClient, respond: Respond, ctx, container: dict) -> None:
        """Replace the card in place (buttons become the outcome), or tell only the clicker why not."""
        if not reply.ok or not isinstance(reply.view, RunCard):
            client.chat_postEphemeral(channel=ctx.channel, user=ctx.user, text=reply.text)
            return
        card_blocks = blocks.run_card_blocks(reply.view)
        text = blocks.run_summary(reply.view)
        if container.get("is_ephemeral") or not container.get("message_ts"):
            respond(replace_original=True, text=text, blocks=card_blocks)
        else:
            client.chat_update(channel=ctx.channel, ts=container["message_ts"], text=text, blocks=card_blocks)

    @app.action(Action.APPROVE.value)
    def approve_clicked(ack: Ack, body: dict, client: WebClient, respond: Respond) -> None:
        ack()
        ctx, run_id, container = context_of(body)
        show(decide(int(run_id), True, ctx), client, respond, ctx, container)

    @app.action(Action.REJECT.value)
    def reject_clicked(ack: Ack, body: dict, client: WebClient, respond: Respond) -> None:
        ack()
        ctx, run_id, container = context_of(body)
        show(decide(int(run_id), False, ctx), client, respond, ctx, container)

    @app.action(Action.RETUNE.value)
    def retune_clicked(ack: Ack, body: dict, client: WebClient) -> None:
        ack()
        ctx, run_id, _ = context_of(body)
        reply = retune(int(run_id), ctx)
        client.chat_postEphemeral(channel=ctx.channel, user=ctx.user, text=reply.text)

    def replace_with_text(reply: Reply, client: WebClient, ctx, container: dict) -> None:
        """A one-click card is done once it worked: its buttons become what happened."""
        if not reply.ok or not container.get("message_ts"):
            client.chat_postEphemeral(channel=ctx.channel, user=ctx.user, text=reply.text)
            return
        client.chat_update(channel=ctx.channel, ts=container["message_ts"], text=reply.text,
                           blocks=blocks.reply_blocks(reply))

    @app.action(Action.ROLLBACK.value)
    def rollback_clicked(ack: Ack, body: dict, client: WebClient) -> None:
        ack()
        ctx, assistant, container = context_of(body)
        replace_with_text(run_command(grammar.Rollback(assistant), ctx), client, ctx, container)

    @app.action(Action.ACCEPT_OFFER.value)
    def offer_accepted(ack: Ack, body: dict, client: WebClient) -> None:
        ack()
        ctx, value, container = context_of(body)
        release_id, _, assistant = value.partition(":")
        replace_with_text(accept_offer(int(release_id), assistant, ctx), client, ctx, container)
