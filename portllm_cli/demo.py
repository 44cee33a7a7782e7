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
from rich.rule import Rule
from rich.table import Table

ASSISTANT = "support-assistant"
CHANNEL = "#support"
APPROVER = "alice"
ADMIN = "carol"
# Released during the story: registering it auto-ports the patch to #support.
RELEASED = "v3"
STOP_WORKER_S = 30


@dataclass(frozen=True)
class Model:
    """A world the story plays on: its builder, its family, and a gate that v2 + patch should pass
    and heavy drift (v3) should not."""

    name: str
    family: str
    builder: str  # "module:function" building (or reusing) the world: (root, progress) -> world
    min_accuracy: float
    max_regression: float

    def build(self, root: Path | None, progress):
        import importlib

        module, function = self.builder.split(":")
        return getattr(importlib.import_module(module), function)(root, progress=progress)


MODELS = {
    "tiny": Model("tiny", "demo", "portllm_engine.demo:build_demo_world", 0.6, 0.2),
    "smollm2": Model("smollm2", "smollm2", "portllm_engine.worlds.smollm2:build_world", 0.7, 0.1),
}


class StoryStopped(Exception):
    """A command of the story was refused: playing on would only pile up confusing errors."""


@dataclass(frozen=True)
class Cast:
    """Who the story is about: its own assistant and channel, so that every demo on a data dir
    starts from the same state (a second demo would otherwise carry the first one's re-tuned
    patch onto v3, and the gate would pass it)."""

    assistant: str
    channel: str
    model: Model


@dataclass
class Outcome:
    step: str
    expected: str
    ok: bool


def run_demo(*, broker_url: str | None = None, database_url: str | None = None, out: Path | None = None,
             world_root: Path | None = None, console: Console | None = None, model: str = "tiny") -> int:
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
    from registry.cli import upgrade_once

    ws = Workspace()
    # The story sets up the database it plays on, a --database-url one too (the default one is migrated on first use).
    upgrade_once(ws.settings.resolved_database_url(), lock=ws.settings.data_dir / "portllm.db.lock")
    try:
        # The worker starts first: its imports overlap the world build, which uses one core.
        with _worker(ws.settings.data_dir, console):
            world = _build_world(MODELS[model], world_root, console)
            cast = _cast(ws, MODELS[model], console)
            _register(ws, world, cast, console)
            try:
                outcomes = _play(ws, world, cast, console)
            except (StoryStopped, WaitTimedOut) as stop:
                console.print(f"[red]The demo stopped at `{stop}`. The worker log and `portllm status` say more.[/]")
                return 1
        chart = _write_chart(ws, world, cast, out or ws.settings.data_dir)
        return _summarise(outcomes, chart, console)
    finally:
        ws.close()


def _build_world(model: Model, root: Path | None, console: Console):
    from portllm_engine.progress import progress_bar

    console.print(Rule(f"1. The demo world ({model.name})"))
    with progress_bar(f"building the {model.name} demo world", console) as progress:  # plain lines when piped
        world = model.build(root, progress)
    console.print(f"Demo world ready in {world.root}: bases {', '.join(world.bases)}, a support patch trained on v1.")
    return world


def _cast(ws, model: Model, console: Console) -> Cast:
    """`support-assistant` in #support the first time; on a data dir an earlier demo played,
    `support-assistant-2` in #support-2, and so on (an assistant registered without a run yet is reused)."""
    from sqlalchemy import select

    from registry import models

    with ws.session_factory() as s:
        played = set(s.scalars(select(models.Assistant.name).join(models.Run).distinct()))
    n = 1
    while (ASSISTANT if n == 1 else f"{ASSISTANT}-{n}") in played:
        n += 1
    if n == 1:
        return Cast(ASSISTANT, CHANNEL, model)
    cast = Cast(f"{ASSISTANT}-{n}", f"{CHANNEL}-{n}", model)
    console.print(f"An earlier demo played here: this one tells the story with {cast.assistant} in {cast.channel}.")
    return cast


