"""Read models for the cards: plain frozen dataclasses built from the registry.

Slack blocks (portllm_core.blocks), the console (portllm_cli.terminal) and the workers' notifier render these;
nothing here talks to Slack or the terminal, and nothing here writes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from itertools import islice

from portllm_core import records
from portllm_core.text import short
from portllm_engine.compat_summary import summarise
from portllm_engine.kpi import wilson_interval

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from registry.errors import RegistryError, UnknownRun
from registry.services.ratings import Satisfaction, satisfaction
from registry.services.rollouts import newest_proposal, served_locally
from registry.models import (
    ACTIVE_RUN_STATUSES,
    EvalStage,
    DECIDABLE_ROLLOUT_STATES,
    Assistant,
    BaseModel,
    EvalSubject,
    Release,
    Evaluation,
    Patch,
    Rollout,
    RolloutState,
    Run,
    RunStatus,
    Verdict,
)



@dataclass(frozen=True)
class KpiRow:
    subject: str  # "candidate", "target base alone", "live (v1)"
    accuracy: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    n: int | None = None


@dataclass(frozen=True)
class RunCard:
    run_id: int
    kind: str  # transplant | eval | retune | train
    assistant: str
    family: str
    origin_version: str | None
    target_version: str
    status: str  # queued | running | succeeded | failed | cancelled
    progress: float  # 0..1
    step: str
    requested_by: str
    channel: str
    kpi: tuple[KpiRow, ...] = ()
    reused_from_runs: tuple[int, ...] = ()  # the runs whose ledger scores this one reused
    prompt_format: str | None = None  # how the candidate's questions were put: "chat template with the system prompt"
    prompt_warning: str | None = None  # the patch learned another format than the one it is scored and served in
    drift_overall: float | None = None
    drift_modules: tuple[tuple[str, float], ...] = ()  # the most drifted modules, worst first
    verdict: str | None = None  # pass | fail | inconclusive
    gate: str = ""  # the thresholds the verdict used, for people
    rollout_state: str | None = None
    decided_by: str | None = None
    decision_reason: str | None = None
    # What people read: the reason first, one bounded line per kind of problem (compat_summary);
    # every problem's message, for `run show --all`; how many problems the lines do not name.
    compat_errors: tuple[str, ...] = ()
    compat_problems: tuple[str, ...] = ()
    compat_elided: int = 0
    error: str | None = None
    gate_reasons: tuple[str, ...] = ()  # per stage: which test decided and why, for people
    can_retune: bool = False
    result_patch_id: int | None = None  # the patch a re-tune or train run produced
    replaced_by_run: int | None = None  # a newer run's proposal for the same base and channel retired this one
    live_satisfaction: Satisfaction | None = None  # 👍/👎 on the answers of what is live in the channel
    json: dict = field(default_factory=dict, compare=False, repr=False)  # records.*: what `--json` prints

    def to_json(self) -> dict:
        return self.json

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_RUN_STATUSES

    @property
    def awaiting_decision(self) -> bool:
        return self.rollout_state in DECIDABLE_ROLLOUT_STATES


@dataclass(frozen=True)
class LiveRow:
    assistant: str
    channel: str
    version: str
    run_id: int | None
    accuracy: float | None
    satisfaction: Satisfaction | None = None  # None: no rating yet
    served_locally: str | None = None  # why vLLM refused its patch, when its answers come from `local`
    # For `--json` (scripts), beside what people see:
    rollout_id: int | None = None
    base: str = ""  # the target base's label, `family/version`
    patch_id: int | None = None
    approved_by: str | None = None
    live_since: datetime | None = None

    def to_json(self) -> dict:
        return {
            "assistant": self.assistant, "channel": self.channel, "rollout_id": self.rollout_id,
            "run_id": self.run_id, "base": self.base, "patch_id": self.patch_id, "accuracy": self.accuracy,
            "approved_by": self.approved_by, "live_since": records.iso(self.live_since),
            "satisfaction": records.satisfaction_record(self.satisfaction),
            "served_locally": self.served_locally,
        }


@dataclass(frozen=True)
class PendingRow:
    run_id: int
    assistant: str
    version: str
    status: str
    progress: float
    rollout_state: str | None
    verdict: str | None
    # For `--json` (scripts), beside what people see:
    kind: str = ""
    step: str | None = None
    base: str = ""  # the target base's label, `family/version`
    requested_by: str = ""
    channel: str = ""
    created_at: datetime | None = None
    started_at: datetime | None = None
    rollout_id: int | None = None
    accuracy: float | None = None  # the candidate's, as its rollout recorded it
    live_accuracy: float | None = None
    opened_at: datetime | None = None  # when the rollout was proposed

    @property
    def awaiting_decision(self) -> bool:
        return self.rollout_state in DECIDABLE_ROLLOUT_STATES

    def rollout_json(self) -> dict:
        return {
            "assistant": self.assistant, "channel": self.channel, "rollout_id": self.rollout_id,
            "run_id": self.run_id, "state": self.rollout_state, "verdict": self.verdict, "base": self.base,
            "accuracy": self.accuracy, "live_accuracy": self.live_accuracy, "opened_at": records.iso(self.opened_at),
        }

    def run_json(self) -> dict:
        return {
            "run_id": self.run_id, "assistant": self.assistant, "kind": self.kind, "status": self.status,
            "progress": self.progress, "step": self.step, "base": self.base, "requested_by": self.requested_by,
            "channel": self.channel, "created_at": records.iso(self.created_at),
            "started_at": records.iso(self.started_at),
        }


@dataclass(frozen=True)
class StatusView:
    assistant: str | None  # None: every assistant
    live: tuple[LiveRow, ...]
    pending: tuple[PendingRow, ...]  # runs in flight and rollouts awaiting a decision, newest first

    def to_json(self) -> dict:
        """What `--json` prints: live rollouts; rollouts awaiting a decision and runs in flight, oldest first."""
        awaiting = sorted((r for r in self.pending if r.awaiting_decision), key=lambda r: (r.opened_at, r.rollout_id))
        running = sorted((r for r in self.pending if r.status in ACTIVE_RUN_STATUSES),
                         key=lambda r: (r.created_at, r.run_id))
        return {
            "assistant": self.assistant,
            "live": [r.to_json() for r in self.live],
            "awaiting_approval": [r.rollout_json() for r in awaiting],
            "runs": [r.run_json() for r in running],
        }


@dataclass(frozen=True)
class LineageRun:
    run_id: int
    kind: str
    target_version: str
    status: str
    verdict: str | None
    accuracy: float | None
    rollout_state: str | None
    channel: str | None
    decided_by: str | None
    satisfaction: Satisfaction | None = None
    # The run in full for `--json` (records.lineage_run), from the same rows as the fields above.
    record: dict = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class LineagePatch:
    patch_id: int
    origin_version: str
    rank: int | None
    parent_patch_id: int | None
    provenance: str  # one line: dataset digest, hyper-parameters, seed
    runs: tuple[LineageRun, ...]
    # The patch in full for `--json` (records.lineage_patch), its runs aside.
    record: dict = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class LineageView:
    assistant: str
    family: str
    patches: tuple[LineagePatch, ...]
    channel: str | None = None  # only this channel's runs (chat); None: every channel (operators)
    gate: dict = field(default_factory=dict, compare=False)  # min_accuracy, max_regression

    def to_json(self) -> dict:
        """What `--json` prints: the history as a tree, each level ordered by time: patches (origin
        base, provenance, parent) -> runs (target base, status, drift) -> evaluations and rollouts
        (state, channel, who decided, what it replaced, every event)."""
        return {
            "assistant": self.assistant,
            "family": self.family,
            "gate": self.gate,
            "channel": self.channel,  # runs of this channel only; None: every channel
            "patches": [p.record | {"runs": [r.record for r in p.runs]} for p in self.patches],
        }


@dataclass(frozen=True)
class Table:
    """A small list answer (bases, assistants): a title, column names and rows of text."""

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    empty: str = "Nothing yet."


@dataclass(frozen=True)
class ReleaseRow:
    assistant: str
    channel: str
    run_id: int | None  # None: offered (policy `ask`), nobody asked for the run yet
    status: str | None
    verdict: str | None
    rollout_state: str | None


@dataclass(frozen=True)
class ReleaseView:
    """A release and its verdicts as they land: one row per assistant and channel it reached."""

    release_id: int
    family: str
    version: str
    created_by: str
    rows: tuple[ReleaseRow, ...]
    json: dict = field(default_factory=dict, compare=False, repr=False)  # records.*: what `--json` prints

    def to_json(self) -> dict:
        return self.json


@dataclass(frozen=True)
class GuardProposal:
    """The live guard tripped: satisfaction fell below the assistant's threshold; propose a rollback."""

    assistant: str
    channel: str
    version: str  # what is live now
    previous_version: str | None  # what a rollback restores (None: nothing to roll back to)
    satisfaction: Satisfaction
    min_ratings: int
    min_satisfaction: float


