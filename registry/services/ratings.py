"""Answers and their 👍/👎 ratings: the live KPI of each rollout, and its guard."""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from registry.errors import NotFound, RegistryError
from registry.models import Answer, Assistant, Rating, Rollout, RolloutState, id_in_range, utcnow
from registry.services.catalog import person
from registry.services.common import audit, conditional_update


@dataclass(frozen=True)
class Satisfaction:
    """The share of 👍 among the people who rated a rollout's answers (its interval is the read
    models' to show). Each person weighs one, however many answers they rated: one person's ten
    👎 are one voice, so nobody can trip the live guard alone."""

    people: int  # distinct raters
    ratings: int
    up: float  # each person's share of 👍 among their ratings, summed over people

    @property
    def rate(self) -> float | None:
        return self.up / self.people if self.people else None


class UnknownAnswer(NotFound):
    # The same words whether the answer does not exist or was given in another channel: answer
    # numbers are sequential, so a refusal that differed would map other channels' answers.
    def __init__(self, answer_id: int):
        super().__init__(f"There is no answer #{answer_id} here; the number is shown under each answer.")
        self.answer_id = answer_id


def record_answer(s: Session, rollout: Rollout, *, asked_by: str, question: str) -> Answer:
    """An answer the rollout's model gave in its channel (before it is posted: its message comes later)."""
    answer = Answer(rollout_id=rollout.id, channel=rollout.channel, asked_by=asked_by, question=question[:2000])
    s.add(answer)
    s.flush()
    return answer


def set_answer_message(s: Session, answer_id: int, message_ts: str) -> None:
    """Where the answer was posted, so a reaction on that message rates it."""
    conditional_update(s, Answer, [Answer.id == answer_id], message_ts=message_ts)


def get_answer(s: Session, answer_id: int) -> Answer:
    answer = s.get(Answer, answer_id) if id_in_range(answer_id) else None
    if answer is None:
        raise UnknownAnswer(answer_id)
    return answer


def answer_in(s: Session, answer_id: int, channel: str) -> Answer:
    """Answer #N as seen from `channel`: only the channel it was given in may rate it."""
    answer = get_answer(s, answer_id)
    if answer.channel != channel:
        raise UnknownAnswer(answer_id)
    return answer


def answer_for_message(s: Session, channel: str, message_ts: str) -> Answer | None:
    return s.scalar(select(Answer).where(Answer.channel == channel, Answer.message_ts == message_ts))


def rate(s: Session, answer: Answer, *, user: str, up: bool) -> Rating:
    """One rating per person and answer; rating again changes it."""
    if not user:
        raise RegistryError("A rating needs the person who gives it.")
    _take_turns(s, answer)
    rating = s.scalar(select(Rating).where(Rating.answer_id == answer.id, Rating.user == person(user)))
    if rating is None:  # stored by person: `U1`, `<@U1>` and `console:U1` are one voice
        rating = Rating(answer_id=answer.id, user=person(user), up=up)
        s.add(rating)
    else:
        rating.up = up
    s.flush()
    audit(s, actor=user, action="answer.rated", entity_type="answer", entity_id=answer.id,
          assistant_id=answer.rollout.assistant_id, rollout_id=answer.rollout_id, up=up)
    return rating


def unrate(s: Session, answer: Answer, *, user: str, up: bool) -> bool:
    """Take back a person's 👍 (up) or 👎 on an answer; False when that is not their rating now
    (a later rating of the other kind stands)."""
    _take_turns(s, answer)
    rating = s.scalar(select(Rating).where(Rating.answer_id == answer.id, Rating.user == person(user), Rating.up == up))
    if rating is None:
        return False
    s.delete(rating)
    s.flush()
    audit(s, actor=user, action="answer.unrated", entity_type="answer", entity_id=answer.id,
          assistant_id=answer.rollout.assistant_id, rollout_id=answer.rollout_id, up=up)
    return True


def _take_turns(s: Session, answer: Answer) -> None:
    """Ratings of one rollout take turns until commit: two people reacting at once must each count
    the other's rating, or neither would see the guard's threshold crossed."""
    s.execute(select(Rollout.id).where(Rollout.id == answer.rollout_id).with_for_update())


def satisfaction(s: Session, rollout_ids: list[int]) -> dict[int, Satisfaction]:
    """Per rollout: how many people rated its answers, how often, and their 👍 (absent: none yet)."""
    if not rollout_ids:
        return {}
    per_person = (
        select(Answer.rollout_id, func.count(Rating.id).label("ratings"),
               func.avg(case((Rating.up, 1.0), else_=0.0)).label("share"))
        .join(Rating, Rating.answer_id == Answer.id)
        .where(Answer.rollout_id.in_(rollout_ids))
        .group_by(Answer.rollout_id, Rating.user)
        .subquery()
    )
    rows = s.execute(
        select(per_person.c.rollout_id, func.count(), func.sum(per_person.c.ratings), func.sum(per_person.c.share))
        .group_by(per_person.c.rollout_id)
    )
    return {rollout_id: Satisfaction(int(people), int(ratings), float(up or 0.0))
            for rollout_id, people, ratings, up in rows}


def guard_trips(assistant: Assistant, rollout: Rollout, score: Satisfaction) -> bool:
    """The live guard: enough people rated, satisfaction below the threshold, not proposed yet."""
    return (rollout.state == RolloutState.LIVE and rollout.guard_tripped_at is None
            and assistant.guard_min_ratings is not None and score.people >= assistant.guard_min_ratings
            and score.rate < assistant.guard_min_satisfaction)


def trip_guard(s: Session, rollout: Rollout, score: Satisfaction) -> bool:
    """Record that the guard proposed rolling the rollout back; True for the one caller that did."""
    won = conditional_update(s, Rollout, [Rollout.id == rollout.id, Rollout.guard_tripped_at.is_(None)],
                             guard_tripped_at=utcnow())
    if won:
        audit(s, actor="system:live-guard", action="rollout.guard_tripped", entity_type="rollout",
              entity_id=rollout.id, assistant_id=rollout.assistant_id, channel=rollout.channel,
              people=score.people, ratings=score.ratings, satisfaction=score.rate)
    return bool(won)