def _register(ws, world, cast: Cast, console: Console) -> None:
    """Register what is not registered yet, through the flows the operator's commands call."""
    from sqlalchemy import select

    from portllm_core.flows import catalog
    from registry import models

    console.print(Rule("2. Register bases, the assistant and its patch (as `portllm base/assistant/patch add` do)"))
    with ws.session_factory() as s:
        family = cast.model.family
        versions = set(s.scalars(select(models.BaseModel.version).where(models.BaseModel.family == family)))
        assistant = s.scalar(select(models.Assistant).where(models.Assistant.name == cast.assistant))
        has_patch = assistant is not None and bool(assistant.patches)
    actor = "console:demo"
    todo = False
    for version, path in world.bases.items():
        if version not in versions and version != RELEASED:
            todo = True
            # `other` is of another architecture: in the family on purpose, for the compatibility check to refuse.
            added = catalog.register_base(ws, family, version, str(path), actor=actor, force=version == "other")
            console.print(f"Base {added.label} registered from {path}.")
    if assistant is None:
        todo = True
        catalog.add_assistant(ws, cast.assistant, family=family, suite=world.suite,
                              min_accuracy=cast.model.min_accuracy, max_regression=cast.model.max_regression,
                              system_prompt=world.system_prompt, approvers=[APPROVER], admins=[ADMIN], actor=actor)
        console.print(f"Assistant {cast.assistant} added: gate ≥ {cast.model.min_accuracy:.0%}, approver {APPROVER}.")
    if not has_patch:
        todo = True
        added = catalog.add_patch(ws, cast.assistant, world.patch, base="v1", train_data=world.train_data, actor=actor)
        console.print(f"Patch #{added.patch_id} added, trained on {added.target.label}.")
    if not todo:
        console.print("Already registered from an earlier run: reusing it.")


@contextmanager
def _worker(data_dir: Path, console: Console) -> Iterator[None]:
    """A real Celery worker process on both queues, for the length of the story."""
    log = data_dir / "logs" / "demo-worker.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    # One torch thread: the demo's models are tiny, and on two cores the story's own processes
    # share them; more threads only wait on each other (a re-tune: 6.8 s on 1 thread, 57 s on 2).
    env = {**os.environ, "PORTLLM_TORCH_THREADS": os.environ.get("PORTLLM_TORCH_THREADS", "1")}
    with log.open("ab") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "portllm_cli.main", "worker", "--queues", "gpu,serve"],
                                stdout=sink, stderr=subprocess.STDOUT, env=env)
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


def _play(ws, world, cast: Cast, console: Console) -> list[Outcome]:
    from portllm_cli.console import ConsoleSession

    factory = ws.session_factory
    assistant, channel = cast.assistant, cast.channel
    chat = ConsoleSession(channel=channel, user=APPROVER, settings=ws.settings, session_factory=factory,
                          enqueue=ws.queue, out=console, poll_s=0.3, wait_s=900)

    def say(heading: str | None, command: str):
        if heading:
            console.print(Rule(heading))
        console.print(f"[bold cyan]{APPROVER} in {channel}>[/] {command}")
        reply = chat.run_line(command)
        if not reply.ok:
            raise StoryStopped(command)
        return reply

    def ask_and_rate(heading: str, question: str, rating: str) -> int:
        say(heading, f"ask {assistant} {question}")
        if chat.last_answer_id is None:
            raise StoryStopped(f"ask {assistant} {question} (no answer)")
        say(None, f"rate {chat.last_answer_id} {rating}")
        return chat.last_answer_id

    setup = say(f"3. Make v1 + patch live in {channel}", f"patch {assistant} onto v1")
    say(None, f"approve {setup.run_id}")
    v2 = say("4. The base moved to v2: transplant the patch", f"patch {assistant} onto v2")
    say(None, f"approve {v2.run_id}")
    first_answer = ask_and_rate("5. Ask the live assistant (now v2 + patch) and rate its answer",
                                world.questions[0], "up")
    say("6. Roll back the v2 rollout", f"rollback {assistant}")
    other = say("7. An unrelated model: the compatibility check refuses it", f"patch {assistant} onto other")
    v3_run = _release(ws, world, cast, chat, console, say)
    retune = _fallback(factory, v3_run, console, say)
    say(None, f"approve {retune.run_id}")
    last_answer = ask_and_rate("10. Ask the re-tuned assistant on v3 and rate its answer", world.questions[1], "up")
    say("11. The lineage", f"lineage {assistant}")
    return _check(factory, cast, setup.run_id, v2.run_id, v3_run, other.run_id, retune.run_id,
                  (first_answer, last_answer))