# -- builders from the registry (read only) --------------------------------------------------


def _scored_format(run: Run) -> str | None:
    found = run.evaluation(EvalSubject.CANDIDATE)
    return found.score.prompt_format if found is not None else None


def _format_warning(patch, assistant) -> str | None:
    """Said when the patch learned its answers in another prompt format than the assistant serves."""
    trained = ((patch.provenance or {}).get("prompt_format") if patch is not None else None) or {}
    if not trained:
        return None
    served = (assistant.prompt_format, assistant.system_prompt or "")
    learned = (trained.get("kind"), trained.get("system_prompt") or "")
    if learned == served:
        return None
    what = "format" if learned[0] != served[0] else "system prompt"
    return (f"the patch was trained in another prompt {what} ({learned[0]}) than {assistant.name} serves "
            f"({served[0]}): its answers may differ from what it learned")

LIVE_LABEL = "live"


def run_card(session: Session, run_id: int) -> RunCard:
    """The card of one run; raises registry.errors.UnknownRun when there is none."""
    run = session.get(Run, run_id)
    if run is None:
        raise UnknownRun(run_id)
    assistant = run.assistant
    rollout = run.rollout
    subjects = ((EvalSubject.CANDIDATE, "candidate"), (EvalSubject.TARGET_BASE, "target base alone"),
                (EvalSubject.LIVE, _live_label(session, run, rollout)))
    kpi = [row for stage in EvalStage for subject, label in subjects
           if (found := run.evaluation(subject, stage)) is not None
           for row in _kpi_rows(label + ("" if stage == EvalStage.QUICK else f", {stage} suite"), found)]
    live_accuracy = rollout.live_accuracy if rollout is not None else None
    if live_accuracy is None and run.status == RunStatus.SUCCEEDED:
        current = _live_rollout(session, run.assistant_id, run.channel)
        if current is not None and current.run_id != run.id:
            live_accuracy = current.accuracy
    if kpi and live_accuracy is not None and run.evaluation(EvalSubject.LIVE) is None:  # scored before the ledger
        kpi.append(KpiRow(subjects[-1][1], live_accuracy))
    compared = _compared_rollout(session, run, rollout)
    drift = run.drift_report or {}
    modules = sorted((drift.get("modules") or {}).items(), key=lambda kv: kv[1], reverse=True)
    compat_problems = (run.compat_report or {}).get("errors") or ()
    compat_summary = summarise(compat_problems)
    verdict = rollout.verdict if rollout is not None else None
    return RunCard(
        run_id=run.id,
        kind=run.kind,
        assistant=assistant.name,
        family=assistant.family,
        origin_version=run.patch.origin_base.version if run.patch is not None else None,
        target_version=run.target_base.version,
        status=run.status,
        progress=run.progress or 0.0,
        step=run.step or "",
        requested_by=run.requested_by,
        channel=run.channel,
        kpi=tuple(kpi),
        reused_from_runs=tuple(sorted({e.reused_from_run for e in run.evaluations} - {None})),
        prompt_format=_scored_format(run),
        prompt_warning=_format_warning(run.patch, assistant),
        drift_overall=drift.get("overall"),
        drift_modules=tuple((str(m), float(d)) for m, d in modules[:5]),
        verdict=verdict,
        gate=_gate_text(assistant, live_accuracy) if verdict else "",
        gate_reasons=tuple(_gate_reason(stage) for stage in (run.gate_report or {}).get("stages", ())),
        rollout_state=rollout.state if rollout is not None else None,
        decided_by=rollout.decided_by if rollout is not None else None,
        decision_reason=rollout.reason if rollout is not None else None,
        compat_errors=compat_summary.lines,
        compat_problems=tuple(str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in compat_problems),
        compat_elided=compat_summary.elided,
        error=run.error,
        # The fallback whenever the gate did not pass: a clear fail, or evidence too thin to pass.
        can_retune=(verdict in (Verdict.FAIL, Verdict.INCONCLUSIVE) and rollout.state in DECIDABLE_ROLLOUT_STATES
                    and run.patch is not None and run.patch.train_data_ref is not None),
        result_patch_id=run.result_patch_id,
        replaced_by_run=_replaced_by_run(session, rollout),
        live_satisfaction=(satisfaction(session, [compared.id]).get(compared.id) if compared is not None else None),
        json=records.run(run),
    )


