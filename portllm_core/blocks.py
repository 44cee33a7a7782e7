"""Pure Block Kit builders: read models in, JSON-able blocks out, within Slack's limits."""
from __future__ import annotations

import re

from slack_sdk.models.blocks import ButtonElement, ConfirmObject, HeaderBlock, SectionBlock

from portllm_core.commands.replies import Reply
from portllm_core.ids import Action, Block
from portllm_core.views import GuardProposal, LineageView, ReleaseView, RunCard, StatusView, Table
from portllm_engine.kpi import wilson_interval
from registry.services.ratings import Satisfaction

# Slack's limits for the fields used here, as slack_sdk's Block Kit models define them; the
# block count and context text are limits Slack publishes that slack_sdk does not encode.
MAX_BLOCKS = 50
MAX_SECTION_TEXT = SectionBlock.text_max_length
MAX_HEADER_TEXT = HeaderBlock.text_max_length
MAX_BUTTON_TEXT = ButtonElement.text_max_length
MAX_CONTEXT_TEXT = 2000
MAX_CONFIRM_TITLE = ConfirmObject.title_max_length
MAX_CONFIRM_TEXT = ConfirmObject.text_max_length
MAX_CONFIRM_BUTTON = ConfirmObject.confirm_max_length
MAX_MESSAGE_TEXT = 3000  # our cap for the notification fallback `text`

_SLACK_USER = re.compile(r"^[UW][A-Z0-9]{2,}$")
_SLACK_CHANNEL = re.compile(r"^[CGD][A-Z0-9]{2,}$")

VERDICT_ICON = {"pass": ":white_check_mark:", "fail": ":x:", "inconclusive": ":grey_question:"}
STATUS_ICON = {
    "queued": ":hourglass_flowing_sand:",
    "running": ":gear:",
    "succeeded": ":white_check_mark:",
    "failed": ":x:",
    "cancelled": ":no_entry_sign:",
}
ROLLOUT_TEXT = {
    "awaiting_approval": "awaiting approval",
    "blocked": "blocked by the gate",
    "live": "live",
    "superseded": "superseded",
    "superseded_by_newer": "replaced by a newer run",
    "rolled_back": "rolled back",
    "rejected": "rejected",
}


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# Bidi embeddings, overrides and isolates (LRE RLE PDF LRO RLO, LRI RLI FSI PDI): they reorder the
# text around them, so a reason can show reversed ("Trojan Source"). The marks (LRM, RLM, ALM)
# only nudge neighbouring punctuation and right-to-left text needs them: they stay.
_BIDI_CONTROLS = re.compile("[\u202a-\u202e\u2066-\u2069]")


def neutralise_bidi(text: str) -> str:
    """Text from a person as it is shown: in the order it was typed, whatever controls it carries."""
    return _BIDI_CONTROLS.sub("", text)


def escape(text: str) -> str:
    """Escape the three characters Slack's mrkdwn treats as control characters, and drop bidi controls.

    Everything a person or a model wrote goes through here before Slack sees it: `<!channel>`
    would ping the channel and `<https://evil|reset your password>` would disguise a link.
    """
    return neutralise_bidi(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def fallback_text(text: str) -> str:
    """A message's top-level `text` (notifications, screen readers): escaped like blocks, clipped."""
    return clip(escape(text), MAX_MESSAGE_TEXT)


def who(user: str | None) -> str:
    if not user:
        return "someone"
    return f"<@{user}>" if _SLACK_USER.match(user) else escape(user)


def where(channel: str | None) -> str:
    if not channel:
        return "a channel"
    return f"<#{channel}>" if _SLACK_CHANNEL.match(channel) else escape(channel)


def pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f}%"


def satisfaction_text(score: Satisfaction | None) -> str:
    """'80% 👍 (38–96%) from 5 people, 7 ratings': the live KPI, per person; '–' before the first rating."""
    if score is None or not score.people:
        return "–"
    low, high = wilson_interval(score.up, score.people)
    people = "1 person" if score.people == 1 else f"{score.people} people"
    ratings = "1 rating" if score.ratings == 1 else f"{score.ratings} ratings"
    return f"{score.rate * 100:.0f}% 👍 ({low * 100:.0f}–{high * 100:.0f}%) from {people}, {ratings}"


def progress_bar(progress: float, width: int = 20) -> str:
    done = round(max(0.0, min(1.0, progress)) * width)
    return "▓" * done + "░" * (width - done)


def header(text: str, block_id: str) -> dict:
    return {"type": "header", "block_id": block_id,
            "text": {"type": "plain_text", "text": clip(text, MAX_HEADER_TEXT), "emoji": True}}


