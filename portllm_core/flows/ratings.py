"""Ratings: 👍/👎 on an answer, from a Slack reaction or the console's `rate` command.

Each rating updates its rollout's live satisfaction; when the assistant's live guard trips
(enough ratings, satisfaction below its threshold) the rating returns a rollback proposal,
once per rollout, for the interface to post in the channel.
"""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from portllm_core import metrics
from portllm_core.views import GuardProposal, guard_proposal
from registry import services
from registry.db import session_scope
from registry.services.ratings import Satisfaction

# Slack reaction names that rate an answer (👍 and 👎 with their aliases).
REACTIONS = {"+1": True, "thumbsup": True, "-1": False, "thumbsdown": False}


@dataclass(frozen=True)
class Rated:
    answer_id: int
    assistant: str
    version: str
    channel: str
    up: bool
    satisfaction: Satisfaction  # the rollout's, this rating included
    guard: GuardProposal | None  # the live guard tripped on this rating: post it


def rate(session_factory: sessionmaker[Session], answer_id: int, *, user: str, channel: str, up: bool) -> Rated:
    """Rate answer #N (the typed `rate`) from `channel`, which must be the answer's own."""
    with session_scope(session_factory) as s:
        return _rate(s, services.answer_in(s, answer_id, channel), user, up)


def rate_message(session_factory: sessionmaker[Session], channel: str, message_ts: str, *, user: str,
                 up: bool) -> Rated | None:
    """Rate the answer posted as this message; None when the message is not an answer."""
    with session_scope(session_factory) as s:
        answer = services.answer_for_message(s, channel, message_ts)
        return None if answer is None else _rate(s, answer, user, up)


def unrate_message(session_factory: sessionmaker[Session], channel: str, message_ts: str, *, user: str,
                   up: bool) -> bool:
    """A removed reaction takes its rating back; False when the message is not an answer or that
    rating is not the person's now."""
    with session_scope(session_factory) as s:
        answer = services.answer_for_message(s, channel, message_ts)
        return answer is not None and services.unrate(s, answer, user=user, up=up)


def _rate(s: Session, answer, user: str, up: bool) -> Rated:
    services.rate(s, answer, user=user, up=up)
    rollout = answer.rollout
    metrics.rated(rollout.assistant.name, answer.channel, up)
    score = services.satisfaction(s, [rollout.id])[rollout.id]
    guard = None
    if services.guard_trips(rollout.assistant, rollout, score) and services.trip_guard(s, rollout, score):
        guard = guard_proposal(s, rollout, score)
    return Rated(answer.id, rollout.assistant.name, rollout.run.target_base.version, rollout.channel, up, score,
                 guard)