def _gate_reason(stage: dict) -> str:
    test = "item by item against live" if stage.get("test") == "paired" else "on its own score"
    return f"{stage.get('stage', 'quick').capitalize()} suite, {test}: {stage.get('verdict')}. {stage.get('explanation', '')}"


def _replaced_by_run(session: Session, rollout: Rollout | None) -> int | None:
    newest = None if rollout is None else newest_proposal(session, rollout)
    return None if newest is None else newest.run_id


def _kpi_rows(subject: str, evaluation: Evaluation) -> list[KpiRow]:
    """The subject's score, then its score on each group of questions (the gate's floor holds for each)."""
    rows = [KpiRow(subject, evaluation.accuracy, evaluation.ci_low, evaluation.ci_high, evaluation.n)]
    for name, counts in sorted(((evaluation.metrics or {}).get("groups") or {}).items()):
        k, n = counts["correct"], counts["n"]
        rows.append(KpiRow(f"  {subject} · {name}", k / n, *wilson_interval(k, n), n))
    return rows


def _live_rollout(session: Session, assistant_id: int, channel: str) -> Rollout | None:
    return session.scalars(select(Rollout).where(
        Rollout.assistant_id == assistant_id, Rollout.channel == channel,
        Rollout.state == RolloutState.LIVE)).first()


