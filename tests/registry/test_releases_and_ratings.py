"""Releases (one per base, runs per live channel and policy) and ratings (satisfaction, the guard)."""
from __future__ import annotations

import pytest
from sqlalchemy import func, select

from registry import services as sv
from registry.db import session_scope
from registry.errors import RegistryError
from registry.models import Run
from tests.registry.helpers import APPROVERS, ASSISTANT, live, seed

OTHER = "style-assistant"


def second_assistant_live_in(s, channel: str, *, on_release: str = "auto") -> None:
    sv.create_assistant(s, name=OTHER, family="demo", suite_ref="sha256:" + "5" * 64, suite_digest="5" * 64,
                        approvers=APPROVERS, on_release=on_release, actor="eng")
    sv.register_patch(s, assistant=OTHER, origin_base="v1", artifact_ref="sha256:" + "1" * 64,
                      artifact_digest="1" * 64, rank=8, alpha=16.0, target_modules=["q_proj"], size_bytes=1,
                      provenance={}, actor="eng")
    run, _ = sv.request_run(s, assistant=OTHER, version="v1", idempotency_key=f"other-{channel}",
                            requested_by="dave", channel=channel)
    sv.claim_run(s, run.id, "w")
    sv.finish_run(s, run.id, status="succeeded")
    sv.open_rollout(s, run.id, verdict="pass")
    sv.decide_rollout(s, run.id, approve=True, user="alice")


def new_base(s, version: str):
    return sv.register_base(s, family="demo", version=version, source_ref=f"demo/{version}",
                            fingerprint=(version * 64)[:64], signature={}, tokenizer_fingerprint="tok" * 8,
                            actor="eng")


def run_count(s) -> int:
    return s.scalar(select(func.count(Run.id)))


def test_two_assistants_live_in_three_channels_get_exactly_three_runs_once(session_factory):
    with session_scope(session_factory) as s:
        seed(s, ("v1", "v2"))
        live(s, "v1", channel="#support")
        live(s, "v2", channel="#sales")
        second_assistant_live_in(s, "#style")
        before = run_count(s)
        base = new_base(s, "v3")
        release, runs = sv.open_release(s, base, actor="eng")
        assert sorted((r.assistant.name, r.channel) for r in runs) == sorted([
            (ASSISTANT, "#sales"), (ASSISTANT, "#support"), (OTHER, "#style")])
        assert {r.requested_by for r in runs} == {sv.RELEASE_ACTOR} and {r.release_id for r in runs} == {release.id}
        assert {r.target_base.version for r in runs} == {"v3"} and run_count(s) == before + 3
    with session_scope(session_factory) as s:  # the same release again (a retried job): nothing new
        again, runs = sv.open_release(s, sv.get_base(s, "demo", "v3"), actor="eng")
        assert again.id == release.id and runs == [] and run_count(s) == before + 3


def test_the_policy_decides_ask_offers_once_and_off_does_nothing(session_factory):
    with session_scope(session_factory) as s:
        seed(s, ("v1",))
        live(s, "v1", channel="#support")
        second_assistant_live_in(s, "#style", on_release="off")
        sv.update_assistant(s, ASSISTANT, actor="eng", on_release="ask")
        release, runs = sv.open_release(s, new_base(s, "v2"), actor="eng")
        assert runs == [] and release.offers == [{"assistant": ASSISTANT, "channel": "#support"}]
        assert sv.offered_release(s, release.id, sv.get_assistant(s, ASSISTANT), "#support") == release
        with pytest.raises(RegistryError, match="offered no run to support-assistant here"):
            sv.offered_release(s, release.id, sv.get_assistant(s, ASSISTANT), "#style")
        with pytest.raises(RegistryError, match="offered no run to style-assistant here"):
            sv.offered_release(s, release.id, sv.get_assistant(s, OTHER), "#style")


