"""Remember what was already handled, so Slack's redeliveries do not answer twice.

In-process on purpose: each gunicorn worker keeps its own memory. Across workers the bot relies
on Slack's retry headers instead: a retry whose reason is `http_timeout` reached us the first
time (every listener acks at once) and is acknowledged without being processed again; see
bot.listeners.middleware.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict


class Seen:
    """Keys seen in the last `ttl_s` seconds (at most `max_keys`, oldest forgotten first)."""

    def __init__(self, ttl_s: float = 3600.0, max_keys: int = 50_000) -> None:
        self.ttl_s = ttl_s
        self.max_keys = max_keys
        self._keys: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def first_time(self, key: str) -> bool:
        """True exactly once per key within the ttl, even when called from many threads at once."""
        now = time.monotonic()
        with self._lock:
            while self._keys and (len(self._keys) >= self.max_keys
                                  or next(iter(self._keys.values())) < now - self.ttl_s):
                self._keys.popitem(last=False)
            if key in self._keys:
                return False
            self._keys[key] = now
            return True

    def __contains__(self, key: str) -> bool:
        with self._lock:
            seen = self._keys.get(key)
            return seen is not None and seen >= time.monotonic() - self.ttl_s
