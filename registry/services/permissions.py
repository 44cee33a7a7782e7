"""Who may do what, where: requesters, the run's channel, the four-eyes rule, run quotas.

Roles themselves (approver, admin) live in catalog; these are the rules around them that the
chat commands apply before a request or a decision.
"""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from registry.errors import NotRequester, OwnRunUnderFourEyes, RateLimited, WrongChannel
from registry.models import Assistant, Requester, Rollout, RolloutState, Run, utcnow
from registry.services.catalog import person, require_approver, same_user
from registry.services.common import insert_unless_exists


def may_request(assistant: Assistant, user: str) -> bool:
    """Everyone in the channel, unless the assistant names its requesters (approvers always may)."""
    people = [*assistant.requesters, *assistant.approvers, *assistant.admins]
    return not assistant.requesters or any(same_user(user, person) for person in people)


def require_requester(assistant: Assistant, user: str) -> None:
    if not may_request(assistant, user):
        raise NotRequester(user, assistant.name, assistant.requesters)


def require_decider(run: Run, user: str, channel: str, *, action: str, approving: bool) -> None:
    """An approver of the run's assistant, in the run's channel (where everyone who follows the
    run sees the decision); under four-eyes, not the run's requester."""
    require_approver(run.assistant, user)
    if run.channel != channel:
        raise WrongChannel(f"Run #{run.id}", [run.channel], action)
    if approving and run.assistant.four_eyes and same_user(user, run.requested_by):
        raise OwnRunUnderFourEyes(run.id, run.assistant.name)


def require_rollback_here(s: Session, assistant: Assistant, user: str, channel: str) -> None:
    """An approver, in a channel where the assistant is live; elsewhere the refusal names where it is."""
    require_approver(assistant, user)
    live_in = list(s.scalars(select(Rollout.channel).where(
        Rollout.assistant_id == assistant.id, Rollout.state == RolloutState.LIVE).order_by(Rollout.channel)))
    if live_in and channel not in live_in:
        raise WrongChannel(f"The live {assistant.name}", live_in, "roll it back")


def require_run_quota(s: Session, assistant: Assistant, user: str, *, per_user: int, per_assistant: int,
                      window_s: int) -> None:
    """At most `per_user` runs by one person and `per_assistant` runs of one assistant per window.

    Requests by one person, and requests for one assistant, are counted one at a time: a no-op
    write holds the person's row and then the assistant's until commit (PostgreSQL locks the rows,
    always in that order; SQLite takes its database write lock), so two requests arriving together
    cannot both take the last free slot, whichever assistants and channels they are for.
    """
    who = person(user)  # one person, one quota, however they are written (`U1`, `<@U1>`, `console:U1`)
    insert_unless_exists(s, Requester, {"user": who}, key="user", returning=Requester.user)
    s.execute(update(Requester).where(Requester.user == who).values(user=Requester.user))
    s.execute(update(Assistant).where(Assistant.id == assistant.id).values(name=Assistant.name))
    since = utcnow() - timedelta(seconds=window_s)
    recent = s.execute(select(Run.requested_by, Run.assistant_id, Run.created_at).where(Run.created_at > since)).all()
    for whose, limit, counted in (("Your runs", per_user, lambda run: person(run.requested_by) == who),
                                  (f"Runs of {assistant.name}", per_assistant,
                                   lambda run: run.assistant_id == assistant.id)):
        times = [run.created_at for run in recent if counted(run)]  # a window's runs: a few dozen at most
        count, oldest = len(times), min(times, default=None)
        if count >= limit:
            free_at = oldest + timedelta(seconds=window_s)  # when the oldest counted run ages out
            raise RateLimited(whose, count, window_s, (free_at - utcnow()).total_seconds(),
                              free_at.strftime("%H:%M"))