def section(text: str, block_id: str) -> dict:
    return {"type": "section", "block_id": block_id,
            "text": {"type": "mrkdwn", "text": clip(text, MAX_SECTION_TEXT)}}


def context(text: str, block_id: str) -> dict:
    return {"type": "context", "block_id": block_id,
            "elements": [{"type": "mrkdwn", "text": clip(text, MAX_CONTEXT_TEXT)}]}


def code_table(columns: tuple[str, ...], rows: list[tuple[str, ...]], limit: int = MAX_SECTION_TEXT) -> str:
    """A fixed-width table in a code block, cut at whole rows to fit `limit` characters."""
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    for shown, row in enumerate(rows):
        line = "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
        if sum(len(x) + 1 for x in lines) + len(line) + 40 > limit:
            lines.append(f"… and {len(rows) - shown} more")
            break
        lines.append(line)
    return "```\n" + "\n".join(lines) + "\n```"


def _button(text: str, action: Action, value: str, style: str | None, confirm: dict | None) -> dict:
    button = {"type": "button", "action_id": action.value, "value": value,
              "text": {"type": "plain_text", "text": clip(text, MAX_BUTTON_TEXT), "emoji": True}}
    if style:
        button["style"] = style
    if confirm:
        button["confirm"] = confirm
    return button


def _confirm(title: str, text: str, yes: str, style: str | None = None) -> dict:
    dialog = {"title": {"type": "plain_text", "text": clip(title, MAX_CONFIRM_TITLE)},
              "text": {"type": "mrkdwn", "text": clip(text, MAX_CONFIRM_TEXT)},
              "confirm": {"type": "plain_text", "text": clip(yes, MAX_CONFIRM_BUTTON)},
              "deny": {"type": "plain_text", "text": "Cancel"}}
    if style:
        dialog["style"] = style
    return dialog


# -- run card --------------------------------------------------------------------------------

def run_title(card: RunCard) -> str:
    return f"Run #{card.run_id} · {card.assistant} → {card.target_version}"


def run_summary(card: RunCard) -> str:
    """One line for notifications and the console: what the run is and where it stands."""
    state = card.status
    if card.active:
        state += f" {round(card.progress * 100)}%"
    if card.verdict:
        state += f", gate {card.verdict}"
    if card.rollout_state:
        state += f", {ROLLOUT_TEXT.get(card.rollout_state, card.rollout_state)}"
    return f"{run_title(card)}: {state}"


def run_card_message(card: RunCard) -> dict:
    """The `text` and `blocks` of a run's card message, wherever it is posted or updated."""
    return {"text": fallback_text(run_summary(card)), "blocks": run_card_blocks(card)}


def kpi_rows(card: RunCard) -> list[tuple[str, ...]]:
    rows = []
    for row in card.kpi:
        ci = "–" if row.ci_low is None or row.ci_high is None else f"{pct(row.ci_low)}–{pct(row.ci_high)}"
        rows.append((row.subject, pct(row.accuracy), ci, "–" if row.n is None else str(row.n)))
    return rows


def prompt_format_text(described: str) -> str:
    """How the suite's questions were put to the model, for people."""
    return "asked as written (raw)" if described == "raw" else f"asked in the {described}"


def reused_text(card: RunCard) -> str:
    """'scores reused from run #12' (the evaluation ledger), or nothing when every score was computed."""
    if not card.reused_from_runs:
        return ""
    runs = ", ".join(f"#{run}" for run in card.reused_from_runs)
    return f"scores reused from run{'s' if len(card.reused_from_runs) > 1 else ''} {runs}"


def produced(card: RunCard) -> str:
    """' · produced patch #N' once a re-tune or train run has registered its patch."""
    return f" · produced patch #{card.result_patch_id}" if card.result_patch_id else ""


