"""Rollouts: proposal with the gate verdict, approval or rejection, rollback."""
from __future__ import annotations

from sqlalchemy import Select, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from registry.errors import (
    ConcurrentUpdate,
    GateFailedNeedsAdmin,
    InvalidTransition,
    NothingToRollBack,
    RegistryError,
    ReplacedByNewerRun,
    RunNotAwaitingApproval,
    channel_label,
)
from registry.models import (
    DECIDABLE_ROLLOUT_STATES,
    Assistant,
    AuditEvent,
    EvalSubject,
    Rollout,
    RolloutState,
    Run,
    RunKind,
    RunStatus,
    Verdict,
    utcnow,
)
from registry.services.catalog import is_admin, require_approver, resolve_assistant
from registry.services.common import audit, conditional_update
from registry.services.runs import get_run


# The rollout lifecycle. blocked -> live needs an admin and a reason; superseded -> live is a rollback.
ROLLOUT_TRANSITIONS: dict[str, frozenset[str]] = {
    RolloutState.AWAITING_APPROVAL: frozenset(
        {RolloutState.LIVE, RolloutState.REJECTED, RolloutState.SUPERSEDED_BY_NEWER}
    ),
    RolloutState.BLOCKED: frozenset(
        {RolloutState.LIVE, RolloutState.REJECTED, RolloutState.SUPERSEDED_BY_NEWER}
    ),
    RolloutState.LIVE: frozenset({RolloutState.SUPERSEDED, RolloutState.ROLLED_BACK}),
    RolloutState.SUPERSEDED: frozenset({RolloutState.LIVE}),
    RolloutState.ROLLED_BACK: frozenset(),
    RolloutState.REJECTED: frozenset(),
    RolloutState.SUPERSEDED_BY_NEWER: frozenset(),
}

# The audit trail's actor when a newer proposal retires older ones: no person decided it.
RETIRING_ACTOR = "system:newer-proposal"


def _live_query(assistant_id: int, channel: str) -> Select[tuple[Rollout]]:
    return select(Rollout).where(
        Rollout.assistant_id == assistant_id,
        Rollout.channel == channel,
        Rollout.state == RolloutState.LIVE,
    )


def live_rollout(s: Session, assistant: str | Assistant, channel: str) -> Rollout | None:
    return s.scalar(_live_query(resolve_assistant(s, assistant).id, channel))


def live_accuracy(s: Session, assistant: str | Assistant, channel: str) -> float | None:
    """The KPI accuracy of what is live in the channel (what the gate compares a candidate with)."""
    live = live_rollout(s, assistant, channel)
    return None if live is None else live.accuracy


