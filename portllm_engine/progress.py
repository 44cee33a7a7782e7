"""Progress of a long job for people, fed by the engine's `progress(fraction, step)` callbacks.

On a terminal a live bar; anywhere else (a pipe, a log file, CI) plain lines, throttled: one when
the job starts, one each time it passes a multiple of 5 %, one every 10 s when something moved, and
the last state when it ends (a bar drawn where no one watches it prints nothing at all). Every
long command of `portllm` (the engine's, the operator's, the demo) reports through this one function.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskProgressColumn, TextColumn, TimeElapsedColumn

ProgressCallback = Callable[[float, str], None]

PLAIN_EVERY = 0.05  # a line each time the job advances this much
PLAIN_EVERY_S = 10.0  # or after this many seconds, when anything changed


@contextmanager
def progress_bar(description: str, console: Console | None = None) -> Iterator[ProgressCallback]:
    """Report on `console` (default: stderr): a bar when it is a terminal, plain lines otherwise."""
    console = console or Console(stderr=True, highlight=False)
    if not console.is_terminal:
        lines = PlainProgress(description, console)
        try:
            yield lines.update
        finally:  # where it stopped, also when it failed
            lines.finish()
        return
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(description, total=1.0)

        def update(fraction: float, step: str = "") -> None:
            label = f"{description}: {step}" if step else description
            bar.update(task, completed=_clamp(fraction), description=label)

        yield update
        bar.update(task, completed=1.0)


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """No per-file "Loading weights" bars from transformers inside our own progress reporting (piped,
    they would be the only lines, and no use)."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


class PlainProgress:
    """`description: 35% step (12 s)` lines, throttled (module docstring); `finish()` shows the last
    state when the throttle held it back."""

    def __init__(self, description: str, console: Console, clock: Callable[[], float] = time.monotonic) -> None:
        self.description, self.console, self.clock = description, console, clock
        self.started = clock()
        self.shown: tuple[float, str] | None = None  # the last line's fraction and step
        self.shown_at = self.started
        self.latest: tuple[float, str] | None = None

    def update(self, fraction: float, step: str = "") -> None:
        self.latest, now = (_clamp(fraction), step), self.clock()
        if self.shown is not None:
            moved = _notch(self.latest[0]) > _notch(self.shown[0])  # crossed a multiple of PLAIN_EVERY
            stale = now - self.shown_at >= PLAIN_EVERY_S and self.latest != self.shown
            if not (moved or stale):
                return
        self._show(now)

    def finish(self) -> None:
        if self.latest is not None and self.latest != self.shown:
            self._show(self.clock())

    def _show(self, now: float) -> None:
        fraction, step = self.shown = self.latest
        self.shown_at = now
        line = f"{self.description}: {fraction:.0%}" + (f" {step}" if step else "") + f" ({now - self.started:.0f} s)"
        # No markup (a step may hold brackets), no wrapping: one line each, as it happens.
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)


def _notch(fraction: float) -> int:
    return int(fraction / PLAIN_EVERY + 1e-9)


def _clamp(fraction: float) -> float:
    return max(0.0, min(1.0, float(fraction)))