def _release(ws, world, cast: Cast, chat, console: Console, say) -> int:
    """v3 is released: registering it queues the transplant for the channel by itself (policy `auto`)."""
    from portllm_cli.terminal import release as release_table
    from portllm_core import views
    from portllm_core.flows import catalog

    console.print(Rule(f"8. {RELEASED} is released (heavy continued pretraining): registering it ports the patch"))
    family = cast.model.family
    console.print(f"[bold cyan]operator>[/] portllm base add {family} {RELEASED} {world.bases[RELEASED]}")
    from registry import services

    with ws.session_factory() as s:
        registered = RELEASED in {b.version for b in services.list_bases(s, family)}
    if registered:  # an earlier demo on this data dir released it: ask for the run by hand instead
        console.print(f"{family} {RELEASED} was released by an earlier demo here; asking for the run by hand.")
        return say(None, f"patch {cast.assistant} onto {RELEASED}").run_id
    added = catalog.register_base(ws, family, RELEASED, str(world.bases[RELEASED]), actor="console:demo")
    mine = [run_id for run_id, assistant, channel in added.release.queued if (assistant, channel) == (cast.assistant, cast.channel)]
    if not mine:
        raise StoryStopped(f"portllm base add {family} {RELEASED} (no run queued for {cast.channel})")
    console.print(f"Base {added.label} registered; release: run #{mine[0]} queued for {cast.assistant} in {cast.channel}, "
                  "requested by the system, as if someone had asked.")
    chat.follow_run(mine[0])  # the card the channel gets
    with ws.session_factory() as s:
        console.print(release_table(views.release_view(views.find_release(s, family, RELEASED))))
    return mine[0]


def _fallback(factory, v3_run: int, console: Console, say):
    """The gate does not pass v3 + patch, by construction rather than by luck: the demo world is
    built deterministically, and the story rolls back to v1 + patch (92–100 % on its own base)
    before v3 arrives, so the bar is that score − 20 pts (≥ 72 %), while v3 + patch scores 57 %
    with an interval topping out near 66 %. Whether the gate says `fail` or `inconclusive`, the
    card offers the re-tune and the story takes it; a `pass` stops the story, never skips the step."""
    from portllm_core import views

    with factory() as s:
        card = views.run_card(s, v3_run)
    console.print(Rule(f"9. The gate said {card.verdict}: take the fallback, a re-tune on {RELEASED}"))
    why = {"fail": "clearly below the bar", "inconclusive": "too close to the bar to pass"}.get(card.verdict)
    if why is None or not card.can_retune:
        raise StoryStopped(f"gate {card.verdict} on run #{v3_run} (the story needs the re-tune fallback)")
    accuracy = next((row.accuracy for row in card.kpi if row.subject == "candidate"), None)
    console.print(f"v3 + patch scored {accuracy:.0%}: {why} ({card.gate}). The card offers the re-tune.")
    return say(None, f"retune {v3_run}")


