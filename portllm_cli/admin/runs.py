"""`portllm run show/list/wait`: transplant, eval, re-tune and train runs as the registry records them."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import typer

from portllm_cli.admin import render
from portllm_core import records
from portllm_cli.admin.output import JSON_OPTION_HELP, print_json, print_view, progress_bar, stdout, table
from portllm_cli.admin.runtime import BadInput, workspace, admin_command
from portllm_core.workspace import Workspace

app = typer.Typer(help="Runs: transplant-and-evaluate, eval-only, re-tune and train jobs.", no_args_is_help=True)

EXIT_FAILED = 1
EXIT_TIMEOUT = 124  # what coreutils' `timeout` returns, so scripts treat both alike
FINISHED = {"succeeded": 0, "failed": EXIT_FAILED, "cancelled": EXIT_FAILED}


@app.command("show")
@admin_command
def show(
    run_id: int = typer.Argument(..., metavar="N", help="Run number."),
    every_problem: bool = typer.Option(False, "--all", help="List every compatibility problem (the card shows "
                                                            "the first few)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_OPTION_HELP),
) -> None:
    """Status, progress, compatibility and drift reports, evaluations, verdict and rollout state."""
    from portllm_core.views import run_card
    from registry import services

    with workspace().session() as session:
        services.get_run(session, run_id)  # "no run #N" for a number that is not a run
        card = run_card(session, run_id)
    if as_json:
        print_json(card.to_json())
        return
    print_view(render.run(card, every_problem=every_problem))


@app.command("list")
@admin_command
def list_(
    assistant: Optional[str] = typer.Option(None, "--assistant", help="Only this assistant's runs."),
    status: Optional[str] = typer.Option(None, "--status", help="Only runs in this status (queued, running, …)."),
    limit: int = typer.Option(50, "--limit", min=1, help="At most this many, newest first."),
    as_json: bool = typer.Option(False, "--json", help=JSON_OPTION_HELP),
) -> None:
    """List runs, newest first."""
    from sqlalchemy import select

    from registry import services
    from registry.models import Run, RunStatus

    if status is not None and status not in RunStatus.__members__.values():
        raise BadInput(f"unknown status {status!r}; use one of: {', '.join(RunStatus)}")
    with workspace().session() as session:
        query = select(Run).order_by(Run.id.desc()).limit(limit)
        if assistant is not None:
            query = query.where(Run.assistant_id == services.get_assistant(session, assistant).id)
        if status is not None:
            query = query.where(Run.status == status)
        rows = [records.run_summary(r) for r in session.scalars(query)]
    if as_json:
        print_json(rows)
        return
    stdout().print(
        table(
            ["run", "kind", "assistant", "onto", "status", "progress", "verdict", "rollout", "by", "channel"],
            [
                [f"#{r['id']}", r["kind"], r["assistant"], r["target_base"]["version"], r["status"],
                 f"{r['progress']:.0%}", r["verdict"], r["rollout_state"], r["requested_by"], r["channel"]]
                for r in rows
            ],
            "No runs yet.",
        )
    )


@app.command("wait")
@admin_command
def wait(
    run_id: int = typer.Argument(..., metavar="N", help="Run number."),
    timeout: Optional[float] = typer.Option(None, "--timeout", min=0.0, help="Give up after this many seconds (exit 124)."),
    interval: float = typer.Option(1.0, "--interval", min=0.05, help="Seconds between looks at the registry."),
) -> None:
    """Wait until the run finishes: exit 0 if it succeeded, 1 if it failed or was cancelled, 124 on timeout."""
    followed = follow(workspace(), run_id, f"Run #{run_id}", timeout=timeout, interval=interval)
    if followed.status == "succeeded":
        rollout = followed.rollout
        outcome = f": gate {rollout[0]}, rollout {rollout[1].replace('_', ' ')}" if rollout else ""
        stdout().print(f"Run #{run_id} succeeded{outcome}")
    else:
        typer.echo(f"Run #{run_id} {followed.status}" + (f": {followed.error}" if followed.error else ""), err=True)
    raise typer.Exit(FINISHED[followed.status])


@dataclass(frozen=True)
class Finished:
    status: str  # succeeded | failed | cancelled
    error: str | None  # on one line
    rollout: tuple[str, str] | None  # (verdict, state)
    result_patch_id: int | None


def follow(env: Workspace, run_id: int, description: str, *, timeout: float | None = None,
           interval: float = 1.0) -> Finished:
    """Poll the run with a progress bar until it finishes; exit 124 when `timeout` passes first."""
    from registry import services

    from registry.db import outage_reason, unreachable

    deadline = None if timeout is None else time.monotonic() + timeout
    outage = None
    with progress_bar(description) as progress:
        while True:
            try:
                with env.session() as session:
                    run = services.get_run(session, run_id)
                    status, fraction, step, error = run.status, run.progress, run.step, run.error
                    rollout = (run.rollout.verdict, run.rollout.state) if run.rollout else None
                    result_patch_id = run.result_patch_id
            except Exception as exc:  # the registry down: say so, keep following within the timeout
                if not unreachable(exc):
                    raise
                if outage is None:
                    outage = time.monotonic()
                    typer.echo(f"Run #{run_id}: the registry is unreachable ({outage_reason(exc)}); still following it",
                               err=True)
                if deadline is not None and time.monotonic() >= deadline:
                    typer.echo(f"Run #{run_id}: the registry stayed unreachable for {time.monotonic() - outage:.0f}s; "
                               f"`portllm run wait {run_id}` follows it once it is back", err=True)
                    raise typer.Exit(EXIT_TIMEOUT) from None
                time.sleep(interval if deadline is None else max(0.0, min(interval, deadline - time.monotonic())))
                continue
            if outage is not None:
                typer.echo(f"Run #{run_id}: the registry is back after {time.monotonic() - outage:.0f}s", err=True)
                outage = None
            progress(fraction, f"{status}: {step}" if step and step != status else status)
            if status in FINISHED:
                return Finished(status, " ".join(error.split()) if error else None, rollout, result_patch_id)
            if deadline is not None and time.monotonic() >= deadline:
                typer.echo(f"Run #{run_id} is still {status} after {timeout:g}s ({step})", err=True)
                raise typer.Exit(EXIT_TIMEOUT)
            time.sleep(interval if deadline is None else max(0.0, min(interval, deadline - time.monotonic())))