def _compared_rollout(session: Session, run: Run, rollout: Rollout | None) -> Rollout | None:
    """The rollout the candidate was compared against: the one it replaced, else what is live now."""
    if rollout is not None and rollout.replaced is not None:
        return rollout.replaced
    current = _live_rollout(session, run.assistant_id, run.channel)
    return current if current is not None and current.run_id != run.id else None


def _live_label(session: Session, run: Run, rollout: Rollout | None) -> str:
    """'live (v1)': the version the candidate was compared against, when it can be told."""
    compared = _compared_rollout(session, run, rollout)
    return f"{LIVE_LABEL} ({compared.run.target_base.version})" if compared is not None else LIVE_LABEL


def _gate_text(assistant: Assistant, live_accuracy: float | None) -> str:
    threshold = assistant.min_accuracy
    text = f"needs ≥ {assistant.min_accuracy * 100:.0f}%"
    if live_accuracy is not None:
        threshold = max(threshold, live_accuracy - assistant.max_regression)
        text += f" and ≥ live − {assistant.max_regression * 100:.0f} pts, so ≥ {threshold * 100:.1f}%"
    return text


def status_view(session: Session, assistant: str | None = None, *, channel: str | None = None,
                viewer: str | None = None, limit: int | None = 25) -> StatusView:
    """What is live where, runs in flight and rollouts awaiting a decision (newest first, at most
    `limit`; None: all); only `channel`'s, or only what `viewer` requested or may decide (records.visible)."""
    live_q = select(Rollout).join(Rollout.assistant).where(Rollout.state == RolloutState.LIVE)
    runs_q = (select(Run).join(Run.assistant).outerjoin(Run.rollout)
              .where(or_(Run.status.in_(ACTIVE_RUN_STATUSES), Rollout.state.in_(DECIDABLE_ROLLOUT_STATES))))
    if assistant is not None:
        live_q = live_q.where(Assistant.name == assistant)
        runs_q = runs_q.where(Assistant.name == assistant)
    live_rollouts = [r for r in session.scalars(live_q.order_by(Assistant.name, Rollout.channel))
                     if records.visible(r.run, channel=channel, viewer=viewer)]
    scores = satisfaction(session, [r.id for r in live_rollouts])
    local = served_locally(session, [r.id for r in live_rollouts])
    live = tuple(
        LiveRow(r.assistant.name, r.channel, r.run.target_base.version, r.run_id, r.accuracy, scores.get(r.id),
                local.get(r.id), rollout_id=r.id, base=r.run.target_base.label, patch_id=r.run.candidate_patch.id,
                approved_by=r.decided_by, live_since=r.live_since)
        for r in live_rollouts
    )
    if channel is not None:  # the channel filter in SQL too, so `limit` counts this channel's runs
        runs_q = runs_q.where(Run.channel == channel)
    shown = (run for run in session.scalars(runs_q.order_by(Run.id.desc()))
             if records.visible(run, channel=channel, viewer=viewer))
    pending = tuple(_pending_row(run) for run in islice(shown, limit))
    return StatusView(assistant, live, pending)