def _check(factory, cast: Cast, setup_run: int, v2_run: int, v3_run: int, other_run: int, retune_run: int,
           answers: tuple[int, int]) -> list[Outcome]:
    """What the story must have left in the registry."""
    from portllm_core import views
    from registry import models, services

    with factory() as s:
        run = lambda run_id: s.get(models.Run, run_id)  # noqa: E731
        setup, v2, v3, other, retuned = (run(i) for i in (setup_run, v2_run, v3_run, other_run, retune_run))
        live = services.live_rollout(s, cast.assistant, cast.channel)
        lineage = views.lineage_view(s, services.get_assistant(s, cast.assistant)).to_json()
        lineage_runs = {r["id"] for p in lineage["patches"] for r in p["runs"]}
        rated = [services.get_answer(s, answer).rollout.run_id for answer in answers]
        return [
            Outcome("v2 transplant", "succeeded, the candidate and the base alone scored",
                    v2.status == "succeeded" and _scored(v2)),
            Outcome("approve v2", "went live, then rolled back",
                    v2.rollout is not None and v2.rollout.state == "rolled_back"),
            Outcome("rated answer", "a 👍 counted for the v2 rollout", rated[0] == v2_run),
            Outcome("patch onto other", "failed with compatibility errors",
                    other.status == "failed" and bool((other.compat_report or {}).get("errors"))),
            Outcome(f"release {RELEASED}", f"a run for {cast.channel}, evaluated and gated, not passed",
                    v3.status == "succeeded" and v3.rollout is not None and v3.rollout.verdict != "pass"),
            Outcome(f"retune on {RELEASED}", "a new patch, child of the v1 patch, evaluated and approved",
                    retuned.status == "succeeded" and retuned.result_patch is not None
                    and retuned.result_patch.parent_patch_id == v3.patch_id and _scored(retuned)
                    and live is not None and live.run_id == retune_run),
            Outcome("rated answer", f"a 👍 counted for the re-tuned {RELEASED} rollout", rated[1] == retune_run),
            Outcome("lineage", "lists every run of the story",
                    {setup_run, v2_run, v3_run, other_run, retune_run} <= lineage_runs),
        ]


def _scored(run) -> bool:
    """The candidate and the base alone were scored (and live too, when something was live)."""
    return {"candidate", "target_base"} <= {e.subject for e in run.evaluations}


def _write_chart(ws, world, cast: Cast, out_dir: Path) -> Path:
    """The paper's bars per base version: the base alone, the transplanted v1 patch, a patch trained
    fresh on that base (measured when the demo world was built), and the re-tuned patch."""
    from sqlalchemy import select

    from registry import models

    factory = ws.session_factory
    bars: dict[str, dict[str, float]] = {}  # version -> series -> accuracy, newest run wins
    with factory() as s:
        runs = s.scalars(select(models.Run).join(models.Assistant)
                         .where(models.Assistant.name == cast.assistant).order_by(models.Run.id))
        for run in runs:
            accuracy = {e.subject: e.accuracy for e in run.evaluations}
            if "candidate" not in accuracy:
                continue
            series = bars.setdefault(run.target_base.version, {})
            series["base alone"] = accuracy.get("target_base", 0.0)
            series["re-tuned patch" if run.kind == "retune" else "transplanted patch"] = accuracy["candidate"]
    for version, accuracy in world.fresh_accuracy.items():
        bars.setdefault(version, {})["patch trained fresh"] = accuracy
    fig = _chart(bars, cast.assistant, cast.model.min_accuracy)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "demo-kpi.png"
    fig.savefig(path, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _chart(bars: dict[str, dict[str, float]], assistant: str, min_accuracy: float):
    """The bars (version -> series -> accuracy) as a matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    versions = sorted(bars)
    names = ("base alone", "transplanted patch", "patch trained fresh", "re-tuned patch")
    width = 0.2
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, name in enumerate(names):
        xs = [x + (i - 1.5) * width for x, v in enumerate(versions) if name in bars[v]]
        ys = [100 * bars[v][name] for v in versions if name in bars[v]]
        if xs:
            ax.bar(xs, ys, width, label=name)
    ax.axhline(100 * min_accuracy, color="grey", linestyle="--", linewidth=1, label="gate minimum")
    ax.set_xticks(range(len(versions)), versions)
    ax.set_ylabel("KPI accuracy (%)")
    ax.set_ylim(0, 100)
    # Two lines: on one, the title is wider than the chart and both ends are cut off.
    ax.set_title(f"{assistant} on each base:\ntransplanted v1 patch vs trained fresh vs re-tuned")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3, fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def _summarise(outcomes: list[Outcome], chart: Path, console: Console) -> int:
    table = Table(title="What the story left in the registry")
    for column in ("step", "expected", "ok"):
        table.add_column(column)
    for o in outcomes:
        table.add_row(o.step, o.expected, "[green]yes[/]" if o.ok else "[red]NO[/]")
    console.print(table)
    console.print(f"KPI chart: {chart}")
    return 0 if all(o.ok for o in outcomes) else 1
