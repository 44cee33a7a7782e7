"""`portllm engine …` and `portllm demo build`: a thin CLI over the engine.

Bad input ends with one line on stderr and a non-zero exit: 1 for errors, 3 when a patch is
incompatible with a base. Machine-readable output (--json) goes to stdout, progress to stderr.
"""
from __future__ import annotations

import functools
import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.console import Console

from portllm_engine.errors import EngineError, IncompatiblePatchError
from portllm_engine.progress import progress_bar  # a bar on a terminal, plain lines when piped

EXIT_ERROR = 1
EXIT_INCOMPATIBLE = 3

engine_app = typer.Typer(help="Patch compatibility, drift, transplant, KPI evaluation, generation.", no_args_is_help=True)
err = Console(stderr=True)


def _fail(message: str, code: int = EXIT_ERROR) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def friendly(func: Callable) -> Callable:
    """Turn engine errors into one line and an exit code instead of a traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except IncompatiblePatchError as exc:
            _fail(str(exc), EXIT_INCOMPATIBLE)
        except EngineError as exc:
            _fail(str(exc))
        except OSError as exc:
            _fail(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))

    return wrapper


def _quiet_transformers() -> None:
    """The CLI draws its own progress; transformers' per-file bars would interleave with it."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _print_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


@contextmanager
def _loaded(model: str, patch: Optional[Path], device: Optional[str]):
    """The model as a run scores and `ask` serves it: the base at its own precision, the patch
    attached (not merged), so the CLI's numbers and answers are the card's."""
    from portllm_engine.transplant import PatchServer

    _quiet_transformers()
    with err.status("loading model" + (" and attaching the patch" if patch else "")):
        server = PatchServer(model, device=device)
        if patch is not None:
            server.attach("patch", patch)
    with server.use("patch" if patch is not None else None) as loaded:
        yield loaded, server.tokenizer


