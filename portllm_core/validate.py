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
