"""Card buttons: Approve, Reject, Re-tune, the guard's Roll back, a release offer's Transplant.
Ack first, work after; a button's value passes the typed commands' grammar (it is the command
it stands for); the registry checks who may decide.

A click is handled once, by whichever process claims it first (a double delivery does nothing).
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from slack_bolt import Ack, App, Respond
from slack_sdk import WebClient

from bot.listeners.deps import Deps
from portllm_core import blocks
from portllm_core.commands import grammar
from portllm_core.commands.handlers import accept_offer, run_command
from portllm_core.commands.replies import REGISTRY_UNREACHABLE, Reply
from portllm_core.ids import Action
from portllm_core.views import RunCard
from registry.db import unreachable

log = logging.getLogger(__name__)


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

    def replace_with_text(reply: Reply, client: WebClient, respond: Respond, ctx, container: dict) -> None:
        """A one-click card is done once it worked: its buttons become what happened."""
        if not reply.ok or not container.get("message_ts"):
            tell_clicker(client, ctx, reply.text)
            return
        client.chat_update(channel=ctx.channel, ts=container["message_ts"], text=blocks.fallback_text(reply.text),
                           blocks=blocks.reply_blocks(reply))

    def after_ack(body: dict, client: WebClient, respond: Respond, parse: Callable[[str], object],
                  act: Callable[..., Reply], present: Callable[..., None]) -> None:
        """The click's work, on the after-ack pool (listeners run before the answer, see slack_app):
        claim it once, parse its value as if typed, act, and show the outcome. A refused value is
        told to the clicker; an unreachable registry too, through the click's response_url."""

        def work() -> None:
            try:
                ctx, value, container = context_of(body)
                try:
                    if not deps.seen.first_time(ctx.request_id):  # a redelivery
                        return
                except Exception as exc:  # the registry is the dedupe store, and it is down
                    if not unreachable(exc):
                        raise
                    reply = REGISTRY_UNREACHABLE
                else:
                    parsed = parse(value)
                    reply = Reply(str(parsed), ok=False) if isinstance(parsed, grammar.ParseError) else act(parsed, ctx)
                if reply.unreachable:
                    respond(response_type="ephemeral", replace_original=False, text=reply.text)
                else:
                    present(reply, client, respond, ctx, container)
            except Exception:  # act never raises; this is Slack unreachable or a stale card
                log.exception("handling a click failed")

        deps.after_ack.submit(work)

    def button(verb: str) -> Callable[[str], object]:
        return lambda value: grammar.parse_button(verb, value)

    def told(reply: Reply, client: WebClient, respond: Respond, ctx, container: dict) -> None:
        tell_clicker(client, ctx, reply.text)

    @app.action(Action.APPROVE.value)
    def approve_clicked(ack: Ack, body: dict, client: WebClient, respond: Respond) -> None:
        ack()
        after_ack(body, client, respond, button("approve"), run_command, show)

    @app.action(Action.REJECT.value)
    def reject_clicked(ack: Ack, body: dict, client: WebClient, respond: Respond) -> None:
        ack()
        after_ack(body, client, respond, button("reject"), run_command, show)

    @app.action(Action.RETUNE.value)
    def retune_clicked(ack: Ack, body: dict, client: WebClient, respond: Respond) -> None:
        ack()
        after_ack(body, client, respond, button("retune"), run_command, told)

    @app.action(Action.ROLLBACK.value)
    def rollback_clicked(ack: Ack, body: dict, client: WebClient, respond: Respond) -> None:
        ack()
        after_ack(body, client, respond, button("rollback"), run_command, replace_with_text)

    @app.action(Action.ACCEPT_OFFER.value)
    def offer_accepted(ack: Ack, body: dict, client: WebClient, respond: Respond) -> None:
        ack()
        after_ack(body, client, respond, grammar.parse_offer,
                  lambda offer, ctx: accept_offer(offer[0], offer[1], ctx), replace_with_text)
