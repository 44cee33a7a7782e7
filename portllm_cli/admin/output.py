"""Output for people (rich tables on stdout, progress on stderr) and for scripts (`--json`)."""
from __future__ import annotations

import json
from contextlib import AbstractContextManager
from datetime import date, datetime
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from portllm_engine.progress import ProgressCallback, progress_bar as _progress_bar

JSON_OPTION_HELP = "Print JSON only (for scripts)."


def _default(value: object) -> object:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def print_json(data: object) -> None:
    """Plain `print` on stdout: no rich markup, wrapping or colour in what scripts parse."""
    typer.echo(json.dumps(data, indent=2, default=_default))


def stdout() -> Console:
    # soft_wrap: a one-line message stays one line when piped (rich would cut it at 80 columns).
    return Console(highlight=False, soft_wrap=True)


def print_view(view: RenderableType) -> None:
    """A card, table or tree on stdout: long lines wrap inside their frame (soft_wrap would crop them)."""
    stdout().print(view, soft_wrap=False)


def stderr() -> Console:
    return Console(stderr=True, highlight=False)


def table(columns: list[str], rows: list[list[object]], empty: str) -> Table | Text:
    """A table whose long cells fold instead of being cut, or `empty` when there are no rows."""
    if not rows:
        return Text(empty)
    out = Table(show_edge=False)
    for column in columns:
        out.add_column(column, overflow="fold")
    for row in rows:
        out.add_row(*("" if cell is None else str(cell) for cell in row))
    return out


def progress_bar(description: str) -> AbstractContextManager[ProgressCallback]:
    """Progress on stderr, driven by the engine's `progress(fraction, step)` callbacks: a bar on a
    terminal, plain throttled lines when piped (portllm_engine.progress, shared with every long command)."""
    return _progress_bar(description, stderr())


def human_size(n: int | None) -> str:
    if n is None:
        return ""
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"
