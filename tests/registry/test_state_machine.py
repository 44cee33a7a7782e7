"""Every transition of runs and rollouts, allowed and refused, driven through the services.

Each table row puts an entity into a state the way production does, applies one action and
names the outcome: the new state, or the error. Rows share one database; each row works in its
own channel (rollouts) or on its own run, so rows cannot influence each other.
"""
from __future__ import annotations

from collections.abc import Callable
from itertools import count

import pytest

from registry import services as sv
from registry.db import session_scope
from registry.errors import (
    GateFailedNeedsAdmin,
    InvalidTransition,
    NothingToRollBack,
    ReplacedByNewerRun,
    RunNotAwaitingApproval,
)
from registry.models import Rollout, RolloutState, Run, RunStatus
from tests.registry.helpers import ASSISTANT, live, proposed, seed


def test_transition_tables_are_the_designed_ones():
    assert {k: set(v) for k, v in sv.ROLLOUT_TRANSITIONS.items()} == {
        "awaiting_approval": {"live", "rejected", "superseded_by_newer"},
        "blocked": {"live", "rejected", "superseded_by_newer"},
        "live": {"superseded", "rolled_back"},
        "superseded": {"live"},
        "rolled_back": set(),
        "rejected": set(),
        "superseded_by_newer": set(),
    }
    assert {k: set(v) for k, v in sv.RUN_TRANSITIONS.items()} == {
        "queued": {"running", "failed", "cancelled"},
        "running": {"succeeded", "failed", "cancelled", "queued"},
        "succeeded": set(),
        "failed": set(),
        "cancelled": set(),
    }
    assert set(sv.ROLLOUT_TRANSITIONS) == set(RolloutState)
    assert set(sv.RUN_TRANSITIONS) == set(RunStatus)


# ---- rollouts ---------------------------------------------------------------------------------
# Arrange: returns the rollout under test, in the named state, alone in `channel`.

def _awaiting(s, channel):
    return proposed(s, "v2", channel=channel)


def _blocked(s, channel):
    return proposed(s, "v2", channel=channel, verdict="fail")


def _live_with_predecessor(s, channel):
    live(s, "v2", channel=channel)
    return live(s, "v3", channel=channel)


def _live_alone(s, channel):
    return live(s, "v2", channel=channel)


def _superseded(s, channel):
    first = live(s, "v2", channel=channel)
    live(s, "v3", channel=channel)
    return s.get(Rollout, first.id)


def _rolled_back(s, channel):
    live(s, "v2", channel=channel)
    second = live(s, "v3", channel=channel)
    sv.rollback(s, ASSISTANT, channel, "alice")
    return s.get(Rollout, second.id)


def _rejected(s, channel):
    rollout = proposed(s, "v2", channel=channel)
    return sv.decide_rollout(s, rollout.run_id, approve=False, user="bob", reason="no")


def _superseded_by_newer(s, channel):
    older = proposed(s, "v2", channel=channel)
    proposed(s, "v2", channel=channel)
    return s.get(Rollout, older.id)


ARRANGE: dict[str, Callable] = {
    "awaiting_approval": _awaiting,
    "blocked": _blocked,
    "live": _live_with_predecessor,
    "live (first in channel)": _live_alone,
    "superseded": _superseded,
    "rolled_back": _rolled_back,
    "rejected": _rejected,
    "superseded_by_newer": _superseded_by_newer,
}

# Act: each action targets the rollout `r` under test.
NEWER = "a newer run proposes the same base"
ACTIONS: dict[str, Callable] = {
    "approve": lambda s, r: sv.decide_rollout(s, r.run_id, approve=True, user="alice"),
    "approve as admin with reason": lambda s, r: sv.decide_rollout(
        s, r.run_id, approve=True, user="carol", reason="accepted risk"),
    "approve as admin without reason": lambda s, r: sv.decide_rollout(
        s, r.run_id, approve=True, user="carol"),
    "reject": lambda s, r: sv.decide_rollout(s, r.run_id, approve=False, user="bob"),
    "another goes live": lambda s, r: live(s, "v3", channel=r.channel),
    "rollback": lambda s, r: sv.rollback(s, ASSISTANT, r.channel, "alice"),
    NEWER: lambda s, r: proposed(s, r.run.target_base.version, channel=r.channel),
}

