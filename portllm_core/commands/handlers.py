"""Run one command for one person in one channel: registry services in, a Reply out.

`handle` never raises for anything a person can type: bad input and refusals (unknown names,
not an approver, nothing to roll back) come back as a Reply with ok=False whose text says
what was wrong and what would be right.
"""
from __future__ import annotations

import difflib
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from portllm_core import views
from portllm_core.blocks import satisfaction_text
from portllm_core.commands import grammar
from portllm_core.commands.grammar import ParseError
from portllm_core.commands.replies import REGISTRY_UNREACHABLE, Reply
from portllm_core.flows import ratings, releases, runs
from portllm_core.tasks import ANSWER_QUESTION, Enqueue
from registry import services
from registry.db import outage_reason, unreachable
from registry.errors import RegistryError
from registry.models import ACTIVE_RUN_STATUSES, DECIDABLE_ROLLOUT_STATES, RunKind

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Context:
    """Who asks, where, and how to reach the registry and the queue."""

    user: str  # Slack user id, or a console user name
    channel: str  # Slack channel id, or a console channel name like "#support"
    session_factory: sessionmaker[Session]
    enqueue: Enqueue
    request_id: str  # unique per incoming request: the idempotency key of what it creates
    limits: runs.RateLimits  # how many runs a person and an assistant may request per hour
    reply_to: dict = field(default_factory=dict)  # where answers go, beyond channel and user


def handle(text: str, ctx: Context) -> Reply:
    command = grammar.parse(text)
    if isinstance(command, ParseError):
        return Reply(str(command), ok=False)
    return run_command(command, ctx)


def replies(fn: Callable[..., Reply]) -> Callable[..., Reply]:
    """Turn what a command raises into a Reply: refusals say why, our own faults are logged."""

    @functools.wraps(fn)
    def guarded(*args, **kwargs) -> Reply:
        try:
            return fn(*args, **kwargs)
        except RegistryError as exc:  # a refusal meant for the person: its message says why
            return Reply(str(exc), ok=False)
        except Exception as exc:
            if unreachable(exc):  # an outage, not a fault of ours: one line, and the person may retry
                log.warning("%s: the registry is unreachable (%s)", fn.__name__, outage_reason(exc))
                return REGISTRY_UNREACHABLE
            log.exception("%s failed", fn.__name__)
            return Reply("Something went wrong on our side (it is logged). Try again in a minute.", ok=False)

    return guarded


@replies
def run_command(command: grammar.Command, ctx: Context) -> Reply:
    return _HANDLERS[type(command)](command, ctx)


# Assistant and base names resolve through the registry (case-insensitive; unknown ones raise
# with the closest names). Families are only listed, so the bot finds their closest itself.
def _closest(name: str, known: list[str]) -> list[str]:
    by_case = {k.casefold(): k for k in known}
    return [by_case[m] for m in difflib.get_close_matches(name.casefold(), list(by_case), n=3, cutoff=0.5)]


# -- handlers --------------------------------------------------------------------------------

# How a run's status reads after "it": "Run #12 was already requested (…); it is running."
_STATUS_PHRASES = {"queued": "is queued", "running": "is running", "succeeded": "has finished",
                   "failed": "failed", "cancelled": "was cancelled"}


def _queued(requested: runs.RunRequested) -> Reply:
    what = {RunKind.TRANSPLANT: "transplant", RunKind.EVAL: "evaluation", RunKind.RETUNE: "re-tune"}[requested.kind]
    onto = f"{what} of {requested.assistant} onto {requested.version}"
    if not requested.created:  # the same request arrived again: it was enqueued the first time
        return Reply(f"Run #{requested.run_id} was already requested ({onto}); "
                     f"it {_STATUS_PHRASES.get(requested.status, requested.status)}.",
                     run_id=requested.run_id)
    return Reply(f"Run #{requested.run_id} queued: {onto}.", run_id=requested.run_id)


def _request(kind: str, assistant: str, version: str, ctx: Context) -> Reply:
    return _queued(runs.request_run(
        ctx.session_factory, ctx.enqueue, kind=kind, assistant=assistant, version=version, user=ctx.user,
        channel=ctx.channel, idempotency_key=ctx.request_id, limits=ctx.limits))


def _patch(cmd: grammar.Patch, ctx: Context) -> Reply:
    return _request(RunKind.TRANSPLANT, cmd.assistant, cmd.version, ctx)


def _eval(cmd: grammar.Eval, ctx: Context) -> Reply:
    return _request(RunKind.EVAL, cmd.assistant, cmd.version, ctx)


@replies
def decide(run_id: int, approve: bool, ctx: Context, reason: str | None = None) -> Reply:
    """Approve or reject a run's rollout (typed command or button) in the run's channel."""
    runs.decide(ctx.session_factory, ctx.enqueue, run_id, approve=approve, user=ctx.user, channel=ctx.channel, reason=reason)
    with ctx.session_factory() as s:
        card = views.run_card(s, run_id)
    if approve:
        text = f"Run #{run_id} approved: {card.assistant} on {card.target_version} is live in {card.channel}."
    else:
        text = f"Run #{run_id} rejected: {card.assistant} on {card.target_version} will not go live."
    return Reply(text, view=card, run_id=run_id, in_channel=True)


@replies
def retune(run_id: int, ctx: Context) -> Reply:
    """Re-tune the patch of a run whose gate failed, on that run's target base (card button)."""
    with ctx.session_factory() as s:
        card = views.run_card(s, run_id)
    if not card.can_retune:
        return Reply(f"Run #{run_id} cannot be re-tuned: that needs an undecided run whose gate did not pass "
                     "(fail or inconclusive) and the patch's training data registered.", ok=False)
    return _queued(runs.request_retune(ctx.session_factory, ctx.enqueue, run_id, user=ctx.user,
                                       channel=ctx.channel, limits=ctx.limits))


