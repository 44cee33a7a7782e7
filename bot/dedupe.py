"""One reply per Slack event, command and click, across processes and machines.

Slack redelivers events it got no quick 2xx for, an @mention arrives twice (app_mention and
message), and with several gunicorn workers (or bots on several machines) each copy may land
on another process. So the memory of what was handled is shared: the registry database on the
embedded defaults, Redis when the broker is Redis. Keys expire after PORTLLM_DEDUPE_TTL_S.
"""
from __future__ import annotations

import time
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from portllm_core.settings import Settings
from registry.db import session_scope
from registry.services import seen


class SharedKeys(Protocol):
    def first_time(self, key: str) -> bool:
        """True for exactly one caller per key within the ttl, in any process."""

    def __contains__(self, key: str) -> bool:
        """Whether some process claimed the key within the ttl."""

    def forget(self, key: str) -> None:
        """Give the claim back (its handling failed): Slack's retry is handled as the first delivery."""


class DatabaseKeys:
    """Claims as rows of the registry's `seen_keys` table; expired rows are purged now and then."""

    def __init__(self, session_factory: sessionmaker[Session], ttl_s: float) -> None:
        self.session_factory = session_factory
        self.ttl_s = ttl_s
        self._next_purge = 0.0

    def first_time(self, key: str) -> bool:
        with session_scope(self.session_factory) as s:
            if time.monotonic() >= self._next_purge:  # keeps the table at about one ttl of keys
                self._next_purge = time.monotonic() + self.ttl_s
                seen.purge_expired_keys(s)
            return seen.claim_key(s, key, self.ttl_s)

    def __contains__(self, key: str) -> bool:
        with self.session_factory() as s:
            return seen.key_claimed(s, key)

    def forget(self, key: str) -> None:
        with session_scope(self.session_factory) as s:
            seen.give_back_key(s, key)


class RedisKeys:
    """Claims as Redis keys set with NX and an expiry: atomic, and expired by Redis itself."""

    PREFIX = "portllm:seen:"

    def __init__(self, url: str, ttl_s: float) -> None:
        import redis

        self.client = redis.Redis.from_url(url)
        self.ttl_s = int(ttl_s)

    def first_time(self, key: str) -> bool:
        return bool(self.client.set(self.PREFIX + key, b"1", nx=True, ex=self.ttl_s))

    def __contains__(self, key: str) -> bool:
        return bool(self.client.exists(self.PREFIX + key))

    def forget(self, key: str) -> None:
        self.client.delete(self.PREFIX + key)


def shared_keys(settings: Settings, session_factory: sessionmaker[Session]) -> SharedKeys:
    redis_url = settings.redis_url()
    if redis_url:
        return RedisKeys(redis_url, settings.dedupe_ttl_s)
    return DatabaseKeys(session_factory, settings.dedupe_ttl_s)