NA = RunNotAwaitingApproval
RBN = ReplacedByNewerRun
ROLLOUT_TABLE: dict[str, dict[str, str | type[Exception]]] = {
    "awaiting_approval": {
        "approve": "live", "approve as admin with reason": "live",
        "approve as admin without reason": "live", "reject": "rejected",
        "another goes live": "awaiting_approval", "rollback": NothingToRollBack,
        NEWER: "superseded_by_newer",
    },
    "blocked": {
        "approve": GateFailedNeedsAdmin, "approve as admin with reason": "live",
        "approve as admin without reason": GateFailedNeedsAdmin, "reject": "rejected",
        "another goes live": "blocked", "rollback": NothingToRollBack, NEWER: "superseded_by_newer",
    },
    "live": {
        "approve": NA, "approve as admin with reason": NA, "approve as admin without reason": NA,
        "reject": NA, "another goes live": "superseded", "rollback": "rolled_back", NEWER: "live",
    },
    "live (first in channel)": {
        "approve": NA, "approve as admin with reason": NA, "approve as admin without reason": NA,
        "reject": NA, "another goes live": "superseded", "rollback": NothingToRollBack, NEWER: "live",
    },
    "superseded": {
        "approve": NA, "approve as admin with reason": NA, "approve as admin without reason": NA,
        "reject": NA, "another goes live": "superseded", "rollback": "live", NEWER: "superseded",
    },
    "rolled_back": {
        "approve": NA, "approve as admin with reason": NA, "approve as admin without reason": NA,
        "reject": NA, "another goes live": "rolled_back", "rollback": NothingToRollBack,
        NEWER: "rolled_back",
    },
    "rejected": {
        "approve": NA, "approve as admin with reason": NA, "approve as admin without reason": NA,
        "reject": NA, "another goes live": "rejected", "rollback": NothingToRollBack, NEWER: "rejected",
    },
    "superseded_by_newer": {
        "approve": RBN, "approve as admin with reason": RBN, "approve as admin without reason": RBN,
        "reject": RBN, "another goes live": "superseded_by_newer", "rollback": NothingToRollBack,
        NEWER: "superseded_by_newer",
    },
}


def test_every_rollout_transition(session_factory):
    with session_scope(session_factory) as s:
        seed(s)
    channels = (f"c{i}" for i in count())
    wrong: list[str] = []
    observed: set[tuple[str, str]] = set()
    for start, row in ROLLOUT_TABLE.items():
        assert set(row) == set(ACTIONS), start
        for action, expected in row.items():
            with session_scope(session_factory) as s:
                rollout_id = ARRANGE[start](s, next(channels)).id
            with session_scope(session_factory) as s:
                before = s.get(Rollout, rollout_id).state
            outcome: str | type[Exception]
            try:
                with session_scope(session_factory) as s:
                    ACTIONS[action](s, s.get(Rollout, rollout_id))
            except Exception as exc:  # noqa: BLE001 - the table names the expected error
                outcome = type(exc)
            with session_scope(session_factory) as s:
                after = s.get(Rollout, rollout_id).state
                lives = s.query(Rollout).filter_by(channel=s.get(Rollout, rollout_id).channel,
                                                   state="live").count()
            if not isinstance(expected, str):
                if outcome is not expected or after != before:
                    wrong.append(f"{start} --{action}--> expected {expected.__name__}, got {outcome} / {after}")
                continue
            if after != expected:
                wrong.append(f"{start} --{action}--> expected {expected}, got {after} ({outcome})")
            if lives > 1:
                wrong.append(f"{start} --{action}--> {lives} live rollouts in one channel")
            if after != before:
                observed.add((before, after))
    assert not wrong, "\n".join(wrong)
    allowed = {(a, b) for a, targets in sv.ROLLOUT_TRANSITIONS.items() for b in targets}
    assert observed == allowed  # every allowed transition happened, nothing else did


