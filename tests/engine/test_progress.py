"""Progress of long commands: plain, throttled lines when nobody watches a terminal (issue 32: `patch train`
piped showed nothing), a live bar on a terminal."""
from __future__ import annotations

import io

from rich.console import Console

from portllm_engine.progress import PlainProgress, progress_bar


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_piped_progress_prints_a_line_every_5_percent():
    out = io.StringIO()
    with progress_bar("Training support on v1", Console(file=out)) as progress:  # a StringIO is no terminal
        for step in range(1, 201):
            progress(step / 200, f"epoch 1/1 loss {1 / step:.3f}")
    lines = out.getvalue().splitlines()
    assert lines[0] == "Training support on v1: 0% epoch 1/1 loss 1.000 (0 s)"
    assert [line.split(": ")[1].split("%")[0] for line in lines] == ["0"] + [str(p) for p in range(5, 101, 5)]
    assert lines[-1] == "Training support on v1: 100% epoch 1/1 loss 0.005 (0 s)"


def test_slow_progress_says_something_every_10_seconds_and_where_it_ended():
    out, clock = io.StringIO(), Clock()
    lines = PlainProgress("Evaluating", Console(file=out), clock=clock)
    lines.update(0.0, "loading")
    for _ in range(3):  # the same state again and again: one line
        clock.now += 11
        lines.update(0.01, "scoring [item 1]")  # brackets are text, not markup
    clock.now += 1
    lines.update(0.02, "scoring [item 2]")  # held back: neither 5 % nor 10 s
    lines.finish()  # ...but the last state is shown at the end
    lines.finish()  # once
    assert out.getvalue().splitlines() == [
        "Evaluating: 0% loading (0 s)", "Evaluating: 1% scoring [item 1] (11 s)", "Evaluating: 2% scoring [item 2] (34 s)"]


def test_a_terminal_gets_a_bar_not_lines():
    out = io.StringIO()
    with progress_bar("Transplanting", Console(file=out, force_terminal=True, width=80)) as progress:
        progress(0.5, "model.layers.0")
    assert "Transplanting: 50%" not in out.getvalue()
