"""Checks on what an operator typed, done before anything is written."""
from __future__ import annotations

import re
from pathlib import Path

from portllm_core.errors import BadInput

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def check_name(what: str, value: str) -> str:
    if not NAME.match(value):
        raise BadInput(
            f"{what} {value!r} is not a valid name: use letters, digits, '.', '_' or '-' (at most 100), "
            "starting with a letter or digit"
        )
    return value


def check_fraction(option: str, value: float | None) -> float | None:
    if value is not None and not 0.0 <= value <= 1.0:
        raise BadInput(f"{option} must be between 0 and 1 (got {value})")
    return value


ON_RELEASE_CHOICES = ("auto", "ask", "off")


def check_on_release(value: str | None) -> str | None:
    if value is not None and value.lower() not in ON_RELEASE_CHOICES:
        raise BadInput(f"--on-release is one of {', '.join(ON_RELEASE_CHOICES)} (got {value!r}): auto queues the "
                       "runs, ask posts a card offering them, off does nothing")
    return None if value is None else value.lower()


def check_prompt_format(value: str | None) -> str | None:
    from portllm_engine.prompt import FORMATS

    if value is not None and value.lower() not in FORMATS:
        raise BadInput(f"--prompt-format is one of {', '.join(FORMATS)} (got {value!r}): chat puts questions to the "
                       "model as answers are served (its chat template, else a plain template), raw as written")
    return None if value is None else value.lower()


def parse_live_guard(value: str) -> tuple[int, float] | tuple[None, None]:
    """`MIN_N:MIN_RATE` (e.g. `20:0.7`, or `20:70%`) -> (min ratings, min satisfaction); `off` -> (None, None)."""
    if value.strip().lower() == "off":
        return None, None
    count, _, rate = value.partition(":")
    try:
        n = int(count)
        fraction = float(rate[:-1]) / 100 if rate.endswith("%") else float(rate)
    except ValueError:
        n, fraction = 0, -1.0
    if n < 1 or not 0.0 <= fraction <= 1.0:
        raise BadInput(f"--live-guard takes MIN_RATINGS:MIN_SATISFACTION, like 20:0.7 (once 20 people rated, "
                       f"propose a rollback below 70 % 👍), or `off` (got {value!r})")
    return n, fraction


def existing_file(what: str, path: Path) -> Path:
    path = path.expanduser()
    if not path.exists():
        raise BadInput(f"{what} {path} does not exist")
    if not path.is_file():
        raise BadInput(f"{what} {path} is a folder; pass a file")
    return path.resolve()


def existing_dir(what: str, path: Path) -> Path:
    path = path.expanduser()
    if not path.exists():
        raise BadInput(f"{what} {path} does not exist")
    if not path.is_dir():
        raise BadInput(f"{what} {path} is a file; pass a folder")
    return path.resolve()