# ---- runs ---------------------------------------------------------------------------------

_keys = count()


def _run_in(s, status: str) -> Run:
    run, _ = sv.request_run(s, assistant=ASSISTANT, version="v2", idempotency_key=f"sm-{next(_keys)}",
                            requested_by="dave", channel="support")
    if status == "queued":
        return run
    sv.claim_run(s, run.id, "gpu-1")
    if status != "running":
        sv.finish_run(s, run.id, status=status, error="boom" if status == "failed" else None)
    return s.get(Run, run.id)


RUN_ACTIONS: dict[str, Callable] = {
    "claim": lambda s, run: sv.claim_run(s, run.id, "gpu-2"),
    "succeed": lambda s, run: sv.finish_run(s, run.id, status="succeeded"),
    "fail": lambda s, run: sv.finish_run(s, run.id, status="failed", error="out of memory"),
    "cancel": lambda s, run: sv.cancel_run(s, run.id, user="dave"),
    "requeue": lambda s, run: sv.requeue_run(s, run.id, reason="worker vanished"),
}

IT = InvalidTransition
REFUSED_CLAIM = "refused (None)"
RUN_TABLE: dict[str, dict[str, str | type[Exception]]] = {
    "queued": {"claim": "running", "succeed": IT, "fail": "failed", "cancel": "cancelled", "requeue": IT},
    "running": {"claim": REFUSED_CLAIM, "succeed": "succeeded", "fail": "failed",
                "cancel": "cancelled", "requeue": "queued"},
    "succeeded": {"claim": REFUSED_CLAIM, "succeed": IT, "fail": IT, "cancel": IT, "requeue": IT},
    "failed": {"claim": REFUSED_CLAIM, "succeed": IT, "fail": IT, "cancel": IT, "requeue": IT},
    "cancelled": {"claim": REFUSED_CLAIM, "succeed": IT, "fail": IT, "cancel": IT, "requeue": IT},
}


def test_every_run_transition(session_factory):
    with session_scope(session_factory) as s:
        seed(s)
    wrong: list[str] = []
    observed: set[tuple[str, str]] = set()
    for start, row in RUN_TABLE.items():
        assert set(row) == set(RUN_ACTIONS), start
        for action, expected in row.items():
            with session_scope(session_factory) as s:
                run_id = _run_in(s, start).id
            outcome: object = None
            try:
                with session_scope(session_factory) as s:
                    outcome = RUN_ACTIONS[action](s, s.get(Run, run_id))
            except Exception as exc:  # noqa: BLE001 - the table names the expected error
                outcome = type(exc)
            with session_scope(session_factory) as s:
                after = s.get(Run, run_id).status
            if expected == REFUSED_CLAIM:
                ok = outcome is None and after == start
            elif isinstance(expected, str):
                ok = after == expected
            else:
                ok = outcome is expected and after == start
            if not ok:
                wrong.append(f"{start} --{action}--> expected {expected}, got {outcome} / {after}")
            if after != start:
                observed.add((start, after))
    assert not wrong, "\n".join(wrong)
    assert observed == {(a, b) for a, targets in sv.RUN_TRANSITIONS.items() for b in targets}


def test_invalid_transition_message(session_factory):
    with session_scope(session_factory) as s:
        seed(s)
        run = _run_in(s, "succeeded")
    with session_scope(session_factory) as s:
        with pytest.raises(InvalidTransition) as exc:
            sv.finish_run(s, run.id, status="failed")
    assert str(exc.value) == f"Run #{run.id} is succeeded; it cannot become failed."
