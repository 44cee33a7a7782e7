"""`portllm lineage` and `portllm status`: the chat's views, as tables or as JSON."""
from __future__ import annotations

from typing import Optional

import typer

from portllm_cli.admin.output import JSON_OPTION_HELP, print_json, print_view
from portllm_cli.admin.runtime import workspace, admin_command


@admin_command
def lineage(
    assistant: str = typer.Argument(..., help="The assistant whose history to show."),
    as_json: bool = typer.Option(False, "--json", help=JSON_OPTION_HELP),
) -> None:
    """Patches, the bases they came from, every run that carried them on, evaluations and rollouts."""
    from portllm_core.views import lineage_view
    from registry import services

    with workspace().session() as session:
        view = lineage_view(session, services.get_assistant(session, assistant))
    if as_json:
        print_json(view.to_json())
        return
    from portllm_cli import terminal

    print_view(terminal.lineage(view))


@admin_command
def status(
    assistant: Optional[str] = typer.Argument(None, help="Only this assistant."),
    as_json: bool = typer.Option(False, "--json", help=JSON_OPTION_HELP),
) -> None:
    """What is live where, which runs are in flight, which rollouts await a decision."""
    from portllm_core.views import status_view
    from registry import services

    with workspace().session() as session:
        name = None if assistant is None else services.get_assistant(session, assistant).name
        view = status_view(session, name, limit=None if as_json else 25)  # scripts get every row
    if as_json:
        print_json(view.to_json())
        return
    from portllm_cli import terminal

    print_view(terminal.status(view))
