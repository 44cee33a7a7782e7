"""`portllm release show/start` and `portllm base watch`: base releases reaching every assistant."""
from __future__ import annotations

import time
from pathlib import Path

import typer

from portllm_cli.admin.output import JSON_OPTION_HELP, print_json, print_view, stderr, stdout
from portllm_cli.admin.runtime import actor, admin_command, warn, workspace

EXIT_TIMEOUT = 124  # as `run wait`: what coreutils' `timeout` returns
FOLLOW_INTERVAL_S = 1.0

app = typer.Typer(help="Releases: a new base version and the runs it queued in every live channel.",
                  no_args_is_help=True)


def print_registered(added) -> None:
    """What `base add` and `base watch` say about the release of a base they registered."""
    if added.alias_of is not None:
        stdout().print(f"{added.label} has the same weights as {added.alias_of}: registered as another label for "
                       f"them; no release, nothing queued.")
        return
    if added.forced is not None:
        family, version = added.label.split(" ", 1)
        warn(f"{added.label} is not the architecture of its family ({added.forced}); registered because of --force")
        stdout().print(f"No release: its runs could only fail the compatibility check; nothing queued "
                       f"(`portllm release start {family} {version}` releases it if you mean to).")
        return
    print_started(added.release)


def print_started(started) -> None:
    """What `base add`, `base watch` and `release start` say about the release they started."""
    if not started.created:
        stdout().print(f"Release {started.label} was started before; nothing new queued "
                       f"(`portllm release show {started.label}` shows its verdicts).")
        return
    for run_id, assistant, channel in started.queued:
        stdout().print(f"  run #{run_id} queued: {assistant} in {channel}")
    for assistant, channel in started.offers:
        stdout().print(f"  offered to {assistant} in {channel} (its policy is `ask`)")
    if not (started.queued or started.offers):
        stdout().print(f"Release {started.label}: no assistant is live on this family (or all are `off`).")
    else:
        stdout().print(f"Release {started.label}: {len(started.queued)} run(s) queued, {len(started.offers)} offered; "
                       f"`portllm release show {started.label}` follows the verdicts.")


@app.command("show")
@admin_command
def show(
    family: str = typer.Argument(..., help="The base family."),
    version: str = typer.Argument(..., help="The released version."),
    as_json: bool = typer.Option(False, "--json", help=JSON_OPTION_HELP),
    wait: float = typer.Option(0.0, "--wait", min=0.0,
                               help="Follow the verdicts until every run has finished, at most this many seconds "
                                    "(exit 124 after); an unreachable registry meanwhile is said and waited out."),
) -> None:
    """The release's runs per assistant and channel, with their verdicts, and open offers."""
    from portllm_core.views import find_release, release_view
    from registry.db import outage_reason, unreachable
    from registry.models import ACTIVE_RUN_STATUSES

    ws = workspace()
    deadline, outage, shown = time.monotonic() + wait, None, None
    while True:
        try:
            with ws.session() as session:
                view = release_view(find_release(session, family, version))
        except Exception as exc:  # the registry down: say so, keep following within the wait
            if not unreachable(exc) or time.monotonic() >= deadline:
                raise
            if outage is None:
                outage = time.monotonic()
                warn(f"release {family} {version}: the registry is unreachable ({outage_reason(exc)}); "
                     "still following it")
            time.sleep(min(FOLLOW_INTERVAL_S, max(0.0, deadline - time.monotonic())))
            continue
        if outage is not None:
            stderr().print(f"release {family} {version}: the registry is back after "
                           f"{time.monotonic() - outage:.0f}s", markup=False)
            outage = None
        finished = not any(row.status in ACTIVE_RUN_STATUSES for row in view.rows)
        if not as_json and view.rows != shown:  # people see each change; scripts get the last state
            from portllm_cli import terminal

            print_view(terminal.release(view))
            shown = view.rows
        if finished or time.monotonic() >= deadline:
            break
        time.sleep(min(FOLLOW_INTERVAL_S, max(0.0, deadline - time.monotonic())))
    if as_json:
        print_json(view.to_json())
    if not finished and wait:
        warn(f"release {family} {version}: runs still in flight after {wait:g}s")
        raise typer.Exit(EXIT_TIMEOUT)


@app.command("start")
@admin_command
def start(
    family: str = typer.Argument(..., help="The base family."),
    version: str = typer.Argument(..., help="A registered version (registering a base starts its release)."),
) -> None:
    """Start the release of a base registered before releases existed; a started one queues nothing new."""
    from portllm_core.flows.releases import start_release

    ws = workspace()
    print_started(start_release(ws.session_factory, ws.queue, family, version, actor=actor()))


@admin_command
def watch(
    family: str = typer.Argument(..., help="The family whose versions the store holds."),
    store: Path = typer.Argument(..., help="A folder with one subfolder per version (folder name = version)."),
    once: bool = typer.Option(False, "--once", help="Look once and exit (for cron)."),
) -> None:
    """Register every new version folder of a model store, which releases it to the live assistants."""
    from portllm_core.flows.watch import scan

    ws = workspace()
    while True:
        for seen in scan(ws, family, store, actor=actor()):
            if seen.error:
                warn(f"{seen.path}: {seen.error} (retried on the next look)")
                continue
            stdout().print(f"Base {seen.registered.label} registered from {seen.path}.")
            print_registered(seen.registered)
        if once:
            return
        time.sleep(ws.settings.watch_interval_s)
