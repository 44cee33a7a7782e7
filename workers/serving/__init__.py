"""The serving backends behind the answer task: `local` (the worker's resident base, the patch
attached) or `vllm` (one vLLM server per live base, every live patch on it as a LoRA adapter).

PORTLLM_SERVE_BACKEND picks one per worker process. Both stream text pieces of one answer; the
answer task hands them to the notifier, which escapes, posts and records them the same way.
"""
from __future__ import annotations

import threading
from collections.abc import Callable

from portllm_core.settings import Settings
from workers.serving.backend import Served, ServingBackend

_backend: ServingBackend | None = None
_lock = threading.Lock()


def backend(settings: Settings, *, on_local_fallback: Callable[[Served, str], None] | None = None) -> ServingBackend:
    """This process's backend, made once (answers on many threads share it). `on_local_fallback`
    hears of each patch the vLLM engine refused, which the local backend then answers."""
    global _backend
    with _lock:
        if _backend is None:
            if settings.serve_backend == "vllm":
                from workers.serving.vllm import VllmBackend

                _backend = VllmBackend(settings, on_local_fallback=on_local_fallback)
            else:
                from workers.serving.local import LocalBackend

                _backend = LocalBackend()
        return _backend


def close() -> None:
    global _backend
    with _lock:
        if _backend is not None:
            _backend.close()
            _backend = None
