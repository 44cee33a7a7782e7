"""`portllm ledger list/forget`: the evaluation ledger, where every score is computed once."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from portllm_core import records
from portllm_core.text import short
from portllm_cli.admin.output import JSON_OPTION_HELP, print_json, stdout, table
from portllm_cli.admin.runtime import BadInput, actor, admin_command, workspace

app = typer.Typer(help="The evaluation ledger: one score per model, patch, suite and scoring settings.",
                  no_args_is_help=True)


@app.command("list")
@admin_command
def list_(
    limit: int = typer.Option(100, min=1, help="How many of the newest entries."),
    as_json: bool = typer.Option(False, "--json", help=JSON_OPTION_HELP),
) -> None:
    """The ledger's entries, newest first: what was scored, the result, and the run that computed it."""
    from registry import services

    with workspace().session() as session:
        rows = [records.score(row) for row in services.list_scores(session, limit)]
    if as_json:
        print_json(rows)
        return
    stdout().print(table(
        ["id", "model", "patch", "suite", "settings", "n", "accuracy", "run", "computed"],
        [[r["id"], short(r["model_fingerprint"]), short(r["patch_digest"]) or "base alone", short(r["suite_digest"]),
          f"{r['dtype']} {r['device_kind']} v{r['scorer_version']}", r["n"], f"{r['accuracy']:.1%}", f"#{r['run_id']}",
          r["created_at"][:19]] for r in rows],
        "The ledger is empty: runs record their scores here."))


@app.command("forget")
@admin_command
def forget(
    base: Optional[tuple[str, str]] = typer.Option(None, "--base", metavar="FAMILY VERSION",
                                                    help="Every score of this base, alone or patched."),
    suite: Optional[Path] = typer.Option(None, "--suite", help="Every score on this suite file's content."),
) -> None:
    """Forget scores so later runs compute them again: for a base or suite fixed in place (rare:
    digests change with content). The entries stay for the runs that used them."""
    if (base is None) == (suite is None):
        raise BadInput("Give exactly one of --base FAMILY VERSION or --suite FILE.")
    from registry import services

    digest = None
    if suite is not None:
        from portllm_engine.kpi import suite_digest

        digest = suite_digest(suite)
    with workspace().session() as session:
        fingerprint = None if base is None else services.get_base(session, *base).fingerprint
        count = services.forget_scores(session, actor=actor(), model_fingerprint=fingerprint, suite_digest=digest)
    what = f"base {base[0]}/{base[1]}" if base is not None else f"suite {suite}"
    stdout().print(f"Forgot {count} ledger score{'' if count == 1 else 's'} of {what}; later runs compute them again.")