def open_rollout(
    s: Session, run_id: int, *, verdict: str, live_accuracy: float | None = None,
    actor: str | None = None,
) -> Rollout:
    """Propose the run's candidate for its channel: awaiting_approval, or blocked on a `fail`.

    One proposal per (assistant, channel, target base) stays pending, the newest run's: older
    pending ones end as superseded_by_newer (audited), and so does this one if a newer run
    proposed first. The returned rollout's `retired` lists the proposals it retired.
    Idempotent: a run has at most one rollout, and opening it again returns it.
    """
    if verdict not in Verdict.__members__.values():
        raise RegistryError(f"Unknown gate verdict '{verdict}'; use one of: {', '.join(Verdict)}.")
    run = get_run(s, run_id)
    existing = s.scalar(
        select(Rollout).where(Rollout.run_id == run_id).options(selectinload(Rollout.retired))
    )
    if existing is not None:
        return existing
    if run.kind == RunKind.EVAL:
        raise RegistryError(f"Run #{run_id} is an eval-only run; only transplant and re-tune runs can go live.")
    if run.kind == RunKind.TRAIN:
        raise RegistryError(
            f"Run #{run_id} is a train run; transplant its patch onto a base to propose it for rollout."
        )
    if run.status not in (RunStatus.RUNNING, RunStatus.SUCCEEDED):
        raise InvalidTransition(f"Run #{run_id}", run.status, "a rollout")
    candidate = run.evaluation(EvalSubject.CANDIDATE)
    _lock_proposals_of(s, run.assistant_id)
    state = RolloutState.BLOCKED if verdict == Verdict.FAIL else RolloutState.AWAITING_APPROVAL
    rollout = Rollout(
        run_id=run_id, assistant_id=run.assistant_id, channel=run.channel, state=state.value,
        verdict=str(verdict), accuracy=None if candidate is None else candidate.accuracy,
        live_accuracy=live_accuracy,
    )
    s.add(rollout)
    try:
        s.flush()
    except IntegrityError as exc:
        raise ConcurrentUpdate(f"Run #{run_id} was proposed for rollout twice at once; `status` shows it.") from exc
    audit(s, actor=actor or run.worker or "worker", action=f"rollout.{'blocked' if state == RolloutState.BLOCKED else 'opened'}",
          entity_type="rollout", entity_id=rollout.id, assistant_id=run.assistant_id,
          run_id=run_id, channel=run.channel, verdict=str(verdict), accuracy=rollout.accuracy,
          live_accuracy=live_accuracy)
    _retire_older_proposals(s, run)
    s.expire(run, ["rollout"])
    # Reloaded: retiring may have ended this very rollout, and callers read `retired` after commit.
    return s.get(Rollout, rollout.id, populate_existing=True, options=[selectinload(Rollout.retired)])


def _lock_proposals_of(s: Session, assistant_id: int) -> None:
    """Serialise proposals of one assistant until commit, so two runs opening at once both see
    each other's rollout. NO KEY UPDATE leaves rows that merely reference the assistant (audit
    events, decisions) unblocked; SQLite serialises writers anyway."""
    s.execute(select(Assistant.id).where(Assistant.id == assistant_id).with_for_update(key_share=True))


def _retire_older_proposals(s: Session, run: Run) -> None:
    """Keep only the newest run's proposal pending for the run's (assistant, channel, target base)."""
    runs_on_base = select(Run.id).where(
        Run.assistant_id == run.assistant_id, Run.target_base_id == run.target_base_id
    )
    pending = list(s.scalars(
        select(Rollout).where(
            Rollout.assistant_id == run.assistant_id, Rollout.channel == run.channel,
            Rollout.run_id.in_(runs_on_base), Rollout.state.in_(DECIDABLE_ROLLOUT_STATES),
        ).order_by(Rollout.run_id).with_for_update().execution_options(populate_existing=True)
    ))
    newest = pending[-1]  # never empty: this run's rollout was just opened
    now = utcnow()
    for older in pending[:-1]:
        if conditional_update(
            s, Rollout, [Rollout.id == older.id, Rollout.state == older.state],
            state=RolloutState.SUPERSEDED_BY_NEWER.value, newer_rollout_id=newest.id, ended_at=now,
        ):
            audit(s, actor=RETIRING_ACTOR, action="rollout.superseded_by_newer", entity_type="rollout",
                  entity_id=older.id, assistant_id=run.assistant_id, run_id=older.run_id,
                  channel=older.channel, state_before=older.state, newer_run_id=newest.run_id,
                  newer_rollout_id=newest.id)


def _locked_rollout(s: Session, *where) -> Rollout | None:
    # FOR UPDATE (PostgreSQL) queues concurrent deciders on the row; SQLite serialises writers anyway.
    return s.scalar(select(Rollout).where(*where).with_for_update().execution_options(populate_existing=True))


