"""`portllm patch add/train/list/export`: LoRA patches, checked against their base before storing."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import typer

from portllm_cli.admin import records
from portllm_cli.admin.output import JSON_OPTION_HELP, human_size, print_json, progress_bar, short, stderr, stdout, table
from portllm_cli.admin.runtime import BadInput, Env, actor, admin_command, warn
from portllm_core.staging import staged
from portllm_cli.admin.validate import existing_dir, existing_file

# Runs requested from the admin CLI are not tied to a chat channel.
CLI_CHANNEL = "cli"

app = typer.Typer(help="LoRA patches: add one trained elsewhere, train one, list, export.", no_args_is_help=True)


@dataclass(frozen=True)
class Target:
    """The assistant and origin base a patch is added for, read once and checked up front."""

    assistant: str
    family: str
    version: str
    fingerprint: str
    base_dir: Path


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
    from portllm_engine import compat, patches

    env = Env.from_settings()
    target = _target(env, assistant, base)
    src = existing_dir("patch folder", directory)
    data = _training_data(train_data) if train_data is not None else None

    manifest = patches.read_manifest(src)
    with stderr().status(f"Checking {src.name} against {target.family} {target.version}…"):
        report = compat.check(src, target.base_dir)
    _refuse_incompatible(src, target, report)
    if manifest is not None and manifest.origin_fingerprint not in (None, target.fingerprint):
        raise BadInput(
            f"{src} was trained on a base with fingerprint {short(manifest.origin_fingerprint)}, "
            f"but {target.family} {target.version} is {short(target.fingerprint)}: "
            f"pass the --base it was trained on{_matching_version(env, target.family, manifest.origin_fingerprint)}"
        )
    with tempfile.TemporaryDirectory(prefix="portllm-patch-") as tmp:
        staged_dir = Path(tmp) / "patch"
        with stderr().status("Preparing the patch…"):
            if manifest is None:
                manifest = patches.import_peft(src, staged_dir, target.base_dir)
            else:
                patches.export_patch(src, staged_dir)  # verifies the weights' digest while copying
        patch_id = _store(env, target, staged_dir, manifest, data)
    stdout().print(_added_line(patch_id, target, manifest))


@app.command("train")
@admin_command
def train(
    assistant: str = typer.Argument(..., help="The assistant the patch is for."),
    base: str = typer.Option(..., "--base", help="Version of the assistant's family to train on."),
    data: Path = typer.Option(..., "--data", help="Training data, JSONL with 'prompt' and 'completion'."),
    rank: int = typer.Option(8, "--rank", min=1, help="LoRA rank r."),
    alpha: float = typer.Option(16.0, "--alpha", min=0.0, help="LoRA alpha (scale alpha/r)."),
    epochs: int = typer.Option(3, "--epochs", min=1, help="Passes over the data."),
    lr: float = typer.Option(2e-4, "--lr", min=0.0, help="Learning rate."),
    seed: int = typer.Option(0, "--seed", help="Random seed (training is deterministic per seed)."),
    local: bool = typer.Option(False, "--local", help="Train in this process instead of on the gpu queue."),
    no_wait: bool = typer.Option(False, "--no-wait", help="Return once the run is queued (see `portllm run wait`)."),
) -> None:
    """Train a LoRA patch on a registered base: on the gpu queue, or here with `--local`."""
    env = Env.from_settings()
    target = _target(env, assistant, base)
    data_path = _training_data(data)
    hyper = {"rank": rank, "alpha": alpha, "epochs": epochs, "lr": lr, "seed": seed}
    if not local:
        run_id = _enqueue_training(env, target, data_path, hyper)
        if no_wait:
            stdout().print(f"Run #{run_id} queued: training {assistant} on {target.family} {target.version}")
            return
        _await_training(env, target, run_id)
        return
    from portllm_engine import patches

    with tempfile.TemporaryDirectory(prefix="portllm-train-") as tmp:
        out = Path(tmp) / "patch"
        with progress_bar(f"Training {assistant} on {target.family} {target.version}") as progress:
            manifest = patches.train_patch(target.base_dir, data_path, out, progress=progress, **hyper)
        patch_id = _store(env, target, out, manifest, data_path)
    stdout().print(_added_line(patch_id, target, manifest))


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

    with Env.from_settings().session() as session:
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
    env = Env.from_settings()
    with env.session() as session:
        patch = services.get_patch(session, patch_id)
        source = env.store.path(patch.artifact_ref)
    from portllm_engine import patches

    patches.export_patch(source, out)
    stdout().print(f"Patch #{patch_id} exported to {out} (load it with peft.PeftModel.from_pretrained)")


def _target(env: Env, assistant: str, version: str) -> Target:
    from portllm_engine.models import resolve_model_dir
    from registry import services

    with env.session() as session:
        owner = services.get_assistant(session, assistant)
        base = services.get_base(session, owner.family, version)
        target = (owner.name, owner.family, base.version, base.fingerprint, base.source_ref)
    name, family, version, fingerprint, source_ref = target
    return Target(name, family, version, fingerprint, resolve_model_dir(source_ref))


def _training_data(path: Path) -> Path:
    from portllm_engine.patches import read_pairs

    path = existing_file("training data", path)
    read_pairs(path)  # every line checked now; errors name the line
    return path


def _refuse_incompatible(src: Path, target: Target, report) -> None:
    if report.compatible:
        for issue in report.warnings:
            if issue["code"] != "no_manifest":
                warn(issue["message"])
        return
    first, rest = report.errors[0], len(report.errors) - 1
    more = f" (and {rest} more problem{'s' if rest != 1 else ''}; `portllm engine compat` lists them)" if rest else ""
    raise BadInput(f"patch {src} does not fit {target.family} {target.version}: {first['message']}{more}")


def _matching_version(env: Env, family: str, fingerprint: str) -> str:
    from registry import services

    with env.session() as session:
        twins = [b.version for b in services.list_bases(session, family=family) if b.fingerprint == fingerprint]
    return f" (that is {family} {twins[0]})" if twins else " (register that base first with `portllm base add`)"


def _store(env: Env, target: Target, patch_dir: Path, manifest, train_data: Path | None) -> int:
    """Store the patch (and its training data) content-addressed, then register it in one transaction."""
    from registry import services

    provenance = dict(manifest.provenance)
    with staged(env.store) as staging:
        data_ref = None
        if train_data is not None:
            data_ref = staging.put_file(train_data)
            provenance["dataset_sha256"] = data_ref.removeprefix("sha256:")
        ref = staging.put_dir(patch_dir)
        with env.session() as session:
            patch = services.register_patch(
                session,
                assistant=target.assistant,
                origin_base=target.version,
                artifact_ref=ref,
                artifact_digest=ref.removeprefix("sha256:"),
                rank=manifest.rank,
                alpha=manifest.alpha,
                use_rslora=manifest.use_rslora,
                target_modules=list(manifest.target_modules),
                size_bytes=sum(f.stat().st_size for f in patch_dir.rglob("*") if f.is_file()),
                provenance=provenance,
                train_data_ref=data_ref,
                actor=actor(),
            )
            return patch.id


def _added_line(patch_id: int, target: Target, manifest) -> str:
    return (
        f"Patch #{patch_id} added to {target.assistant}: trained on {target.family} {target.version}, "
        f"r {manifest.rank}, alpha {manifest.alpha:g}, {len(manifest.target_modules)} modules"
    )


def _enqueue_training(env: Env, target: Target, data: Path, hyper: dict) -> int:
    """Store the training data, request a train run and put it on the gpu queue; its run id."""
    import uuid

    from portllm_core.tasks import TRAIN_PATCH, TaskQueue
    from portllm_core.settings import BotSettings
    from registry import services

    with staged(env.store) as staging:
        data_ref = staging.put_file(data)
        with env.session() as session:
            run, _ = services.request_run(
                session, assistant=target.assistant, version=target.version, kind="train",
                idempotency_key=f"cli-train-{uuid.uuid4()}", requested_by=actor(), channel=CLI_CHANNEL,
                spec={"train_data_ref": data_ref, **hyper},
            )
            run_id = run.id
    # After the commit, so the worker finds the run; a run left queued is re-sent by the sweeper.
    TaskQueue(BotSettings().resolved_broker_url()).enqueue(TRAIN_PATCH, run_id)
    return run_id


def _await_training(env: Env, target: Target, run_id: int) -> None:
    from portllm_cli.admin.runs import FINISHED, follow

    followed = follow(env, run_id, f"Run #{run_id}: training {target.assistant} on {target.family} {target.version}")
    if followed.status != "succeeded":
        typer.echo(f"Run #{run_id} {followed.status}" + (f": {followed.error}" if followed.error else ""), err=True)
        raise typer.Exit(FINISHED[followed.status])
    stdout().print(f"Patch #{followed.result_patch_id} trained on {target.family} {target.version} (run #{run_id})")
