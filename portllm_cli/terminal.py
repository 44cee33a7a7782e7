"""The console's cards: the same read models as Slack's blocks, rendered with rich."""
from __future__ import annotations

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table as RichTable
from rich.text import Text
from rich.tree import Tree

from portllm_core.blocks import (
    LIVE_COLUMNS,
    PENDING_COLUMNS,
    ROLLOUT_TEXT,
    RELEASE_COLUMNS,
    guard_text,
    kpi_rows,
    neutralise_bidi,
    prompt_format_text,
    reused_text,
    pct,
    release_rows,
    release_title,
    satisfaction_text,
    produced,
    progress_bar,
    run_title,
    status_rows,
)
from portllm_core.commands.replies import Reply
from portllm_core.views import GuardProposal, LineageView, ReleaseView, RunCard, StatusView, Table

VERDICT_STYLE = {"pass": "bold green", "fail": "bold red", "inconclusive": "bold yellow"}


def render(reply: Reply) -> RenderableType:
    view = reply.view
    style = None if reply.ok else "red"
    text = Text(neutralise_bidi(reply.text), style=style)  # it may echo what was typed
    if isinstance(view, RunCard):
        return Group(text, run_card(view))
    if isinstance(view, StatusView):
        return status(view)
    if isinstance(view, LineageView):
        return lineage(view)
    if isinstance(view, Table):
        return table(view)
    if isinstance(view, GuardProposal):
        return Group(text, guard(view))
    if isinstance(view, ReleaseView):
        return release(view)
    return text


