"""`portllm demo`: the whole story in the console channel, on the embedded defaults.

Builds (or reuses) the demo world, registers it through the same flows the operator's
commands call, starts a real worker process, then plays the chat commands a team would type in
#support and checks in the registry that each step ended as it should.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.rule import Rule
from rich.table import Table

ASSISTANT = "support-assistant"
FAMILY = "demo"
CHANNEL = "#support"
APPROVER = "alice"
ADMIN = "carol"
# The demo's gate: v2 + patch should pass it, heavy drift (v3) should not.
MIN_ACCURACY = 0.6
MAX_REGRESSION = 0.2
STOP_WORKER_S = 30


class StoryStopped(Exception):
    """A command of the story was refused: playing on would only pile up confusing errors."""


@dataclass
class Outcome:
    step: str
    expected: str
    ok: bool


def run_demo(*, broker_url: str | None = None, database_url: str | None = None, out: Path | None = None,
             world_root: Path | None = None, console: Console | None = None) -> int:
    """Play the story; 0 when every step ended as expected, 1 otherwise."""
    console = console or Console()
    # Environment, not arguments: the worker subprocess must see the same registry and queue.
    if broker_url:
        os.environ["PORTLLM_BROKER_URL"] = broker_url
    if database_url:
        os.environ["PORTLLM_DATABASE_URL"] = database_url
    os.environ["PORTLLM_NOTIFIER"] = "console"

    from portllm_cli.console import WaitTimedOut
    from portllm_core.workspace import Workspace
    from registry.cli import upgrade

    ws = Workspace()
    world = _build_world(world_root, console)
    upgrade(ws.settings.resolved_database_url())
    try:
        with _worker(ws.settings.data_dir, console):
            _register(ws, world, console)
            try:
                outcomes = _play(ws, world, console)
            except (StoryStopped, WaitTimedOut) as stop:
                console.print(f"[red]The demo stopped at `{stop}`. The worker log and `portllm status` say more.[/]")
                return 1
        chart = _write_chart(ws, out or ws.settings.data_dir)
        return _summarise(outcomes, chart, console)
    finally:
        ws.close()


def _build_world(root: Path | None, console: Console):
    from portllm_engine.demo import build_demo_world

    console.print(Rule("1. The demo world"))
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("building the demo world", total=1.0)
        world = build_demo_world(root, progress=lambda done, step: bar.update(task, completed=done, description=step))
    console.print(f"Demo world ready in {world.root}: bases {', '.join(world.bases)}, a support patch trained on v1.")
    return world


def _register(ws, world, console: Console) -> None:
    """Register what is not registered yet, through the flows the operator's commands call."""
    from sqlalchemy import select

    from portllm_core.flows import catalog
    from registry import models

    console.print(Rule("2. Register bases, the assistant and its patch (as `portllm base/assistant/patch add` do)"))
    with ws.session_factory() as s:
        versions = set(s.scalars(select(models.BaseModel.version).where(models.BaseModel.family == FAMILY)))
        assistant = s.scalar(select(models.Assistant).where(models.Assistant.name == ASSISTANT))
        has_patch = assistant is not None and bool(assistant.patches)
    actor = "console:demo"
    todo = False
    for version, path in world.bases.items():
        if version not in versions:
            todo = True
            added = catalog.register_base(ws, FAMILY, version, str(path), actor=actor)
            console.print(f"Base {added.label} registered from {path}.")
    if assistant is None:
        todo = True
        catalog.add_assistant(ws, ASSISTANT, family=FAMILY, suite=world.suite, min_accuracy=MIN_ACCURACY,
                              max_regression=MAX_REGRESSION, approvers=[APPROVER], admins=[ADMIN], actor=actor)
        console.print(f"Assistant {ASSISTANT} added: gate ≥ {MIN_ACCURACY:.0%}, approver {APPROVER}.")
    if not has_patch:
        todo = True
        added = catalog.add_patch(ws, ASSISTANT, world.patch, base="v1", train_data=world.train_data, actor=actor)
        console.print(f"Patch #{added.patch_id} added, trained on {added.target.label}.")
    if not todo:
        console.print("Already registered from an earlier run: reusing it.")


@contextmanager
def _worker(data_dir: Path, console: Console) -> Iterator[None]:
    """A real Celery worker process on both queues, for the length of the story."""
    log = data_dir / "logs" / "demo-worker.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "portllm_cli.main", "worker", "--queues", "gpu,serve"],
                                stdout=sink, stderr=subprocess.STDOUT)
    console.print(f"Worker started (pid {proc.pid}, log {log}).")
    try:
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_WORKER_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        console.print("Worker stopped.")