def run_card_blocks(card: RunCard) -> list[dict]:
    if card.kind == "train":  # no source patch: it trains a new one on the target base
        what = f"*Training* of a new *{escape(card.assistant)}* patch on *{escape(card.target_version)}*"
    else:
        kind = {"transplant": "Transplant", "eval": "Evaluation", "retune": "Re-tune"}.get(card.kind, card.kind)
        origin = f" (trained on {escape(card.origin_version)})" if card.origin_version else ""
        what = f"*{kind}* of the *{escape(card.assistant)}* patch{origin} onto *{escape(card.target_version)}*"
    blocks = [
        header(run_title(card), Block.RUN_HEADER),
        section(f"{STATUS_ICON.get(card.status, '')} {what} · {card.status}{produced(card)} · "
                f"requested by {who(card.requested_by)} in {where(card.channel)}", Block.RUN_SUMMARY),
    ]
    if card.active:
        step = f" · {escape(card.step)}" if card.step else ""
        blocks.append(section(f"`{progress_bar(card.progress)}` {round(card.progress * 100)}%{step}",
                              Block.RUN_PROGRESS))
    if card.compat_errors:  # the reason first, then a bounded line per kind of problem
        reason, *rest = card.compat_errors
        items = "".join(f"\n• {escape(e)}" for e in rest)
        blocks.append(section(f"*Not compatible:* {escape(reason)}{items}", Block.RUN_COMPAT))
    if card.error and not card.compat_errors:
        blocks.append(section(f"*Failed:* {escape(card.error)}", Block.RUN_ERROR))
    if card.kpi:
        reused = f" · {reused_text(card)}" if card.reused_from_runs else ""
        scored_as = f" · {escape(prompt_format_text(card.prompt_format))}" if card.prompt_format else ""
        blocks.append(section(f"*KPI*{scored_as}{reused}\n" + code_table(("subject", "accuracy", "95% CI", "n"), kpi_rows(card),
                                                     MAX_SECTION_TEXT - 10), Block.RUN_KPI))
    if card.prompt_warning:
        blocks.append(context(f":warning: {escape(card.prompt_warning)}", Block.RUN_PROMPT_WARNING))
    if card.drift_overall is not None:
        worst = ", ".join(f"`{escape(m)}` {d:.3f}" for m, d in card.drift_modules[:5])
        text = f"*Drift* {card.drift_overall:.3f} overall" + (f" · most changed: {worst}" if worst else "")
        blocks.append(section(text, Block.RUN_DRIFT))
    if card.live_satisfaction is not None:
        blocks.append(context(f"Live in {where(card.channel)}: {satisfaction_text(card.live_satisfaction)} "
                              "from people rating its answers", Block.RUN_LIVE_KPI))
    if card.verdict:
        gate = f" ({escape(card.gate)})" if card.gate else ""
        blocks.append(section(f"{VERDICT_ICON.get(card.verdict, '')} Gate *{card.verdict}*{gate}", Block.RUN_VERDICT))
        if card.gate_reasons:
            blocks.append(context("\n".join(escape(reason) for reason in card.gate_reasons), Block.RUN_GATE))
    blocks.extend(_decision_blocks(card))
    return blocks[:MAX_BLOCKS]


def _decision_blocks(card: RunCard) -> list[dict]:
    if card.awaiting_decision:
        return [_actions(card)]
    if card.rollout_state in ("live", "superseded", "superseded_by_newer", "rolled_back", "rejected"):
        return [outcome_block(card)]
    return []


def _actions(card: RunCard) -> dict:
    value = str(card.run_id)
    where_to = where(card.channel)
    elements = []
    if card.rollout_state == "awaiting_approval":
        elements.append(_button("Approve", Action.APPROVE, value, "primary", _confirm(
            f"Approve run #{card.run_id}?",
            f"{escape(card.assistant)} on {escape(card.target_version)} goes live in {where_to}, "
            "replacing what is live there now.", "Approve", "primary")))
    elements.append(_button("Reject", Action.REJECT, value, "danger", _confirm(
        f"Reject run #{card.run_id}?", f"{escape(card.assistant)} on {escape(card.target_version)} will not go live.",
        "Reject", "danger")))
    if card.can_retune:
        elements.append(_button("Re-tune on the new base", Action.RETUNE, value, None, _confirm(
            f"Re-tune run #{card.run_id}?",
            "Starts a short re-tune of the patch on the new base, warm-started from the transplanted weights.",
            "Re-tune")))
    return {"type": "actions", "block_id": Block.RUN_ACTIONS.value, "elements": elements}


def outcome_text(card: RunCard) -> str:
    by = who(card.decided_by)
    reason = f": {escape(card.decision_reason)}" if card.decision_reason else ""
    match card.rollout_state:
        case "live":
            return f":rocket: Approved by {by} · live in {where(card.channel)}{reason}"
        case "superseded":
            return f":white_check_mark: Approved by {by} · since superseded by a newer rollout"
        case "rolled_back":
            return f":leftwards_arrow_with_hook: Approved by {by} · rolled back since"
        case "superseded_by_newer":
            return (f":recycle: Replaced by run #{card.replaced_by_run}, a newer proposal of "
                    f"{escape(card.assistant)} on {escape(card.target_version)} here: decide that one")
        case "rejected":
            return f":no_entry: Rejected by {by}{reason}"
        case "blocked":
            return (":x: Blocked by the gate: only an admin can approve it, with a reason "
                    f"(`/portllm approve {card.run_id} <reason>`)")
        case _:
            return ""