def _table(title: str | None, columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> RichTable:
    out = RichTable(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for column in columns:
        out.add_column(column)
    for row in rows:
        out.add_row(*(neutralise_bidi(cell) for cell in row))
    return out


def run_card(card: RunCard, *, every_problem: bool = False) -> Panel:
    """The run's card; `every_problem` lists every compatibility problem instead of the first few."""
    parts: list[RenderableType] = []
    if card.kind == "train":  # no source patch: it trains a new one on the target base
        what = f"training of a new {card.assistant} patch on {card.target_version}"
    else:
        origin = f" (trained on {card.origin_version})" if card.origin_version else ""
        what = f"{card.kind} of the {card.assistant} patch{origin} onto {card.target_version}"
    # Who asked and why a decision was made are a person's text: shown in the order typed.
    requested_by, channel = neutralise_bidi(card.requested_by), neutralise_bidi(card.channel)
    parts.append(Text(f"{what} · {card.status}{produced(card)} · requested by {requested_by} in {channel}"))
    if card.active:
        parts.append(Text(f"{progress_bar(card.progress)} {round(card.progress * 100)}% {card.step}"))
    if card.compat_errors:  # the reason first, then a bounded line per kind of problem (or every problem)
        parts.append(Text(f"not compatible: {card.compat_errors[0]}", style="red"))
        listed = card.compat_problems if every_problem and card.compat_problems else card.compat_errors[1:]
        parts.extend(Text(f"  {line}", style="red") for line in listed)
        if card.compat_elided and not every_problem:
            parts.append(Text(f"  (`portllm run show {card.run_id} --all` lists all {len(card.compat_problems)} "
                              "problems)", style="red"))
    if card.error and not card.compat_errors:
        parts.append(Text(f"failed: {card.error}", style="red"))
    if card.kpi:
        parts.append(_table("KPI", ("subject", "accuracy", "95% CI", "n"), kpi_rows(card)))
        notes = [prompt_format_text(card.prompt_format)] if card.prompt_format else []
        notes += [reused_text(card)] if card.reused_from_runs else []
        if notes:
            parts.append(Text(" · ".join(notes), style="dim"))
    if card.prompt_warning:
        parts.append(Text(f"warning: {card.prompt_warning}", style="yellow"))
    if card.drift_overall is not None:
        worst = ", ".join(f"{m} {d:.3f}" for m, d in card.drift_modules[:5])
        parts.append(Text(f"drift {card.drift_overall:.3f} overall" + (f" · most changed: {worst}" if worst else "")))
    if card.live_satisfaction is not None:
        parts.append(Text(f"live in {channel}: {satisfaction_text(card.live_satisfaction)} from ratings"))
    if card.verdict:
        line = Text("gate ")
        line.append(card.verdict, style=VERDICT_STYLE.get(card.verdict))
        if card.gate:
            line.append(f" ({card.gate})")
        parts.append(line)
        parts.extend(Text(reason, style="dim") for reason in card.gate_reasons)
    if card.rollout_state == "awaiting_approval":
        parts.append(Text(f"awaiting approval: `approve {card.run_id}` or `reject {card.run_id} [reason]`",
                          style="bold"))
    elif card.rollout_state == "blocked":
        hint = f"blocked by the gate: an admin may `approve {card.run_id} <reason>`; or `reject {card.run_id}`"
        parts.append(Text(hint, style="bold red"))
    elif card.rollout_state:
        by = f" by {neutralise_bidi(card.decided_by)}" if card.decided_by else ""
        reason = f": {neutralise_bidi(card.decision_reason)}" if card.decision_reason else ""
        if card.replaced_by_run is not None:
            by = f" (run #{card.replaced_by_run}): decide that one"
        parts.append(Text(f"{ROLLOUT_TEXT.get(card.rollout_state, card.rollout_state)}{by}{reason}", style="bold"))
    if card.can_retune:
        parts.append(Text(f"fallback: `retune {card.run_id}` re-tunes the patch on {card.target_version}, "
                          "warm-started from the transplanted weights", style="bold"))
    return Panel(Group(*parts), title=run_title(card), title_align="left")


def status(view: StatusView) -> Group:
    live, pending = status_rows(view)
    title = f"status · {view.assistant}" if view.assistant else "status"
    return Group(
        Text(title, style="bold"),
        _table("live", LIVE_COLUMNS, live) if live else Text("nothing is live yet"),
        _table("in flight and awaiting a decision", PENDING_COLUMNS, pending) if pending
        else Text("nothing in flight or awaiting a decision"),
    )


def lineage(view: LineageView) -> Tree:
    tree = Tree(f"[bold]{view.assistant}[/bold] ({view.family})")
    if not view.patches:
        tree.add("no patch registered yet")
    for patch in view.patches:
        parent = f", re-tuned from patch {patch.parent_patch_id}" if patch.parent_patch_id else ""
        node = tree.add(f"patch {patch.patch_id} · trained on {patch.origin_version}, rank {patch.rank}{parent}")
        if patch.provenance:
            node.add(Text(patch.provenance, style="dim"))
        for run in patch.runs:
            bits = [f"run #{run.run_id} {run.kind} onto {run.target_version}: {run.status}"]
            if run.accuracy is not None:
                bits.append(pct(run.accuracy))
            if run.verdict:
                bits.append(f"gate {run.verdict}")
            if run.rollout_state:
                where = f" in {run.channel}" if run.channel else ""
                by = f" ({run.decided_by})" if run.decided_by else ""
                bits.append(f"{ROLLOUT_TEXT.get(run.rollout_state, run.rollout_state)}{where}{by}")
            if run.satisfaction is not None:
                bits.append(f"rated {satisfaction_text(run.satisfaction)}")
            node.add(Text(neutralise_bidi(", ".join(bits))))
    return tree


def guard(proposal: GuardProposal) -> Panel:
    hint = (f"`rollback {proposal.assistant}` puts {proposal.previous_version} back (an approver)"
            if proposal.previous_version else "nothing to roll back to: this is the first rollout here")
    return Panel(Group(Text(guard_text(proposal)), Text(hint, style="bold")), title="live guard",
                 title_align="left", border_style="red")


def release(view: ReleaseView) -> RenderableType:
    rows = release_rows(view)
    if not rows:
        return Text(f"{release_title(view)}: no assistant is live on this family.")
    return _table(release_title(view), RELEASE_COLUMNS, rows)


def table(view: Table) -> RenderableType:
    if not view.rows:
        return Text(f"{view.title}: {view.empty}")
    return _table(view.title, view.columns, list(view.rows))
