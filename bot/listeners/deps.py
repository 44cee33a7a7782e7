"""What every listener needs: the registry, the queue, shared dedupe keys, a way to build a Context."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from slack_sdk import WebClient
from sqlalchemy.orm import Session, sessionmaker

from portllm_core import blocks, views
from portllm_core.commands.handlers import Context
from portllm_core.flows.runs import RateLimits
from bot.dedupe import SharedKeys
from portllm_core.tasks import Enqueue
from registry.models import Run


AFTER_ACK_THREADS = 2
CLAIMS = "portllm_claims"  # the request context's list of dedupe keys this request claimed


class Retry(Exception):
    """An event's handling failed in a way Slack's retry may fix: the registry was unreachable."""


@dataclass
class Deps:
    session_factory: sessionmaker[Session]
    enqueue: Enqueue
    limits: RateLimits
    # Events, messages, commands and clicks already handled, and threads the bot answered in,
    # by any process (bot.dedupe).
    seen: SharedKeys
    # Work that follows an ack (database, queue, respond). Few threads on purpose: see commands.py.
    after_ack: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=AFTER_ACK_THREADS, thread_name_prefix="portllm-work"))

    def claim(self, key: str, context: dict) -> bool:
        """The first claim of `key` (bot.dedupe), remembered in the request's context so that a
        failure gives it back (listeners.middleware) and Slack's retry is handled once."""
        if not self.seen.first_time(key):
            return False
        context.setdefault(CLAIMS, []).append(key)
        return True

    def context(self, *, user: str, channel: str, request_id: str, reply_to: dict | None = None) -> Context:
        return Context(user=user, channel=channel, session_factory=self.session_factory,
                       enqueue=self.enqueue, request_id=request_id, limits=self.limits,
                       reply_to={"via": "slack", **(reply_to or {})})

    def refresh_run_message(self, client: WebClient, run_id: int) -> None:
        """Re-render a run's posted card (where the worker recorded it) after a decision made elsewhere."""
        with self.session_factory() as s:
            run = s.get(Run, run_id)
            ref = run.notify_ref if run is not None else None
            if not ref or "ts" not in ref or "channel" not in ref:
                return
            card = views.run_card(s, run_id)
        client.chat_update(channel=ref["channel"], ts=ref["ts"], **blocks.run_card_message(card))
