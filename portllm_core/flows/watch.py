"""Watch a model store: every new version folder of a family gets registered, which releases it.

A version folder is a direct subfolder holding a `config.json` (the folder name is the version
label). Put a finished model in place with one rename, as model stores and `huggingface-cli
download` into a staging folder do, so the watcher never fingerprints half-copied weights.

Only what lies in the store is released: a version folder, or any file or folder in it, that
resolves outside the store (a symlink to elsewhere) is refused, since whoever may drop a link into
the store could otherwise release any model the watcher can read.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from portllm_core.errors import BadInput
from portllm_core.flows.catalog import BaseRegistered, register_base
from portllm_core.validate import existing_dir
from portllm_core.workspace import Workspace
from registry import services


@dataclass(frozen=True)
class Seen:
    """What one look at the store did for one version folder."""

    version: str
    path: Path
    registered: BaseRegistered | None = None  # new: registered, and its release started
    error: str | None = None  # could not be registered; retried on the next look


def version_folders(store: Path) -> list[Path]:
    return sorted(p for p in store.iterdir() if p.is_dir() and (p / "config.json").is_file())


def leaves_store(folder: Path, store: Path) -> str | None:
    """Why `folder` is refused: the first path in it (itself included, links followed) that does not
    resolve inside `store`; None when everything stays inside."""
    seen: set[Path] = set()
    todo = [folder]
    while todo:
        path = todo.pop()
        try:
            real = path.resolve()
        except RuntimeError:  # Python's word for a symlink loop
            return f"{path} is a symlink loop"
        if not real.is_relative_to(store):
            return f"{path} leads to {real}, outside the model store {store}"
        if real.is_dir() and real not in seen:  # a link back to a folder already walked ends here
            seen.add(real)
            todo.extend(path.iterdir())
    return None


def scan(ws: Workspace, family: str, store: Path, *, actor: str) -> list[Seen]:
    """Register the store's versions of `family` that are not registered yet; each starts its release."""
    from portllm_engine.errors import EngineError

    store = existing_dir("model store", store)
    with ws.session() as s:
        known = {b.version.lower() for b in services.list_bases(s, family=family)}
    seen = []
    for folder in version_folders(store):
        if folder.name.lower() in known:
            continue
        outside = leaves_store(folder, store)
        if outside is not None:
            seen.append(Seen(folder.name, folder, error=f"refused: {outside}; put the model's files in the store"))
            continue
        try:
            # The resolved folder: what a worker loads later is what was checked here.
            seen.append(Seen(folder.name, folder, registered=register_base(
                ws, family, folder.name, str(folder.resolve()), actor=actor)))
        except (BadInput, services.RegistryError, EngineError) as exc:
            seen.append(Seen(folder.name, folder, error=str(exc)))
    return seen
