"""What every admin command shares: the registry session, the artifact store, and error handling.

Bad input ends in one line on stderr and exit 2, never a traceback. Heavy modules (the engine,
torch) are imported by the commands that need them, not here.
"""
from __future__ import annotations

import functools
import getpass
import os
import sys
from collections.abc import Callable
from typing import TypeVar

import typer

from portllm_core.errors import BadInput
from portllm_core.workspace import Workspace

EXIT_BAD_INPUT = 2
F = TypeVar("F", bound=Callable[..., object])

# Workspaces opened by the running command, closed when it ends (tests run many commands in one process).
_open: list[Workspace] = []


def workspace() -> Workspace:
    """The registry, artifact store and queue this invocation works on (PORTLLM_* settings)."""
    opened = Workspace()
    _open.append(opened)
    return opened


def actor() -> str:
    """Who is acting, for the audit log: PORTLLM_USER, else the login name."""
    return os.environ.get("PORTLLM_USER") or f"cli:{getpass.getuser()}"


def fail(message: str, code: int = EXIT_BAD_INPUT) -> typer.Exit:
    typer.echo(f"error: {_one_line(message)}", err=True)
    return typer.Exit(code)


def warn(message: str) -> None:
    typer.echo(f"warning: {_one_line(message)}", err=True)


def _one_line(message: str) -> str:
    return " ".join(str(message).split())


def _is_bad_input(exc: BaseException) -> bool:
    """Errors whose message is meant for people: ours, the registry's and the engine's."""
    if isinstance(exc, (BadInput, FileNotFoundError, NotADirectoryError, IsADirectoryError)):
        return True
    from registry.errors import RegistryError

    if isinstance(exc, RegistryError):
        return True
    # Only look at engine errors when the engine was loaded: importing it here would pull in torch.
    engine_errors = sys.modules.get("portllm_engine.errors")
    return engine_errors is not None and isinstance(exc, engine_errors.EngineError)


def _missing_schema(exc: BaseException) -> bool:
    from sqlalchemy.exc import OperationalError, ProgrammingError

    text = str(exc).lower()
    return isinstance(exc, (OperationalError, ProgrammingError)) and (
        "no such table" in text or ("relation" in text and "does not exist" in text)
    )


def admin_command(func: F) -> F:
    """Turn people-facing errors into one line on stderr and exit 2; others into one line, exit 1."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:
            if os.environ.get("PORTLLM_DEBUG"):
                raise
            if _is_bad_input(exc):
                raise fail(_message(exc)) from None
            from registry.db import outage_reason, unreachable

            if unreachable(exc):
                raise fail(f"the registry database is unreachable ({outage_reason(exc)}); is it running? "
                           "`PORTLLM_DATABASE_URL` says where it is", 1) from None
            if _missing_schema(exc):
                raise fail("the registry database has no tables yet; run `portllm db upgrade` first", 1) from None
            raise fail(f"{type(exc).__name__}: {exc} (set PORTLLM_DEBUG=1 for the traceback)", 1) from None
        finally:
            while _open:
                _open.pop().close()

    return wrapper  # type: ignore[return-value]


def _message(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError) and exc.filename:
        return f"no such file or folder: {exc.filename}"
    return str(exc) or type(exc).__name__
