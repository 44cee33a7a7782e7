"""`portllm`: the one command line for operators, the console channel, servers and the demo.

Heavy packages (torch, the engine, Celery workers) are imported inside the commands that need
them, so `portllm --help` and the Slack process start fast.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(
    name="portllm",
    help="Carry LoRA patches onto updated base models, gated by KPIs and approved by people.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="The registry database (Alembic migrations).", no_args_is_help=True)
demo_app = typer.Typer(help="The whole story on the embedded defaults.", invoke_without_command=True)
app.add_typer(db_app, name="db")
app.add_typer(demo_app, name="demo")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Migrate the registry database to the newest schema."""
    from portllm_core.settings import Settings
    from registry.cli import upgrade

    upgrade(Settings().resolved_database_url())


@db_app.command("current")
def db_current() -> None:
    """Print the registry database's schema revision."""
    from portllm_core.settings import Settings
    from registry.cli import current

    typer.echo(current(Settings().resolved_database_url()))


@app.command()
def console(
    channel: str = typer.Option("#support", help="Channel the commands are typed in."),
    user: str = typer.Option("alice", help="Who is typing (approver checks use it)."),
    wait: float = typer.Option(600.0, "--wait", min=0.0,
                               help="Piped input: give up on a run or an answer after this many seconds (exit 124)."),
) -> None:
    """The console channel: chat commands in the terminal (reads stdin when piped)."""
    from portllm_cli.console import run_console

    raise typer.Exit(run_console(channel=channel, user=user, wait_s=wait))


@app.command()
def worker(
    queues: str = typer.Option("gpu,serve", help="Comma-separated queues to consume."),
    concurrency: int = typer.Option(1, min=1, help="Worker processes."),
) -> None:
    """Start a Celery worker (transplants and evaluations on `gpu`, answers on `serve`)."""
    from workers.main import start_worker

    start_worker([q.strip() for q in queues.split(",") if q.strip()], concurrency=concurrency)


@app.command()
def slack(
    port: int = typer.Option(3000, help="HTTP port for /slack/events."),
    socket: bool = typer.Option(False, "--socket", help="Use Socket Mode (SLACK_APP_TOKEN) instead of HTTP."),
) -> None:
    """Serve the Slack app: signed HTTP requests on /slack/events, or Socket Mode."""
    from bot.server import serve_http, serve_socket
    from portllm_core.settings import SettingsError

    try:
        serve_socket() if socket else serve_http(port)
    except SettingsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@demo_app.callback()
def demo(
    ctx: typer.Context,
    redis: Optional[str] = typer.Option(None, "--redis", envvar="PORTLLM_BROKER_URL", help="Run the queue on Redis (redis://…)."),
    database_url: Optional[str] = typer.Option(None, "--database-url", envvar="PORTLLM_DATABASE_URL", help="Run the registry on this database (postgresql+psycopg://…)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where the KPI chart goes (default: the data dir)."),
    world: Optional[Path] = typer.Option(None, "--world", help="Build or reuse the demo world here (default: <data dir>/demo)."),
    model: str = typer.Option("tiny", "--model", help="The world the story plays on: tiny (a 1.3 M-parameter Llama "
                              "built here in minutes) or smollm2 (SmolLM2-135M-Instruct; needs the `real` extra)."),
) -> None:
    """Build (or reuse) the demo world and play the whole story in the console channel."""
    if ctx.invoked_subcommand is not None:
        return
    from portllm_cli.demo import MODELS, run_demo

    if model not in MODELS:
        typer.echo(f"error: --model is one of {', '.join(MODELS)} (got {model!r})", err=True)
        raise typer.Exit(2)
    raise typer.Exit(run_demo(broker_url=redis, database_url=database_url, out=out, world_root=world, model=model))


def _mount() -> None:
    # Both import torch only inside their commands, so mounting them here stays cheap.
    from portllm_cli.admin import register
    from portllm_engine.cli import demo_build, engine_app, suite_app

    register(app)
    app.add_typer(engine_app, name="engine", help="The ML engine on folders: compat, drift, transplant, eval, generate.")
    app.add_typer(suite_app, name="suite")
    demo_app.command("build")(demo_build)


_mount()


# Libraries whose deprecation notices mean nothing to an operator (they are for their callers,
# us); our own warnings, and every warning in the tests, still show.
QUIET_LIBRARIES = ("transformers", "peft", "accelerate", "torch", "kombu", "celery", "sqlalchemy")


def silence_library_warnings() -> None:
    for library in QUIET_LIBRARIES:
        for category in (FutureWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", category=category, module=rf"{library}(\.|$)")


def main() -> None:
    silence_library_warnings()
    app()


if __name__ == "__main__":
    main()
