"""`portllm assistant add/list/set`: assistants, their KPI suites, gates and approvers."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from portllm_core import records
from portllm_core.text import short
from portllm_cli.admin.output import JSON_OPTION_HELP, print_json, stdout, table
from portllm_cli.admin.runtime import BadInput, workspace, actor, admin_command

REQUESTER_HELP = "Who may request runs (repeat); none: everyone in the channel. Approvers always may."
FOUR_EYES_HELP = "Four-eyes rule: whoever requested a run cannot approve it."
ON_RELEASE_HELP = ("When a new base version of the family is registered: auto queues a transplant run per live "
                   "channel, ask posts a card offering it, off does nothing.")
PROMPT_FORMAT_HELP = ("How questions are put to the model, in answers and in the KPI suite alike: chat (its chat "
                      "template, else a plain template; the default) or raw (the suite's text as written).")
LIVE_GUARD_HELP = ("Once MIN_N people rated the live rollout's answers, propose a rollback when the share of 👍 "
                   "(each person weighing one) is below MIN_RATE (e.g. 20:0.7); `off` removes it.")

app = typer.Typer(help="Assistants: a family, a KPI suite, a gate and the people who approve.", no_args_is_help=True)


@app.command("add")
@admin_command
def add(
    name: str = typer.Argument(..., help="Assistant name, e.g. `support-assistant`."),
    family: str = typer.Option(..., "--family", help="The base family it runs on (registered with `base add`)."),
    suite: Path = typer.Option(..., "--suite", help="KPI suite, JSONL (multiple_choice / generate items)."),
    full_suite: Optional[Path] = typer.Option(
        None, "--full-suite", help="A larger suite, scored only when the quick suite's verdict is inconclusive."),
    min_accuracy: float = typer.Option(0.5, "--min-accuracy", help="Gate: lowest acceptable accuracy (0..1)."),
    max_regression: float = typer.Option(0.05, "--max-regression", help="Gate: largest drop vs live (0..1)."),
    approvers: list[str] = typer.Option([], "--approver", help="Who may approve a rollout (repeat)."),
    admins: list[str] = typer.Option([], "--admin", help="Who may override a failed gate with a reason (repeat)."),
    requesters: list[str] = typer.Option([], "--requester", help=REQUESTER_HELP),
    four_eyes: bool = typer.Option(False, "--four-eyes", help=FOUR_EYES_HELP),
    system_prompt: str = typer.Option("", "--system-prompt", help="Put before every question, served and scored."),
    prompt_format: str = typer.Option("chat", "--prompt-format", help=PROMPT_FORMAT_HELP),
    owner: str = typer.Option("", "--owner", help="Who owns the assistant (default: you)."),
    on_release: str = typer.Option("auto", "--on-release", help=ON_RELEASE_HELP),
    live_guard: Optional[str] = typer.Option(None, "--live-guard", metavar="MIN_N:MIN_RATE", help=LIVE_GUARD_HELP),
) -> None:
    """Register an assistant with its KPI suite (validated line by line, stored content-addressed)."""
    from portllm_core.flows import catalog

    family, suite_info = catalog.add_assistant(
        workspace(), name, family=family, suite=suite, full_suite=full_suite, min_accuracy=min_accuracy,
        max_regression=max_regression, approvers=approvers, admins=admins, requesters=requesters,
        four_eyes=four_eyes, system_prompt=system_prompt, owner=owner, on_release=on_release,
        live_guard=live_guard, prompt_format=prompt_format, actor=actor())
    stdout().print(
        f"Assistant {name} added on {family}: suite of {suite_info.n_items} items ({short(suite_info.digest)})"
        f"{', a full suite for inconclusive verdicts' if full_suite else ''}, "
        f"gate min {min_accuracy:.0%} / max regression {max_regression:.0%}, "
        f"approvers: {', '.join(approvers) or 'none yet'}, "
        f"requesters: {', '.join(requesters) or 'everyone in the channel'}"
        + (", four-eyes" if four_eyes else "")
    )


@app.command("list")
@admin_command
def list_(as_json: bool = typer.Option(False, "--json", help=JSON_OPTION_HELP)) -> None:
    """List assistants with their gates and approvers (`--json` adds requesters and the four-eyes rule)."""
    from registry import services

    with workspace().session() as session:
        rows = [records.assistant(a) for a in services.list_assistants(session)]
    if as_json:
        print_json(rows)
        return
    stdout().print(
        table(
            ["name", "family", "suite", "min acc", "max regr", "approvers", "admins"],
            [
                [r["name"], r["family"], short(r["suite_digest"]), f"{r['min_accuracy']:.0%}",
                 f"{r['max_regression']:.0%}", ", ".join(r["approvers"]), ", ".join(r["admins"])]
                for r in rows
            ],
            "No assistant registered yet.",
        )
    )


@app.command("set")
@admin_command
def set_(
    name: str = typer.Argument(..., help="The assistant to change."),
    suite: Optional[Path] = typer.Option(None, "--suite", help="Replace the KPI suite."),
    full_suite: Optional[Path] = typer.Option(None, "--full-suite", help="Set or replace the full (second-stage) suite."),
    min_accuracy: Optional[float] = typer.Option(None, "--min-accuracy", help="Gate: lowest acceptable accuracy."),
    max_regression: Optional[float] = typer.Option(None, "--max-regression", help="Gate: largest drop vs live."),
    approvers: list[str] = typer.Option([], "--approver", help="Replace the approvers (repeat)."),
    add_approvers: list[str] = typer.Option([], "--add-approver", help="Add an approver (repeat)."),
    remove_approvers: list[str] = typer.Option([], "--remove-approver", help="Remove an approver (repeat)."),
    admins: list[str] = typer.Option([], "--admin", help="Replace the admins (repeat)."),
    add_admins: list[str] = typer.Option([], "--add-admin", help="Add an admin (repeat)."),
    remove_admins: list[str] = typer.Option([], "--remove-admin", help="Remove an admin (repeat)."),
    requesters: list[str] = typer.Option([], "--requester", help="Replace who may request runs (repeat)."),
    add_requesters: list[str] = typer.Option([], "--add-requester", help="Add a requester (repeat)."),
    remove_requesters: list[str] = typer.Option([], "--remove-requester",
                                                help="Remove a requester (repeat); none left: everyone may."),
    four_eyes: Optional[bool] = typer.Option(None, "--four-eyes/--no-four-eyes", help=FOUR_EYES_HELP),
    system_prompt: Optional[str] = typer.Option(None, "--system-prompt", help="Replace the system prompt."),
    prompt_format: Optional[str] = typer.Option(None, "--prompt-format", help=PROMPT_FORMAT_HELP),
    on_release: Optional[str] = typer.Option(None, "--on-release", help=ON_RELEASE_HELP),
    live_guard: Optional[str] = typer.Option(None, "--live-guard", metavar="MIN_N:MIN_RATE", help=LIVE_GUARD_HELP),
) -> None:
    """Change an assistant's gate, approvers, admins, requesters, four-eyes rule, system prompt or KPI suite."""
    from portllm_core.flows import catalog
    from registry import services

    ws = workspace()
    with ws.session() as session:
        current = services.get_assistant(session, name)
        fields: dict[str, object] = {
            key: value for key, value in
            (("min_accuracy", min_accuracy), ("max_regression", max_regression), ("system_prompt", system_prompt),
             ("prompt_format", prompt_format), ("four_eyes", four_eyes),
             ("on_release", on_release),
             ("approvers", _edit_people("approver", current.approvers, approvers, add_approvers, remove_approvers)),
             ("admins", _edit_people("admin", current.admins, admins, add_admins, remove_admins)),
             ("requesters", _edit_people("requester", current.requesters, requesters, add_requesters,
                                         remove_requesters)))
            if value is not None
        }
    changed = catalog.update_assistant(ws, name, actor=actor(), suite=suite, full_suite=full_suite,
                                       live_guard=live_guard, **fields)
    stdout().print(f"Assistant {name} updated: {', '.join(changed)}")


def _edit_people(
    what: str, current: list[str], replace: list[str], add: list[str], remove: list[str]
) -> list[str] | None:
    if not (replace or add or remove):
        return None
    if replace and (add or remove):
        raise BadInput(f"--{what} replaces the list; do not combine it with --add-{what} or --remove-{what}")
    people = list(replace) if replace else list(current)
    for user in remove:
        if user not in people:
            raise BadInput(f"{user} is not {'an' if what[0] in 'aeiou' else 'a'} {what} of this assistant (current: {', '.join(current) or 'none'})")
        people.remove(user)
    people.extend(u for u in add if u not in people)
    return people