def _pending_row(run: Run) -> PendingRow:
    rollout = run.rollout
    return PendingRow(
        run.id, run.assistant.name, run.target_base.version, run.status, run.progress or 0.0,
        rollout.state if rollout else None, rollout.verdict if rollout else None,
        kind=run.kind, step=run.step, base=run.target_base.label, requested_by=run.requested_by,
        channel=run.channel, created_at=run.created_at, started_at=run.started_at,
        rollout_id=rollout.id if rollout else None, accuracy=rollout.accuracy if rollout else None,
        live_accuracy=rollout.live_accuracy if rollout else None, opened_at=rollout.created_at if rollout else None,
    )


def lineage_view(session: Session, assistant: Assistant, channel: str | None = None) -> LineageView:
    """The assistant's patches and their runs, each ordered by time; with a channel, only the runs
    in it (others may be private)."""
    patches = list(session.scalars(select(Patch).where(Patch.assistant_id == assistant.id)
                                   .order_by(Patch.created_at, Patch.id)))
    runs_by_patch: dict[int, list[Run]] = {}
    all_runs = list(session.scalars(records.runs_of(assistant, channel).order_by(Run.created_at, Run.id)))
    for run in all_runs:
        # A train run has no source patch: it belongs under the patch it produced.
        runs_by_patch.setdefault(run.patch_id or run.result_patch_id, []).append(run)
    scores = satisfaction(session, [run.rollout.id for run in all_runs if run.rollout is not None])
    events = records.rollout_events(session, assistant)
    return LineageView(
        assistant.name, assistant.family,
        tuple(LineagePatch(patch.id, patch.origin_base.version, patch.rank, patch.parent_patch_id,
                           _provenance_line(patch.provenance or {}),
                           tuple(_lineage_run(run, scores, events) for run in runs_by_patch.get(patch.id, ())),
                           record=records.lineage_patch(patch))
              for patch in patches),
        channel,
        gate={"min_accuracy": assistant.min_accuracy, "max_regression": assistant.max_regression},
    )


