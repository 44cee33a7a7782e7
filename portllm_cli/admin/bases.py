"""`portllm base add/list`: register base models by fingerprint and architecture signature."""
from __future__ import annotations

from typing import Optional

import typer

from portllm_core import records
from portllm_core.text import short
from portllm_cli.admin.output import JSON_OPTION_HELP, print_json, stderr, stdout, table
from portllm_cli.admin.runtime import BadInput, workspace, actor, admin_command, warn

app = typer.Typer(help="Base models (one version of a family, identified by its weights).", no_args_is_help=True)


@app.command("add")
@admin_command
def add(
    family: str = typer.Argument(..., help="Model family, e.g. `llama-support`."),
    version: str = typer.Argument(..., help="Version label, e.g. `v2`."),
    ref: str = typer.Argument(..., help="A local model folder, a hub id (safetensors only), or a .gguf file "
                                       "(or a folder holding one), dequantized into the data dir."),
    description: str = typer.Option("", help="Free text shown in listings."),
    force: bool = typer.Option(False, "--force", help="Register it even though its architecture is not the "
                                                      "family's (it then releases nothing)."),
) -> None:
    """Register a base: fingerprint its weights and record its architecture signature, then
    release it: every assistant live on the family gets a transplant run per channel (its policy).
    A base whose architecture is not the family's is refused, unless `--force`."""
    from portllm_cli.admin.releases import print_registered
    from portllm_core.flows import catalog

    with stderr().status(f"Fingerprinting {ref}…"):
        added = catalog.register_base(workspace(), family, version, ref, actor=actor(), description=description,
                                      force=force)
    for message in added.warnings:
        warn(message)
    sig = added.signature
    stdout().print(
        f"Base {added.label} registered: {sig.get('model_type')}, {sig.get('num_layers')} layers, "
        f"hidden {sig.get('hidden_size')}, vocab {sig.get('vocab_size')}, fingerprint {short(added.fingerprint)}"
    )
    print_registered(added)


@app.command("list")
@admin_command
def list_(
    family: Optional[str] = typer.Argument(None, help="Only this family."),
    as_json: bool = typer.Option(False, "--json", help=JSON_OPTION_HELP),
) -> None:
    """List registered bases."""
    from registry import services

    env = workspace()
    with env.session() as session:
        bases = services.list_bases(session, family=family)
        if family and not bases:
            known = sorted({b.family for b in services.list_bases(session, family=None)})
            raise BadInput(f"unknown family {family!r}; known families: {', '.join(known) or 'none yet'}")
        rows = [records.base(b) for b in bases]
    if as_json:
        print_json(rows)
        return
    stdout().print(
        table(
            ["family", "version", "model", "layers", "hidden", "vocab", "fingerprint", "source"],
            [
                [r["family"], r["version"], r["signature"].get("model_type"), r["signature"].get("num_layers"),
                 r["signature"].get("hidden_size"), r["signature"].get("vocab_size"), short(r["fingerprint"]),
                 r["source_ref"]]
                for r in rows
            ],
            "No base registered yet.",
        )
    )
