"""The bases resident in one worker process: an LRU of engine PatchServers keyed by fingerprint.

gpu and serve tasks share it, so a process holds each base once (`PORTLLM_BASE_CACHE_SIZE` counts
bases). Patches attach to a resident base by name: a run evaluates the base alone and the
candidate on the same weights, answers switch between patches, and nothing reloads the base.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

log = logging.getLogger("portllm.cache")

T = TypeVar("T")


class LRU(Generic[T]):
    """Least recently used first out; each key is loaded once, even by concurrent misses."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[str, T] = OrderedDict()
        # Held while loading: a second miss on the same key waits for the first load and reuses it
        # rather than loading a second copy of a base next to the first.
        self._lock = threading.Lock()

    def get(self, key: str, load: Callable[[], T]) -> T:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            while len(self._items) >= self.size:  # make room before loading, not after
                evicted, _ = self._items.popitem(last=False)
                log.info("evicted base %s from the cache (size %d)", evicted[:12], self.size)
            value = self._items[key] = load()
            return value

    def drop(self, key: str) -> None:
        with self._lock:
            self._items.pop(key, None)

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)


def _check_fingerprint(base_dir: Path, fingerprint: str, label: str) -> None:
    """The files on disk must be the ones registered: a swapped folder would evaluate the wrong model."""
    from portllm_engine.errors import EngineError
    from portllm_engine.models import fingerprint as compute

    actual = compute(base_dir)
    if actual != fingerprint:
        raise EngineError(
            f"the files of base {label} in {base_dir} changed since it was registered "
            f"(fingerprint {actual[:12]} != {fingerprint[:12]}): register them as a new version"
        )


class ResidentBases:
    def __init__(self, size: int, device: str | None) -> None:
        self._lru: LRU = LRU(size)
        self.device = device

    def get(self, fingerprint: str, base_dir: Path, label: str):
        """The PatchServer of this base, loaded (and its fingerprint checked) on the first use only."""

        def load():
            from portllm_engine.transplant import PatchServer

            _check_fingerprint(base_dir, fingerprint, label)
            log.info("loading base %s from %s", label, base_dir)
            return PatchServer(base_dir, device=self.device)

        return self._lru.get(fingerprint, load)

    def drop(self, fingerprint: str) -> None:
        """Let go of a resident base, so a job that loads its own copy (training) holds only that one."""
        self._lru.drop(fingerprint)

    def __contains__(self, fingerprint: str) -> bool:
        return fingerprint in self._lru

    def __len__(self) -> int:
        return len(self._lru)