def outcome_block(card: RunCard) -> dict:
    return context(outcome_text(card), Block.RUN_OUTCOME)


# -- status, lineage, lists, home ------------------------------------------------------------

def status_rows(view: StatusView) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
    live = [(r.assistant, r.channel, r.version, f"#{r.run_id}" if r.run_id else "–", pct(r.accuracy),
             satisfaction_text(r.satisfaction)) for r in view.live]
    pending = []
    for r in view.pending:
        state = r.status + (f" {round(r.progress * 100)}%" if r.status == "running" else "")
        if r.rollout_state:
            state = ROLLOUT_TEXT.get(r.rollout_state, r.rollout_state)
        pending.append((f"#{r.run_id}", r.assistant, r.version, state, r.verdict or "–"))
    return live, pending


LIVE_COLUMNS = ("assistant", "channel", "version", "run", "accuracy", "rated")
PENDING_COLUMNS = ("run", "assistant", "version", "state", "gate")


def status_blocks(view: StatusView) -> list[dict]:
    live, pending = status_rows(view)
    title = f"Status · {view.assistant}" if view.assistant else "Status"
    blocks = [header(title, Block.STATUS_HEADER)]
    blocks.append(section("*Live*\n" + (code_table(LIVE_COLUMNS, live, MAX_SECTION_TEXT - 10) if live
                                        else "Nothing is live yet."), f"{Block.STATUS_ROW}_live"))
    local = [f"{r.assistant} in {r.channel} is answered by the local backend: {escape(r.served_locally)}"
             for r in view.live if r.served_locally]
    if local:
        blocks.append(section("\n".join(local)[:MAX_SECTION_TEXT], f"{Block.STATUS_ROW}_served_locally"))
    blocks.append(section("*In flight and awaiting a decision*\n"
                          + (code_table(PENDING_COLUMNS, pending, MAX_SECTION_TEXT - 40) if pending else "None."),
                          f"{Block.STATUS_ROW}_pending"))
    return blocks


def lineage_blocks(view: LineageView) -> list[dict]:
    blocks = [header(f"Lineage · {view.assistant} ({view.family})", Block.LINEAGE_HEADER)]
    if view.channel:
        blocks.append(context(f"Runs in {escape(view.channel)} only.", f"{Block.LINEAGE_HEADER}_scope"))
    if not view.patches:
        blocks.append(section("No patch registered yet.", f"{Block.LINEAGE_PATCH}_none"))
    for patch in view.patches:
        if len(blocks) >= MAX_BLOCKS - 1:
            blocks.append(context(f"… {len(view.patches)} patches in all; the CLI shows every one.",
                                  f"{Block.LINEAGE_PATCH}_more"))
            break
        parent = f", re-tuned from patch {patch.parent_patch_id}" if patch.parent_patch_id else ""
        rank = f", rank {patch.rank}" if patch.rank else ""
        lines = [f"*Patch {patch.patch_id}* · trained on *{escape(patch.origin_version)}*{rank}{parent}"]
        if patch.provenance:
            lines.append(f"_{escape(patch.provenance)}_")
        for run in patch.runs:
            verdict = f", gate {run.verdict}" if run.verdict else ""
            acc = f", {pct(run.accuracy)}" if run.accuracy is not None else ""
            rollout = ""
            if run.rollout_state:
                rollout = f", {ROLLOUT_TEXT.get(run.rollout_state, run.rollout_state)}"
                if run.channel:
                    rollout += f" in {where(run.channel)}"
                if run.decided_by:
                    rollout += f" ({who(run.decided_by)})"
            if run.satisfaction is not None:
                rollout += f", rated {satisfaction_text(run.satisfaction)}"
            lines.append(f"  → run #{run.run_id} {run.kind} onto *{escape(run.target_version)}*: "
                         f"{run.status}{acc}{verdict}{rollout}")
        blocks.append(section(_fit_lines(lines), f"{Block.LINEAGE_PATCH}_{patch.patch_id}"))
    return blocks


def _fit_lines(lines: list[str], limit: int = MAX_SECTION_TEXT) -> str:
    kept: list[str] = []
    for i, line in enumerate(lines):
        if sum(len(x) + 1 for x in kept) + len(line) + 30 > limit:
            kept.append(f"… and {len(lines) - i} more")
            break
        kept.append(line)
    return "\n".join(kept)


def table_blocks(table: Table) -> list[dict]:
    rows = [tuple(escape(c) for c in row) for row in table.rows]
    body = code_table(table.columns, rows, MAX_SECTION_TEXT - 10) if rows else table.empty
    return [section(f"*{escape(table.title)}*\n{body}", Block.LIST)]


