"""`portllm patch add/train/list/export`: LoRA patches, checked against their base before storing."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

import typer

from portllm_core import records
from portllm_core.text import short
from portllm_cli.admin.output import JSON_OPTION_HELP, human_size, print_json, progress_bar, stderr, stdout, table
from portllm_cli.admin.runtime import BadInput, workspace, actor, admin_command, warn

app = typer.Typer(help="LoRA patches: add one trained elsewhere, train one, list, export.", no_args_is_help=True)


@app.command("add")
@admin_command
def add(
    assistant: str = typer.Argument(..., help="The assistant the patch belongs to."),
    directory: Path = typer.Argument(..., metavar="DIR", help="A PortLLM patch or any PEFT LoRA folder."),
    base: str = typer.Option(..., "--base", help="Version of the base it was trained on (the assistant's family)."),
    train_data: Optional[Path] = typer.Option(
        None, "--train-data", help="Its training data (JSONL prompt/completion), kept for the re-tune fallback."
    ),
) -> None:
    """Add a patch trained elsewhere: compatibility with its base is checked before it is stored."""
    from portllm_core.flows import catalog

    with stderr().status(f"Checking {directory.name} against {assistant}'s {base} and storing it…"):
        added = catalog.add_patch(workspace(), assistant, directory, base=base, train_data=train_data, actor=actor())
    for message in added.warnings:
        warn(message)
    stdout().print(_added_line(added))


@app.command("train")
@admin_command
def train(
    assistant: str = typer.Argument(..., help="The assistant the patch is for."),
    base: str = typer.Option(..., "--base", help="Version of the assistant's family to train on."),
    data: Path = typer.Option(..., "--data", help="Training data, JSONL in TRL's formats: 'messages', or 'prompt' and 'completion'."),
    rank: int = typer.Option(8, "--rank", min=1, help="LoRA rank r."),
    alpha: float = typer.Option(16.0, "--alpha", min=0.0, help="LoRA alpha (scale alpha/r)."),
    epochs: int = typer.Option(3, "--epochs", min=1, help="Passes over the data."),
    lr: float = typer.Option(2e-4, "--lr", min=0.0, help="Learning rate."),
    seed: int = typer.Option(0, "--seed", help="Random seed (training is deterministic per seed)."),
    local: bool = typer.Option(False, "--local", help="Train in this process instead of on the gpu queue."),
    no_wait: bool = typer.Option(False, "--no-wait", help="Return once the run is queued (see `portllm run wait`)."),
) -> None:
    """Train a LoRA patch on a registered base: on the gpu queue, or here with `--local`."""
    from portllm_core.flows import catalog, runs

    ws = workspace()
    target = catalog.patch_target(ws, assistant, base)
    data_path = catalog.check_training_data(data)
    hyper = {"rank": rank, "alpha": alpha, "epochs": epochs, "lr": lr, "seed": seed}
    if not local:
        run_id = runs.request_training(ws, target, data_path, hyper, actor=actor())
        if no_wait:
            stdout().print(f"Run #{run_id} queued: training {assistant} on {target.label}")
            return
        _await_training(ws, target, run_id)
        return
    from portllm_engine import patches
    from portllm_engine.progress import quiet_transformers

    with tempfile.TemporaryDirectory(prefix="portllm-train-") as tmp:
        out = Path(tmp) / "patch"
        with progress_bar(f"Training {assistant} on {target.label}") as progress, quiet_transformers():
            manifest = patches.train_patch(target.base_dir, data_path, out, progress=progress, **hyper,
                                           prompt_format=target.prompt_format, system_prompt=target.system_prompt)
        added = catalog.store_patch(ws, target, out, manifest, data_path, actor=actor())
    stdout().print(_added_line(added))


@app.command("list")
@admin_command
def list_(
    assistant: Optional[str] = typer.Argument(None, help="Only this assistant's patches."),
    as_json: bool = typer.Option(False, "--json", help=JSON_OPTION_HELP),
) -> None:
    """List patches, oldest first."""
    from sqlalchemy import select

    from registry import services
    from registry.models import Patch

    with workspace().session() as session:
        query = select(Patch).order_by(Patch.created_at, Patch.id)
        if assistant is not None:
            query = query.where(Patch.assistant_id == services.get_assistant(session, assistant).id)
        rows = [records.patch(p) for p in session.scalars(query)]
    if as_json:
        print_json(rows)
        return
    stdout().print(
        table(
            ["id", "assistant", "origin", "rank", "alpha", "modules", "size", "training data", "digest"],
            [
                [r["id"], r["assistant"], f"{r['origin_base']['family']} {r['origin_base']['version']}", r["rank"],
                 f"{r['alpha']:g}", len(r["target_modules"]), human_size(r["size_bytes"]),
                 short(r["provenance"].get("dataset_sha256")) if r["train_data_ref"] else "", short(r["artifact_digest"])]
                for r in rows
            ],
            "No patch registered yet.",
        )
    )


@app.command("export")
@admin_command
def export(
    patch_id: int = typer.Argument(..., metavar="ID", help="Patch id (see `portllm patch list`)."),
    directory: Path = typer.Argument(..., metavar="DIR", help="Where to write it (new or empty folder)."),
) -> None:
    """Write a patch as a PEFT-loadable folder (adapter_config.json, adapter_model.safetensors, portllm.json)."""
    from registry import services

    out = directory.expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BadInput(f"{out} already exists and is not an empty folder; pass a new folder")
    env = workspace()
    with env.session() as session:
        patch = services.get_patch(session, patch_id)
        source = env.store.path(patch.artifact_ref)
    from portllm_engine import patches

    patches.export_patch(source, out)
    stdout().print(f"Patch #{patch_id} exported to {out} (load it with peft.PeftModel.from_pretrained)")


def _added_line(added) -> str:
    return (
        f"Patch #{added.patch_id} added to {added.target.assistant}: trained on {added.target.label}, "
        f"r {added.rank}, alpha {added.alpha:g}, {added.n_modules} modules"
    )


def _await_training(env, target, run_id: int) -> None:
    from portllm_cli.admin.runs import FINISHED, follow

    followed = follow(env, run_id, f"Run #{run_id}: training {target.assistant} on {target.label}")
    if followed.status != "succeeded":
        typer.echo(f"Run #{run_id} {followed.status}" + (f": {followed.error}" if followed.error else ""), err=True)
        raise typer.Exit(FINISHED[followed.status])
    stdout().print(f"Patch #{followed.result_patch_id} trained on {target.label} (run #{run_id})")