def test_a_base_nobody_runs_on_and_a_channel_already_on_it_get_no_run(session_factory):
    with session_scope(session_factory) as s:
        seed(s, ("v1", "v2"))
        live(s, "v2", channel="#support")
        _, runs = sv.open_release(s, sv.get_base(s, "demo", "v2"), actor="eng")
        assert runs == []


def test_ratings_count_once_per_person_and_the_guard_trips_once(session_factory):
    with session_scope(session_factory) as s:
        seed(s, ("v1", "v2"))
        live(s, "v1", channel="#support")
        rollout = live(s, "v2", channel="#support")
        sv.update_assistant(s, ASSISTANT, actor="eng", guard_min_ratings=3, guard_min_satisfaction=0.5)
        answers = [sv.record_answer(s, rollout, asked_by="bob", question=f"q{i}") for i in range(3)]
        sv.rate(s, answers[0], user="bob", up=True)
        sv.rate(s, answers[0], user="bob", up=False)  # changed their mind: still one rating
        score = sv.satisfaction(s, [rollout.id])[rollout.id]
        assert score == sv.Satisfaction(people=1, ratings=1, up=0.0)
        assert not sv.guard_trips(rollout.assistant, rollout, score)  # too few people yet
        sv.rate(s, answers[1], user="carol", up=True)
        sv.rate(s, answers[2], user="bob", up=False)
        score = sv.satisfaction(s, [rollout.id])[rollout.id]
        assert score == sv.Satisfaction(people=2, ratings=3, up=1.0) and score.rate == 0.5  # bob's two 👎 weigh one
        assert not sv.guard_trips(rollout.assistant, rollout, score)
        sv.rate(s, answers[1], user="dave", up=False)
        score = sv.satisfaction(s, [rollout.id])[rollout.id]
        assert score == sv.Satisfaction(people=3, ratings=4, up=1.0) and score.rate == 1 / 3
        assert sv.guard_trips(rollout.assistant, rollout, score)
        assert sv.trip_guard(s, rollout, score) and not sv.trip_guard(s, rollout, score)
        s.refresh(rollout)
        assert not sv.guard_trips(rollout.assistant, rollout, score)  # proposed once per rollout


@pytest.mark.parametrize("guard", [(3, None), (0, 0.5), (3, 1.5)])
def test_a_live_guard_needs_both_numbers_in_range(session_factory, guard):
    with session_scope(session_factory) as s:
        seed(s, ("v1",))
        with pytest.raises(RegistryError, match="live guard"):
            sv.update_assistant(s, ASSISTANT, actor="eng", guard_min_ratings=guard[0],
                                guard_min_satisfaction=guard[1])


def test_one_person_cannot_trip_the_live_guard_alone(session_factory):
    """Issue 20: with a guard of 4:0.5, one person 👎'd four answers and the guard proposed a rollback."""
    with session_scope(session_factory) as s:
        seed(s, ("v1", "v2"))
        live(s, "v1", channel="#support")
        rollout = live(s, "v2", channel="#support")
        sv.update_assistant(s, ASSISTANT, actor="eng", guard_min_ratings=4, guard_min_satisfaction=0.5)
        for i in range(4):
            sv.rate(s, sv.record_answer(s, rollout, asked_by="mallory", question=f"q{i}"), user="mallory", up=False)
        score = sv.satisfaction(s, [rollout.id])[rollout.id]
        assert score == sv.Satisfaction(people=1, ratings=4, up=0.0)
        assert not sv.guard_trips(rollout.assistant, rollout, score)
        # Half of one person's ratings 👍 is half a vote, whatever the count.
        mixed = [sv.record_answer(s, rollout, asked_by="erin", question=f"m{i}") for i in range(3)]
        for answer, up in zip(mixed, (True, True, False)):
            sv.rate(s, answer, user="erin", up=up)
        assert sv.satisfaction(s, [rollout.id])[rollout.id] == sv.Satisfaction(people=2, ratings=7, up=2 / 3)
