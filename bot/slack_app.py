"""Build the Slack app: a Bolt App with PortLLM's listeners. Serving lives in bot.server."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from slack_bolt import App
from sqlalchemy.orm import Session, sessionmaker

from bot import listeners
from bot.dedupe import shared_keys
from bot.listeners.deps import Deps
from portllm_core.flows.runs import RateLimits
from portllm_core.tasks import Enqueue, TaskQueue
from portllm_core.settings import Settings, require
from portllm_core.slack import make_client

# Listener threads per process: Bolt's default of 5 turns a burst of slow listeners into timeouts.
LISTENER_THREADS = 32


def signing_secret(settings: Settings) -> str:
    return require(settings.slack_signing_secret, "SLACK_SIGNING_SECRET",
                   "Slack's signing secret, to verify that requests come from Slack")


def build_app(settings: Settings, session_factory: sessionmaker[Session] | None = None,
              enqueue: Enqueue | None = None, *, socket_mode: bool = False) -> App:
    """The Bolt app. Over HTTP every request's signature is verified; Socket Mode needs no secret."""
    if session_factory is None:
        from portllm_core.workspace import open_registry

        session_factory = open_registry(settings)
    if enqueue is None:
        enqueue = TaskQueue(settings)
    app = App(
        client=make_client(settings),
        signing_secret="" if socket_mode else signing_secret(settings),
        request_verification_enabled=not socket_mode,
        # Listeners run before the answer: an event whose handling fails answers 5xx and Slack
        # retries it. Commands and clicks ack at once and do their work after (listeners.commands).
        process_before_response=True,
        listener_executor=ThreadPoolExecutor(max_workers=LISTENER_THREADS, thread_name_prefix="portllm-listener"),
        name="portllm",
    )
    seen = shared_keys(settings, session_factory)
    listeners.register(app, Deps(session_factory=session_factory, enqueue=enqueue,
                                 limits=RateLimits.from_settings(settings), seen=seen))
    return app