def _approve(cmd: grammar.Approve, ctx: Context) -> Reply:
    return decide(cmd.run_id, True, ctx, cmd.reason)


def _reject(cmd: grammar.Reject, ctx: Context) -> Reply:
    return decide(cmd.run_id, False, ctx, cmd.reason)


def _rollback(cmd: grammar.Rollback, ctx: Context) -> Reply:
    assistant, version, run_id = runs.rollback(ctx.session_factory, ctx.enqueue, cmd.assistant, ctx.channel, ctx.user)
    return Reply(f"Rolled back {assistant} in {ctx.channel}: {version} (run #{run_id}) is live again.",
                 in_channel=True)


def _status(cmd: grammar.Status, ctx: Context) -> Reply:
    with ctx.session_factory() as s:
        name = services.get_assistant(s, cmd.assistant).name if cmd.assistant else None
        view = views.status_view(s, name, channel=ctx.channel)  # this channel's; others may be private
    live = ", ".join(f"{r.assistant} {r.version}" + (" (answered by the local backend: the vLLM engine refused "
                                                     "its patch)" if r.served_locally else "")
                     for r in view.live) or "nothing live"
    waiting = sum(1 for r in view.pending if r.rollout_state in DECIDABLE_ROLLOUT_STATES)
    running = sum(1 for r in view.pending if r.status in ACTIVE_RUN_STATUSES)
    return Reply(f"Live: {live}. {running} run(s) in flight, {waiting} awaiting a decision.", view=view)


def _lineage(cmd: grammar.Lineage, ctx: Context) -> Reply:
    with ctx.session_factory() as s:
        view = views.lineage_view(s, services.get_assistant(s, cmd.assistant), channel=ctx.channel)  # others may be private
    return Reply(f"Lineage of {view.assistant} in {ctx.channel}: {len(view.patches)} patch(es).", view=view)


def _bases(cmd: grammar.Bases, ctx: Context) -> Reply:
    with ctx.session_factory() as s:
        bases = list(services.list_bases(s, cmd.family))
        if cmd.family and not bases:
            families = sorted({b.family for b in services.list_bases(s)})
            close = _closest(cmd.family, families)
            hint = f" Did you mean: {', '.join(close)}?" if close else (
                f" Families: {', '.join(families)}." if families else " No base is registered yet.")
            return Reply(f"Unknown family '{cmd.family}'.{hint}", ok=False)
        table = views.bases_table(bases, cmd.family)
    return Reply(f"{len(table.rows)} base(s) registered.", view=table)


def _assistants(cmd: grammar.Assistants, ctx: Context) -> Reply:
    with ctx.session_factory() as s:
        table = views.assistants_table(s, list(services.list_assistants(s)), ctx.channel)
    return Reply(f"{len(table.rows)} assistant(s).", view=table)


def _ask(cmd: grammar.Ask, ctx: Context) -> Reply:
    with ctx.session_factory() as s:
        assistant = services.get_assistant(s, cmd.assistant)
        if services.live_rollout(s, assistant.name, ctx.channel) is None:
            return Reply(f"{assistant.name} is not live in {ctx.channel} yet: approve a run there first "
                         f"(`status {assistant.name}` shows what awaits approval).", ok=False)
    reply_to = {"channel": ctx.channel, "user": ctx.user, "request_id": ctx.request_id, **ctx.reply_to}
    ctx.enqueue(ANSWER_QUESTION, assistant.name, ctx.channel, cmd.question, ctx.user, reply_to)
    return Reply(f"Asking {assistant.name}…", reply_to=reply_to)


def _rate(cmd: grammar.Rate, ctx: Context) -> Reply:
    return rated(ratings.rate(ctx.session_factory, cmd.answer_id, user=ctx.user, channel=ctx.channel, up=cmd.up))


def rated(rating: ratings.Rated) -> Reply:
    """What a rating says back (a typed `rate` or a Slack reaction), with the guard's card if it tripped."""
    text = (f"Answer #{rating.answer_id} rated {'👍' if rating.up else '👎'}. {rating.assistant} "
            f"{rating.version} in {rating.channel}: {satisfaction_text(rating.satisfaction)}.")
    if rating.guard is not None:
        return Reply(text + " The live guard proposes a rollback.", view=rating.guard, in_channel=True)
    return Reply(text)


@replies
def accept_offer(release_id: int, assistant: str, ctx: Context) -> Reply:
    """Queue the run a release offered here (policy `ask`): the offer card's button."""
    return _queued(runs.accept_offer(ctx.session_factory, ctx.enqueue, release_id, assistant, user=ctx.user,
                                     channel=ctx.channel, limits=ctx.limits))


def handle_help() -> Reply:
    """The command list; pure, so the Slack app can answer it inside the ack."""
    lines = "\n".join(f"• `{usage}`" for usage in grammar.USAGE.values())
    return Reply(f"PortLLM commands (runs are numbers like `12` or `#12`):\n{lines}")


_HANDLERS: dict[type, Callable[[object, Context], Reply]] = {
    grammar.Patch: _patch,
    grammar.Eval: _eval,
    grammar.Approve: _approve,
    grammar.Reject: _reject,
    grammar.Retune: lambda cmd, ctx: retune(cmd.run_id, ctx),
    grammar.Rollback: _rollback,
    grammar.Status: _status,
    grammar.Lineage: _lineage,
    grammar.Bases: _bases,
    grammar.Assistants: _assistants,
    grammar.Ask: _ask,
    grammar.Rate: _rate,
    grammar.Help: lambda cmd, ctx: handle_help(),
}
