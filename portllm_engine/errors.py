"""Engine exceptions. Every message is one line meant for a person: what was wrong, what to do."""
from __future__ import annotations


class EngineError(Exception):
    """Base class; str(exc) is shown to users as is."""


class UnsafeCheckpointError(EngineError):
    """Only pickled weights (.bin/.pt/.pkl) were found; they are never unpickled."""


class ModelNotFoundError(EngineError):
    """A model directory or hub id could not be resolved locally."""


class SuiteError(EngineError):
    """A KPI suite is unreadable, empty, or has a bad line (`line` is 1-based, None for the file)."""

    def __init__(self, message: str, line: int | None = None, path: str | None = None) -> None:
        where = " ".join(part for part in (path, f"line {line}" if line is not None else None) if part)
        super().__init__(f"{where}: {message}" if where else message)
        self.message = message
        self.line = line


class PatchError(EngineError):
    """A patch folder is unreadable, not a LoRA, incompatible, or its digest does not match."""


class IncompatiblePatchError(PatchError):
    """Compatibility check failed; `report` is the CompatReport's dict (errors and warnings)."""

    def __init__(self, message: str, report: dict) -> None:
        super().__init__(message)
        self.report = report
