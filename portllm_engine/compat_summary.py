"""A compatibility report for people: the reason first, on one short line, then one bounded line per
kind of problem. A base of another shape fails every module the patch adapts (hundreds of lines on
a real model); the few lines here say why, and the report keeps every problem.

Pure Python on the report's error dicts (what `CompatReport.errors` holds and a run stores), so the
Slack app and the console can summarise a stored report without loading the engine.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

NAMED = 3  # modules named per line; the rest are counted

# Most fundamental first: the first kind present is the reason. Unknown codes come last.
ORDER = (
    "patch_unreadable", "unsafe_checkpoint", "unsupported_adapter", "base_unreadable", "digest_mismatch",
    "manifest_mismatch", "architecture", "tokenizer_mismatch", "tied_embeddings", "missing_module",
    "shape_mismatch",
)
# One line for every way the base's architecture differs from the patch's origin base.
ARCHITECTURE_CODES = frozenset({"model_type_mismatch", "architecture_mismatch", "vocab_mismatch"})


@dataclass(frozen=True)
class Summary:
    lines: tuple[str, ...]  # the reason first; empty when there is no problem
    elided: int  # problems the lines count but do not name (the full report lists them)

    @property
    def reason(self) -> str:
        return self.lines[0] if self.lines else ""


def summarise(errors: Iterable[Mapping[str, Any] | str], named: int = NAMED) -> Summary:
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for error in errors:
        error = error if isinstance(error, Mapping) else {"code": "", "message": str(error)}
        code = str(error.get("code", ""))
        groups.setdefault("architecture" if code in ARCHITECTURE_CODES else code, []).append(error)
    ranked = sorted(groups, key=lambda code: ORDER.index(code) if code in ORDER else len(ORDER))
    lines, elided = [], 0
    for code in ranked:
        line, hidden = _line(code, groups[code], named)
        lines.append(line)
        elided += hidden
    return Summary(tuple(lines), elided)


def _line(code: str, errors: list[Mapping[str, Any]], named: int) -> tuple[str, int]:
    if code == "architecture":
        changes = ", ".join(f"{_field(e)} {e.get('expected')} → {e.get('found')}" for e in errors)
        return f"the base's architecture is not the one the patch was trained on (patch → base): {changes}", 0
    if code == "missing_module":
        names, hidden = _names([str(e.get("module")) for e in errors], named)
        return f"the base lacks {_count(len(errors), 'module')} the patch adapts: {names}", hidden
    if code == "shape_mismatch":
        shapes = [f"{e.get('module')} {_shape(e.get('expected'))} → {_shape(e.get('found'))}" for e in errors]
        names, hidden = _names(shapes, named)
        return f"{_count(len(errors), 'module')} of another shape on the base (patch → base): {names}", hidden
    if code == "tied_embeddings" and len(errors) > 1:
        names, hidden = _names([str(e.get("module")) for e in errors], named)
        return f"the patch adapts embeddings this base ties to its output layer ({names}): retrain it without " \
               "embed_tokens and lm_head in target_modules", hidden
    first = " ".join(str(errors[0].get("message", "")).split())
    if len(errors) == 1:
        return first, 0
    return f"{first} (and {len(errors) - 1} more like it)", len(errors) - 1


def _field(error: Mapping[str, Any]) -> str:
    code = error.get("code")
    return {"model_type_mismatch": "model_type", "vocab_mismatch": "vocab_size"}.get(code) or str(error.get("field"))


def _names(names: list[str], named: int) -> tuple[str, int]:
    shown, hidden = names[:named], max(0, len(names) - named)
    return ", ".join(shown) + (f" and {hidden} more" if hidden else ""), hidden


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _shape(shape: Any) -> str:
    return "×".join(str(d) for d in shape) if isinstance(shape, (list, tuple)) else str(shape)
