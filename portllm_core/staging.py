"""Artifacts added by one command, removed again if its registry transaction fails.

Content-addressed refs are shared: only an artifact this command brought into the store is
removed, never one that was there before (something else may reference it).
"""
from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class Staging:
    def __init__(self, store) -> None:
        self.store = store
        self.added: list[str] = []

    def put_dir(self, src: Path) -> str:
        return self._keep(self.store.add_dir(src))

    def put_file(self, src: Path) -> str:
        return self._keep(self.store.add_file(src))

    def _keep(self, stored) -> str:
        if stored.new:
            self.added.append(stored.ref)
        return stored.ref

    def discard(self) -> None:
        for ref in reversed(self.added):
            path = self.store.path(ref)
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        self.added.clear()


@contextmanager
def staged(store) -> Iterator[Staging]:
    """Yield a Staging; on any error inside the block, remove what it added, then re-raise."""
    staging = Staging(store)
    try:
        yield staging
    except BaseException:
        staging.discard()
        raise
