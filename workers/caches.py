"""Per-process LRU caches of loaded bases, keyed by the registered fingerprint.

`BaseCache` keeps pristine (model, tokenizer) pairs for the gpu tasks: a candidate is a copy
with the patch merged in, so the cached base stays usable for the base-alone evaluation and
the next run. `ServerCache` keeps one engine PatchServer per base for answers: patches attach by
name and switching between them never reloads the base.
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
    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[str, T] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, load: Callable[[], T]) -> T:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = load()  # outside the lock: loading a base takes long
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                evicted, _ = self._items.popitem(last=False)
                log.info("evicted base %s from the cache (size %d)", evicted[:12], self.size)
        return value

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


class BaseCache:
    def __init__(self, size: int, device: str | None) -> None:
        self._lru: LRU[tuple] = LRU(size)
        self.device = device

    def get(self, fingerprint: str, base_dir: Path, label: str) -> tuple:
        def load() -> tuple:
            from portllm_engine.models import load_base

            _check_fingerprint(base_dir, fingerprint, label)
            log.info("loading base %s from %s", label, base_dir)
            return load_base(base_dir, device=self.device)

        return self._lru.get(fingerprint, load)

    def __contains__(self, fingerprint: str) -> bool:
        return fingerprint in self._lru


class ServerCache:
    def __init__(self, size: int, device: str | None) -> None:
        self._lru: LRU = LRU(size)
        self.device = device

    def get(self, fingerprint: str, base_dir: Path, label: str):
        def load():
            from portllm_engine.transplant import PatchServer

            _check_fingerprint(base_dir, fingerprint, label)
            log.info("serving base %s from %s", label, base_dir)
            return PatchServer(base_dir, device=self.device)

        return self._lru.get(fingerprint, load)
