"""`portllm base add/list`: register base models by fingerprint and architecture signature."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from portllm_cli.admin import records
from portllm_cli.admin.output import JSON_OPTION_HELP, print_json, short, stderr, stdout, table
from portllm_cli.admin.runtime import BadInput, Env, actor, admin_command, warn
from portllm_cli.admin.validate import check_name

app = typer.Typer(help="Base models (one version of a family, identified by its weights).", no_args_is_help=True)


@app.command("add")
@admin_command
def add(
    family: str = typer.Argument(..., help="Model family, e.g. `llama-support`."),
    version: str = typer.Argument(..., help="Version label, e.g. `v2`."),
    ref: str = typer.Argument(..., help="A local model folder or a hub id (safetensors only)."),
    description: str = typer.Option("", help="Free text shown in listings."),
) -> None:
    """Register a base: fingerprint its weights and record its architecture signature."""
    from registry import services

    check_name("family", family)
    check_name("version", version)
    env = Env.from_settings()
    with env.session() as session:
        existing = _find_base(session, family, version)
        if existing is not None:
            raise BadInput(
                f"base {family} {version} is already registered (from {existing.source_ref}); "
                "pick a new version label"
            )

    model_dir, source_ref = _resolve(ref)
    with stderr().status(f"Fingerprinting {model_dir.name}…"):
        signature, fingerprint, tokenizer_fp = _describe(model_dir)

    with env.session() as session:
        for twin in services.list_bases(session, family=None):
            if twin.fingerprint == fingerprint:
                warn(
                    f"same weights as {twin.family} {twin.version} (fingerprint {short(fingerprint)}); "
                    f"registering {family} {version} anyway"
                )
        base = services.register_base(
            session,
            family=family,
            version=version,
            source_ref=source_ref,
            fingerprint=fingerprint,
            signature=signature,
            tokenizer_fingerprint=tokenizer_fp,
            actor=actor(),
            **({"description": description} if description else {}),
        )
        session.flush()
        label = f"{base.family} {base.version}"
    stdout().print(
        f"Base {label} registered: {signature.get('model_type')}, {signature.get('num_layers')} layers, "
        f"hidden {signature.get('hidden_size')}, vocab {signature.get('vocab_size')}, "
        f"fingerprint {short(fingerprint)}"
    )


@app.command("list")
@admin_command
def list_(
    family: Optional[str] = typer.Argument(None, help="Only this family."),
    as_json: bool = typer.Option(False, "--json", help=JSON_OPTION_HELP),
) -> None:
    """List registered bases."""
    from registry import services

    env = Env.from_settings()
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


def _find_base(session, family: str, version: str):
    from registry import services
    from registry.errors import UnknownBase

    try:
        return services.get_base(session, family, version)
    except UnknownBase:
        return None


def _resolve(ref: str) -> tuple[Path, str]:
    """The folder to read, and the ref workers will load: an absolute path, or the hub id as given."""
    from portllm_engine.models import resolve_model_dir

    model_dir = resolve_model_dir(ref)
    return model_dir, str(model_dir) if Path(ref).expanduser().exists() else ref


def _describe(model_dir: Path) -> tuple[dict, str, str]:
    from portllm_engine.models import architecture_signature, fingerprint, read_config, tokenizer_fingerprint

    config = read_config(model_dir)
    if config.get("auto_map"):
        raise BadInput(
            f"{model_dir} needs remote code (config.json has auto_map); PortLLM never runs trust_remote_code"
        )
    signature = architecture_signature(model_dir)  # refuses pickled checkpoints before any hashing
    return signature, fingerprint(model_dir), tokenizer_fingerprint(model_dir)