def _play(ws, world, console: Console) -> list[Outcome]:
    from portllm_cli.console import ConsoleSession
    from portllm_core import views

    factory = ws.session_factory
    chat = ConsoleSession(channel=CHANNEL, user=APPROVER, settings=ws.settings, session_factory=factory,
                          enqueue=ws.queue, out=console, poll_s=0.3, wait_s=900)

    def say(heading: str | None, command: str):
        if heading:
            console.print(Rule(heading))
        console.print(f"[bold cyan]{APPROVER} in {CHANNEL}>[/] {command}")
        reply = chat.run_line(command)
        if not reply.ok:
            raise StoryStopped(command)
        return reply

    setup = say("3. Make v1 + patch live in #support", f"patch {ASSISTANT} onto v1")
    say(None, f"approve {setup.run_id}")
    v2 = say("4. The base moved to v2: transplant the patch", f"patch {ASSISTANT} onto v2")
    say(None, f"approve {v2.run_id}")
    say("5. Ask the live assistant (now v2 + patch)", f"ask {ASSISTANT} {world.questions[0]}")
    v3 = say("6. v3 had heavy continued pretraining: what does the gate say?", f"patch {ASSISTANT} onto v3")
    with factory() as s:
        can_retune = views.run_card(s, v3.run_id).can_retune
    retune = say(None, f"retune {v3.run_id}") if can_retune else None  # the gate failed: take the fallback
    other = say("7. An unrelated model: the compatibility check refuses it", f"patch {ASSISTANT} onto other")
    say("8. Roll back the v2 rollout", f"rollback {ASSISTANT}")
    say("9. The lineage", f"lineage {ASSISTANT}")
    return _check(factory, setup.run_id, v2.run_id, v3.run_id, other.run_id,
                  retune.run_id if retune is not None else None)


def _check(factory, setup_run: int, v2_run: int, v3_run: int, other_run: int,
           retune_run: int | None) -> list[Outcome]:
    """What the story must have left in the registry."""
    from portllm_core import views
    from registry import models, services

    with factory() as s:
        run = lambda run_id: s.get(models.Run, run_id)  # noqa: E731
        setup, v2, v3, other = run(setup_run), run(v2_run), run(v3_run), run(other_run)
        live = services.live_rollout(s, ASSISTANT, CHANNEL)
        lineage = views.lineage_view(s, services.get_assistant(s, ASSISTANT)).to_json()
        lineage_runs = {r["id"] for p in lineage["patches"] for r in p["runs"]}
        outcomes = [
            Outcome("v2 transplant", "succeeded with two evaluations",
                    v2.status == "succeeded" and len(v2.evaluations) == 2),
            Outcome("approve v2", "went live, then rolled back",
                    v2.rollout is not None and v2.rollout.state == "rolled_back"),
            Outcome("v3 transplant", "evaluated and gated",
                    v3.status == "succeeded" and v3.rollout is not None),
            Outcome("patch onto other", "failed with compatibility errors",
                    other.status == "failed" and bool((other.compat_report or {}).get("errors"))),
            Outcome("rollback", "v1 rollout live again",
                    live is not None and live.run_id == setup.id),
            Outcome("lineage", "lists every run of the story",
                    {setup_run, v2_run, v3_run, other_run} <= lineage_runs),
        ]
        if retune_run is not None:
            retuned = run(retune_run)
            outcomes.append(Outcome("retune on v3", "a new patch, child of the v1 patch, evaluated",
                                    retuned.status == "succeeded" and retuned.result_patch is not None
                                    and retuned.result_patch.parent_patch_id == v3.patch_id
                                    and len(retuned.evaluations) == 2))
        return outcomes


def _write_chart(ws, out_dir: Path) -> Path:
    """Per base version: the base alone, the transplanted v1 patch, and a re-tuned patch if any."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sqlalchemy import select

    from registry import models

    factory = ws.session_factory
    bars: dict[str, dict[str, float]] = {}  # version -> series -> accuracy, newest run wins
    with factory() as s:
        runs = s.scalars(select(models.Run).join(models.Assistant)
                         .where(models.Assistant.name == ASSISTANT).order_by(models.Run.id))
        for run in runs:
            accuracy = {e.subject: e.accuracy for e in run.evaluations}
            if "candidate" not in accuracy:
                continue
            series = bars.setdefault(run.target_base.version, {})
            series["base alone"] = accuracy.get("target_base", 0.0)
            series["re-tuned patch" if run.kind == "retune" else "transplanted patch"] = accuracy["candidate"]
    versions = sorted(bars)
    names = ("base alone", "transplanted patch", "re-tuned patch")
    width = 0.27
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, name in enumerate(names):
        xs = [x + (i - 1) * width for x, v in enumerate(versions) if name in bars[v]]
        ys = [100 * bars[v][name] for v in versions if name in bars[v]]
        if xs:
            ax.bar(xs, ys, width, label=name)
    ax.axhline(100 * MIN_ACCURACY, color="grey", linestyle="--", linewidth=1, label="gate minimum")
    ax.set_xticks(range(len(versions)), versions)
    ax.set_ylabel("KPI accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{ASSISTANT}: its v1 patch carried onto each base")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=4, fontsize=8, frameon=False)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "demo-kpi.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _summarise(outcomes: list[Outcome], chart: Path, console: Console) -> int:
    table = Table(title="What the story left in the registry")
    for column in ("step", "expected", "ok"):
        table.add_column(column)
    for o in outcomes:
        table.add_row(o.step, o.expected, "[green]yes[/]" if o.ok else "[red]NO[/]")
    console.print(table)
    console.print(f"KPI chart: {chart}")
    return 0 if all(o.ok for o in outcomes) else 1