# -- live guard, releases -------------------------------------------------------------------

def guard_text(proposal: GuardProposal) -> str:
    return (f"{proposal.assistant} {proposal.version} in {proposal.channel}: "
            f"{satisfaction_text(proposal.satisfaction)}, below the guard's {proposal.min_satisfaction:.0%} "
            f"(it watches from {proposal.min_ratings} people)")


def guard_blocks(proposal: GuardProposal) -> list[dict]:
    """The live guard's card: satisfaction fell; one click for an approver rolls back."""
    blocks = [section(f":rotating_light: *Live guard* · {escape(guard_text(proposal))}", Block.GUARD)]
    if proposal.previous_version is None:
        blocks.append(context("Nothing to roll back to: this is the first rollout here. Reject it by proposing "
                              "another run (`/portllm patch …`).", Block.GUARD_ACTIONS))
        return blocks
    blocks.append({"type": "actions", "block_id": Block.GUARD_ACTIONS.value, "elements": [
        _button(f"Roll back to {proposal.previous_version}", Action.ROLLBACK, proposal.assistant, "danger", _confirm(
            f"Roll back {proposal.assistant}?",
            f"{escape(proposal.previous_version)} goes live again in {where(proposal.channel)}, replacing "
            f"{escape(proposal.version)}.", "Roll back", "danger"))]})
    return blocks


RELEASE_COLUMNS = ("assistant", "channel", "run", "state", "gate")


def release_rows(view: ReleaseView) -> list[tuple[str, ...]]:
    rows = []
    for r in view.rows:
        if r.run_id is None:
            rows.append((r.assistant, r.channel, "–", "offered", "–"))
            continue
        state = ROLLOUT_TEXT.get(r.rollout_state, r.rollout_state) if r.rollout_state else r.status
        rows.append((r.assistant, r.channel, f"#{r.run_id}", state, r.verdict or "–"))
    return rows


def release_title(view: ReleaseView) -> str:
    return f"Release {view.family} {view.version}"


def release_blocks(view: ReleaseView) -> list[dict]:
    rows = [tuple(escape(c) for c in row) for row in release_rows(view)]
    body = code_table(RELEASE_COLUMNS, rows, MAX_SECTION_TEXT - 10) if rows else "No assistant is live on this family."
    return [header(release_title(view), Block.RELEASE), section(body, f"{Block.RELEASE}_rows")]


def offer_blocks(release_id: int, version: str, assistant: str, channel: str) -> list[dict]:
    """The `ask` policy's card: a new base is out; one click queues its transplant here."""
    return [section(f":package: *{escape(version)}* is out. Carry *{escape(assistant)}*'s patch onto it here? "
                    "The run is gated and waits for approval like any other.", Block.OFFER),
            {"type": "actions", "block_id": Block.OFFER_ACTIONS.value, "elements": [
                _button(f"Transplant onto {version}", Action.ACCEPT_OFFER, f"{release_id}:{assistant}", "primary",
                        None)]}]


def reply_blocks(reply: Reply) -> list[dict]:
    """The blocks of a command's reply: its card when it has one, else its text."""
    view = reply.view
    if isinstance(view, RunCard):
        blocks = [section(escape(reply.text), Block.MESSAGE), *run_card_blocks(view)]
    elif isinstance(view, StatusView):
        blocks = status_blocks(view)
    elif isinstance(view, LineageView):
        blocks = lineage_blocks(view)
    elif isinstance(view, Table):
        blocks = table_blocks(view)
    elif isinstance(view, GuardProposal):
        blocks = guard_blocks(view)
    elif isinstance(view, ReleaseView):
        blocks = release_blocks(view)
    else:
        blocks = [section(escape(reply.text), Block.MESSAGE)]
    return blocks[:MAX_BLOCKS]


def home_view(view: StatusView) -> dict:
    """The App Home tab: what is live where, and what awaits approval."""
    live, pending = status_rows(view)
    return {"type": "home", "blocks": [
        header("PortLLM", Block.HOME_HEADER),
        section("*Live*\n" + (code_table(LIVE_COLUMNS, live, MAX_SECTION_TEXT - 10) if live
                              else "Nothing is live yet."), Block.HOME_LIVE),
        section("*Awaiting approval and in flight*\n"
                + (code_table(PENDING_COLUMNS, pending, MAX_SECTION_TEXT - 40) if pending else "Nothing waiting."),
                Block.HOME_AWAITING),
        context("`/portllm help` lists the commands · `/portllm patch <assistant> onto <version>` "
                "carries a patch to a new base", Block.HOME_HELP),
    ]}
