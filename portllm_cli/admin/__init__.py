"""The operator's CLI: register bases, assistants and patches; read runs, lineage and status.

`register(app)` mounts it on the root `portllm` app (bot/cli.py). Nothing here imports torch or
the engine at import time; the commands that need them import them when they run.
"""
from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    from portllm_cli.admin import assistants, bases, ledger, patches, releases, runs, views

    bases.app.command("watch")(releases.watch)
    app.add_typer(bases.app, name="base")
    app.add_typer(releases.app, name="release")
    app.add_typer(assistants.app, name="assistant")
    app.add_typer(patches.app, name="patch")
    app.add_typer(runs.app, name="run")
    app.add_typer(ledger.app, name="ledger")
    app.command("lineage")(views.lineage)
    app.command("status")(views.status)