def decide_rollout(
    s: Session, run_id: int, *, approve: bool, user: str, reason: str | None = None
) -> Rollout:
    """Approve (-> live, superseding the channel's live rollout) or reject the run's rollout.

    Only approvers (or admins) decide; a blocked rollout (gate `fail`) goes live only when an
    admin approves it with a reason. Of concurrent deciders exactly one wins; the others get
    RunNotAwaitingApproval.
    """
    run = get_run(s, run_id)
    assistant = run.assistant
    require_approver(assistant, user)
    rollout = _locked_rollout(s, Rollout.run_id == run_id)
    if rollout is None:
        raise RunNotAwaitingApproval(run_id, RunKind.EVAL if run.kind == RunKind.EVAL else run.status)
    expected = rollout.state
    if expected not in DECIDABLE_ROLLOUT_STATES:
        raise _not_awaiting(s, rollout)
    reason = (reason or "").strip() or None
    now = utcnow()
    if not approve:
        won = conditional_update(
            s, Rollout, [Rollout.id == rollout.id, Rollout.state == expected],
            state=RolloutState.REJECTED.value, decided_by=user, decided_at=now, reason=reason,
            ended_at=now,
        )
        _raise_if_lost(s, won, rollout)
        audit(s, actor=user, action="rollout.rejected", entity_type="rollout", entity_id=rollout.id,
              assistant_id=assistant.id, run_id=run_id, channel=rollout.channel, reason=reason,
              state_before=expected)
        return _reload_rollout(s, rollout.id)

    if expected == RolloutState.BLOCKED and not (is_admin(assistant, user) and reason):
        raise GateFailedNeedsAdmin(run_id, assistant.name, assistant.admins)
    previous = _locked_rollout(
        s, Rollout.assistant_id == rollout.assistant_id, Rollout.channel == rollout.channel,
        Rollout.state == RolloutState.LIVE, Rollout.id != rollout.id,
    )
    try:
        # Supersede first: the partial unique index allows one live row per channel at any moment.
        if previous is not None:
            if not conditional_update(
                s, Rollout, [Rollout.id == previous.id, Rollout.state == RolloutState.LIVE],
                state=RolloutState.SUPERSEDED.value, ended_at=now,
            ):
                # Someone changed the channel first: maybe by deciding this very rollout.
                _raise_if_lost(s, 0, rollout, expected)
                raise _concurrent_live(assistant, rollout.channel)
        won = conditional_update(
            s, Rollout, [Rollout.id == rollout.id, Rollout.state == expected],
            state=RolloutState.LIVE.value, decided_by=user, decided_at=now, reason=reason,
            live_since=now, ended_at=None,
            replaced_rollout_id=None if previous is None else previous.id,
        )
    except IntegrityError as exc:
        raise _concurrent_live(assistant, rollout.channel) from exc
    _raise_if_lost(s, won, rollout)
    if previous is not None:
        audit(s, actor=user, action="rollout.superseded", entity_type="rollout",
              entity_id=previous.id, assistant_id=assistant.id, run_id=previous.run_id,
              channel=previous.channel, by_rollout_id=rollout.id)
    audit(s, actor=user, action="rollout.approved", entity_type="rollout", entity_id=rollout.id,
          assistant_id=assistant.id, run_id=run_id, channel=rollout.channel, reason=reason,
          verdict=rollout.verdict, state_before=expected,
          replaced_rollout_id=None if previous is None else previous.id)
    return _reload_rollout(s, rollout.id)


def _concurrent_live(assistant: Assistant, channel: str) -> ConcurrentUpdate:
    return ConcurrentUpdate(
        f"Another rollout of {assistant.name} went live in {channel_label(channel)} at the same "
        "moment; check `status` and try again."
    )


def _raise_if_lost(s: Session, won: int, rollout: Rollout, expected: str | None = None) -> None:
    """After a conditional update: if another decider moved the rollout on, say what it is now."""
    if won:
        return
    current = _reload_rollout(s, rollout.id)
    if expected is None or current.state != expected:
        raise _not_awaiting(s, current)