@engine_app.command()
@friendly
def compat(
    patch: Path = typer.Option(..., "--patch", help="PortLLM patch folder or plain PEFT LoRA folder"),
    base: str = typer.Option(..., "--base", help="base model folder or hub id"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
) -> None:
    """Check whether a patch fits a base (exit 0 when compatible, 3 when not)."""
    from portllm_engine.compat import check
    from portllm_engine.models import resolve_model_dir

    if not patch.is_dir():
        _fail(f"patch folder {patch} not found")
    resolve_model_dir(base)  # an unknown base is a usage error, not an incompatibility
    report = check(patch, base)
    if as_json:
        _print_json(report.to_dict())
    else:
        summary = report.summary()  # the reason first; --json has every problem
        typer.echo(f"NOT compatible: {summary.reason}" if summary.lines else "compatible")
        for line in summary.lines[1:]:
            typer.echo(f"  {line}")
        if summary.elided:
            typer.echo(f"  (--json lists all {len(report.errors)} problems)")
        for issue in report.warnings:
            typer.echo(f"  warning [{issue['code']}] {issue['message']}")
    if not report.compatible:
        raise typer.Exit(EXIT_INCOMPATIBLE)


@engine_app.command()
@friendly
def drift(
    from_: str = typer.Option(..., "--from", help="the base the patch was trained on"),
    to: str = typer.Option(..., "--to", help="the new base"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
) -> None:
    """Relative Frobenius drift ‖W₂−W₁‖/‖W₁‖, per weight matrix and overall."""
    from portllm_engine.drift import measure_drift

    with err.status("measuring drift"):
        report = measure_drift(from_, to)
    if as_json:
        _print_json(report.to_dict())
        return
    typer.echo(f"overall drift {report.overall:.4f}")
    for name, value in sorted(report.modules.items(), key=lambda kv: -kv[1])[:10]:
        typer.echo(f"  {value:.4f}  {name}")


@engine_app.command("transplant")
@friendly
def transplant_cmd(
    patch: Path = typer.Option(..., "--patch", help="PortLLM patch folder or plain PEFT LoRA folder"),
    base: str = typer.Option(..., "--base", help="base model folder or hub id"),
    out: Path = typer.Option(..., "--out", help="a new folder for the merged model (sharded safetensors)"),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda for the merges (default: cuda when available)"),
) -> None:
    """Merge a patch into a base on disk, streamed into files laid out as the base's (from_pretrained loads them)."""
    from portllm_engine.transplant import transplant_to_dir

    with progress_bar("transplanting") as report:
        written = transplant_to_dir(patch, base, out, progress=report, device=device)
    typer.echo(str(written))


@engine_app.command("eval")
@friendly
def eval_cmd(
    model: str = typer.Option(..., "--model", help="model folder or hub id"),
    suite: Path = typer.Option(..., "--suite", help="KPI suite (JSONL)"),
    patch: Optional[Path] = typer.Option(None, "--patch", help="attach this patch, as a run scores it"),
    system_prompt: str = typer.Option("", "--system-prompt", help="the assistant's system prompt"),
    prompt_format: str = typer.Option("chat", "--prompt-format",
                                      help="chat: as answers are served (the tokenizer's chat template, else the "
                                           "plain template); raw: the suite's text as written"),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="items per forward pass"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available)"),
) -> None:
    """Score a model (optionally with a patch) on a KPI suite."""
    from portllm_engine.kpi import evaluate, load_suite

    from portllm_engine.prompt import PromptFormat

    fmt = PromptFormat(prompt_format, system_prompt)  # before loading anything: bad input fails fast
    items = load_suite(suite)
    with _loaded(model, patch, device) as (loaded, tokenizer), progress_bar("evaluating") as report:
        result = evaluate(loaded, tokenizer, items, fmt=fmt, batch_size=batch_size, progress=report)
    if as_json:  # the summary and every item's result (what the per-item comparisons need)
        _print_json({"n": result.n, "accuracy": result.accuracy, "ci95": list(result.ci95), "metrics": result.metrics,
                     "prompt_format": fmt.describe(tokenizer), "items": result.items})
        return
    low, high = result.ci95
    typer.echo(f"accuracy {result.accuracy:.3f} (95% CI {low:.3f}–{high:.3f}, n={result.n}, {result.duration_s:.1f}s, "
               f"{fmt.describe(tokenizer)})")
    for name, value in result.metrics.items():
        if name != "groups":
            typer.echo(f"  {name} {value:.3f}")
    for name, counts in result.metrics.get("groups", {}).items():
        typer.echo(f"  group {name}: {counts['correct'] / counts['n']:.3f} ({counts['correct']}/{counts['n']})")


@engine_app.command()
@friendly
def generate(
    model: str = typer.Option(..., "--model", help="model folder or hub id"),
    prompt: str = typer.Option(..., "--prompt", help="the question"),
    patch: Optional[Path] = typer.Option(None, "--patch", help="attach this patch, as `ask` serves it"),
    system_prompt: str = typer.Option("", "--system-prompt", "--system", help="the assistant's system prompt"),
    prompt_format: str = typer.Option("chat", "--prompt-format", help="chat (as served) or raw (the prompt as written)"),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", min=1, max=1024),
    stop: Optional[list[str]] = typer.Option(None, "--stop", help="stop sequence (repeatable)"),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available)"),
) -> None:
    """Stream an answer to stdout."""
    from portllm_engine.generate import stream_generate
    from portllm_engine.prompt import PromptFormat, user_turn

    fmt = PromptFormat(prompt_format, system_prompt)
    with _loaded(model, patch, device) as (loaded, tokenizer):
        for piece in stream_generate(loaded, tokenizer, user_turn(prompt), fmt=fmt, max_new_tokens=max_new_tokens,
                                     stop=stop):
            sys.stdout.write(piece)
            sys.stdout.flush()
    sys.stdout.write("\n")


@friendly
def demo_build(
    out: Optional[Path] = typer.Option(None, "--out", help="where to build (default: $PORTLLM_DATA_DIR/demo)"),
) -> None:
    """Build the demo world (or reuse a cached one) and print where it is."""
    from portllm_engine.demo import build_demo_world

    with progress_bar("building the demo world") as report:
        world = build_demo_world(out, progress=report)
    typer.echo(str(world.root))


suite_app = typer.Typer(help="KPI suites from standard benchmark tasks.", no_args_is_help=True)


@suite_app.callback()
def _suite_group() -> None:
    """A group even with one command, so `import` stays a subcommand wherever it is mounted."""


@suite_app.command("import")
@friendly
def suite_import(
    task: str = typer.Argument(..., help="boolq, sst2, rte, wnli, winogrande, mrpc or gsm8k"),
    file: Path = typer.Argument(..., help="one split of the task's dataset, exported as JSON Lines or Parquet"),
    out: Optional[Path] = typer.Option(None, "--out", help="where to write the suite (default: TASK-SPLIT.jsonl here)"),
) -> None:
    """Turn a local copy of a standard task into a KPI suite with lm-evaluation-harness's prompts."""
    from portllm_engine.suites import import_suite, write_suite

    items = import_suite(task, file)
    written = write_suite(items, out or Path(f"{task.lower()}-{file.stem}.jsonl"))
    typer.echo(f"{written} ({len(items)} items)")
