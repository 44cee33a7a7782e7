"""Card buttons: Approve, Reject, Re-tune, the guard's Roll back, a release offer's Transplant.
Ack first; a button's value passes the typed commands' grammar (it is the command it stands for);
the registry checks who may decide.

A click is handled once, by whichever process claims it first (a double delivery does nothing).
"""
from __future__ import annotations

from collections.abc import Callable

from slack_bolt import Ack, App, Respond
from slack_sdk import WebClient

from bot.listeners.deps import Deps
from portllm_core import blocks
from portllm_core.commands import grammar
from portllm_core.commands.handlers import accept_offer, run_command
from portllm_core.commands.replies import Reply
from portllm_core.ids import Action
from portllm_core.views import RunCard


def register(app: App, deps: Deps) -> None:
    def context_of(body: dict):
        action = body["actions"][0]
        container = body.get("container", {})
        channel = container.get("channel_id") or body.get("channel", {}).get("id", "")
        ctx = deps.context(user=body["user"]["id"], channel=channel,
                           request_id=f"slack-action:{action.get('action_ts', '')}:{body['user']['id']}")
        return ctx, action["value"], container

    def tell_clicker(client: WebClient, ctx, text: str) -> None:
        client.chat_postEphemeral(channel=ctx.channel, user=ctx.user, text=blocks.fallback_text(text))

    def show(reply: Reply, client: WebClient, respond: Respond, ctx, container: dict) -> None:
        """Replace the card in place (buttons become the outcome), or tell only the clicker why not."""
        if not reply.ok or not isinstance(reply.view, RunCard):
            tell_clicker(client, ctx, reply.text)
            return
        message = blocks.run_card_message(reply.view)
        if container.get("is_ephemeral") or not container.get("message_ts"):
            respond(replace_original=True, **message)
        else:
            client.chat_update(channel=ctx.channel, ts=container["message_ts"], **message)

    def replace_with_text(reply: Reply, client: WebClient, ctx, container: dict) -> None:
        """A one-click card is done once it worked: its buttons become what happened."""
        if not reply.ok or not container.get("message_ts"):
            tell_clicker(client, ctx, reply.text)
            return
        client.chat_update(channel=ctx.channel, ts=container["message_ts"], text=blocks.fallback_text(reply.text),
                           blocks=blocks.reply_blocks(reply))

    def first_click(body: dict, client: WebClient, parse: Callable[[str], object]):
        """(context, what the button's value parses to, container) the first time a click arrives;
        None for a redelivery, or when the value is refused (the clicker is told why, as if typed)."""
        ctx, value, container = context_of(body)
        if not deps.seen.first_time(ctx.request_id):
            return None
        parsed = parse(value)
        if isinstance(parsed, grammar.ParseError):
            tell_clicker(client, ctx, str(parsed))
            return None
        return ctx, parsed, container

    def button(verb: str) -> Callable[[str], object]:
        return lambda value: grammar.parse_button(verb, value)

    @app.action(Action.APPROVE.value)
    def approve_clicked(ack: Ack, body: dict, client: WebClient, respond: Respond) -> None:
        ack()
        if (click := first_click(body, client, button("approve"))) is not None:
            ctx, command, container = click
            show(run_command(command, ctx), client, respond, ctx, container)

    @app.action(Action.REJECT.value)
    def reject_clicked(ack: Ack, body: dict, client: WebClient, respond: Respond) -> None:
        ack()
        if (click := first_click(body, client, button("reject"))) is not None:
            ctx, command, container = click
            show(run_command(command, ctx), client, respond, ctx, container)

    @app.action(Action.RETUNE.value)
    def retune_clicked(ack: Ack, body: dict, client: WebClient) -> None:
        ack()
        if (click := first_click(body, client, button("retune"))) is not None:
            ctx, command, _ = click
            tell_clicker(client, ctx, run_command(command, ctx).text)

    @app.action(Action.ROLLBACK.value)
    def rollback_clicked(ack: Ack, body: dict, client: WebClient) -> None:
        ack()
        if (click := first_click(body, client, button("rollback"))) is not None:
            ctx, command, container = click
            replace_with_text(run_command(command, ctx), client, ctx, container)

    @app.action(Action.ACCEPT_OFFER.value)
    def offer_accepted(ack: Ack, body: dict, client: WebClient) -> None:
        ack()
        if (click := first_click(body, client, grammar.parse_offer)) is not None:
            ctx, (release_id, assistant), container = click
            replace_with_text(accept_offer(release_id, assistant, ctx), client, ctx, container)