def _lineage_run(run: Run, scores: dict[int, Satisfaction], events: dict) -> LineageRun:
    rollout = run.rollout
    return LineageRun(run.id, run.kind, run.target_base.version, run.status,
                      rollout.verdict if rollout else None, _accuracy(run),
                      rollout.state if rollout else None, rollout.channel if rollout else None,
                      rollout.decided_by if rollout else None, scores.get(rollout.id) if rollout else None,
                      record=records.lineage_run(run, scores, events))


def _accuracy(run: Run) -> float | None:
    evaluation = run.evaluation(EvalSubject.CANDIDATE)
    return evaluation.accuracy if evaluation is not None else None


def _provenance_line(provenance: dict) -> str:
    """The training provenance in one line; nested values are summarised, never dumped."""
    parts = []
    for key, value in provenance.items():
        if isinstance(value, (dict, list)):
            continue
        if isinstance(value, float):
            text = f"{value:.3g}"  # rounded as the cards round (`final_loss 0.0106`); `--json` keeps every digit
        else:
            text = str(value)
        parts.append(f"{key} {short(text) if key.endswith('digest') or key.endswith('sha256') else text}")
    return ", ".join(parts)[:300]


def bases_table(bases: list[BaseModel], family: str | None) -> Table:
    rows = tuple((b.family, b.version, b.fingerprint[:12], b.created_at.strftime("%Y-%m-%d")) for b in bases)
    title = f"Bases of {family}" if family else "Bases"
    return Table(title, ("family", "version", "fingerprint", "registered"), rows, "No base registered yet.")


def assistants_table(session: Session, assistants: list[Assistant], channel: str) -> Table:
    """The assistants, and which version of each is live in `channel` (other channels may be private)."""
    live: dict[int, list[str]] = {}
    live_here = select(Rollout).where(Rollout.state == RolloutState.LIVE, Rollout.channel == channel)
    for rollout in session.scalars(live_here):
        live.setdefault(rollout.assistant_id, []).append(rollout.run.target_base.version)
    rows = tuple(
        (a.name, a.family, f"≥{a.min_accuracy * 100:.0f}%, −{a.max_regression * 100:.0f} pts",
         ", ".join(a.approvers) or "–", "; ".join(live.get(a.id, [])) or "–")
        for a in assistants
    )
    return Table("Assistants", ("name", "family", "gate", "approvers", "live here"), rows,
                 "No assistant registered yet.")


def live_assistants(session: Session, channel: str) -> list[str]:
    """Names of the assistants live in a channel (who answers an @mention there)."""
    query = (select(Assistant.name).join(Rollout, Rollout.assistant_id == Assistant.id)
             .where(Rollout.channel == channel, Rollout.state == RolloutState.LIVE).order_by(Assistant.name))
    return list(session.scalars(query))


def release_view(release: Release) -> ReleaseView:
    """The release's runs with their verdicts, and the offers nobody has taken up yet."""
    data = records.release(release)
    rows = [ReleaseRow(r["assistant"], r["channel"], r["run_id"], r["status"], r["verdict"], r["rollout_state"])
            for r in data["runs"]]
    rows += [ReleaseRow(o["assistant"], o["channel"], None, None, None, None) for o in data["offers"]]
    return ReleaseView(release.id, release.base.family, release.base.version, release.created_by, tuple(rows),
                       json=data)


def find_release(session: Session, family: str, version: str) -> Release:
    """The release of `family version`, or a refusal that says how to start one."""
    from registry.services import get_base, get_release

    base = get_base(session, family, version)
    release = get_release(session, base)
    if release is None:
        raise RegistryError(f"{base.label} has no release yet: `portllm release start {base.family} {base.version}` "
                            "starts it (registering a base starts it too).")
    return release


def guard_proposal(session: Session, rollout: Rollout, score: Satisfaction) -> GuardProposal:
    assistant = rollout.assistant
    previous = rollout.replaced
    return GuardProposal(assistant.name, rollout.channel, rollout.run.target_base.version,
                         previous.run.target_base.version if previous is not None else None, score,
                         assistant.guard_min_ratings, assistant.guard_min_satisfaction)