def _not_awaiting(s: Session, rollout: Rollout) -> RunNotAwaitingApproval:
    """The refusal for deciding a rollout that is not pending; a retired one names the run to decide."""
    if rollout.state != RolloutState.SUPERSEDED_BY_NEWER:
        return RunNotAwaitingApproval(rollout.run_id, rollout.state)
    current = newest_proposal(s, rollout)
    return ReplacedByNewerRun(
        rollout.run_id, rollout.state, current_run_id=current.run_id, current_state=current.state,
        current_pending=current.state in DECIDABLE_ROLLOUT_STATES, assistant=rollout.assistant.name,
        version=rollout.run.target_base.version, channel=rollout.channel,
    )


def newest_proposal(s: Session, rollout: Rollout) -> Rollout | None:
    """The proposal that retired this one, following replacements to the newest; None if not retired."""
    current = None
    while rollout.newer_rollout_id is not None:  # the newer one may have been replaced in turn
        current = rollout = _reload_rollout(s, rollout.newer_rollout_id)
    return current


def _reload_rollout(s: Session, rollout_id: int) -> Rollout:
    return s.get(Rollout, rollout_id, populate_existing=True)


def rollback(
    s: Session, assistant: str | Assistant, channel: str, user: str, reason: str | None = None
) -> Rollout:
    """Put back the rollout the live one replaced: live -> rolled_back, superseded -> live.

    Returns the restored rollout. Approvers and admins may roll back.
    """
    owner = resolve_assistant(s, assistant)
    require_approver(owner, user)
    current = _locked_rollout(
        s, Rollout.assistant_id == owner.id, Rollout.channel == channel,
        Rollout.state == RolloutState.LIVE,
    )
    if current is None or current.replaced_rollout_id is None:
        raise NothingToRollBack(owner.name, channel)
    previous = _locked_rollout(s, Rollout.id == current.replaced_rollout_id)
    if previous is None or previous.state != RolloutState.SUPERSEDED:
        raise NothingToRollBack(owner.name, channel)
    now = utcnow()
    reason = (reason or "").strip() or None
    try:
        demoted = conditional_update(
            s, Rollout, [Rollout.id == current.id, Rollout.state == RolloutState.LIVE],
            state=RolloutState.ROLLED_BACK.value, ended_at=now,
        )
        restored = demoted and conditional_update(
            s, Rollout, [Rollout.id == previous.id, Rollout.state == RolloutState.SUPERSEDED],
            state=RolloutState.LIVE.value, live_since=now, ended_at=None,
        )
    except IntegrityError as exc:
        raise _concurrent_live(owner, channel) from exc
    if not restored:
        raise NothingToRollBack(owner.name, channel)
    audit(s, actor=user, action="rollout.rolled_back", entity_type="rollout", entity_id=current.id,
          assistant_id=owner.id, run_id=current.run_id, channel=channel, reason=reason,
          restored_rollout_id=previous.id)
    audit(s, actor=user, action="rollout.restored", entity_type="rollout", entity_id=previous.id,
          assistant_id=owner.id, run_id=previous.run_id, channel=channel, reason=reason,
          rolled_back_rollout_id=current.id)
    return _reload_rollout(s, previous.id)


SERVED_LOCALLY = "rollout.served_locally"


def record_served_locally(s: Session, rollout_id: int, reason: str) -> None:
    """The vLLM engine refused the rollout's patch, so its answers come from the local backend."""
    rollout = s.get(Rollout, rollout_id)
    if rollout is not None:
        audit(s, actor="system:serve", action=SERVED_LOCALLY, entity_type="rollout", entity_id=rollout.id,
              assistant_id=rollout.assistant_id, reason=reason[:500])


def served_locally(s: Session, rollout_ids: list[int]) -> dict[int, str]:
    """Rollout id -> why its answers come from the local backend, for those the engine refused."""
    if not rollout_ids:
        return {}
    events = s.scalars(select(AuditEvent).where(
        AuditEvent.action == SERVED_LOCALLY, AuditEvent.entity_type == "rollout",
        AuditEvent.entity_id.in_(rollout_ids)).order_by(AuditEvent.id))
    return {event.entity_id: event.details.get("reason", "") for event in events}
