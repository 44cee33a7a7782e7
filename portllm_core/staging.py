"""Artifacts added by one command, removed again if its registry transaction fails.

Content-addressed refs are shared: only an artifact this command brought into the store is
removed, never one that was there before (something else may reference it).
"""
from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from registry.artifacts import REF_PREFIX, file_sha256


class Staging:
    def __init__(self, store) -> None:
        self.store = store
        self.added: list[str] = []

    def put_dir(self, src: Path) -> str:
        return self._put(REF_PREFIX + self.store.digest_dir(src), lambda: self.store.put_dir(src))

    def put_file(self, src: Path) -> str:
        return self._put(REF_PREFIX + file_sha256(src), lambda: self.store.put_file(src))

    def _put(self, expected: str, put) -> str:
        existed = self.store.exists(expected)
        ref = put()
        if not existed:
            self.added.append(ref)
        return ref

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
