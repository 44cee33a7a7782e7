"""Dedupe claims in the registry: one winner per key until it expires, also under a race."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from registry.db import session_scope
from registry.models import SeenKey, utcnow
from registry.services import seen


def claim(session_factory, key: str, ttl_s: float = 60) -> bool:
    with session_scope(session_factory) as s:
        return seen.claim_key(s, key, ttl_s)


def test_a_key_is_claimed_once_until_it_expires(session_factory):
    assert claim(session_factory, "event:Ev1") and not claim(session_factory, "event:Ev1")
    with session_factory() as s:
        assert seen.key_claimed(s, "event:Ev1") and not seen.key_claimed(s, "event:Ev2")
    with session_scope(session_factory) as s:  # let it expire
        s.get(SeenKey, "event:Ev1").expires_at = utcnow() - timedelta(seconds=1)
    with session_factory() as s:
        assert not seen.key_claimed(s, "event:Ev1")
    assert claim(session_factory, "event:Ev1") and not claim(session_factory, "event:Ev1")
    with session_scope(session_factory) as s:
        s.get(SeenKey, "event:Ev1").expires_at = utcnow() - timedelta(seconds=1)
        assert seen.purge_expired_keys(s) == 1


def test_of_concurrent_claims_exactly_one_wins(session_factory):
    with ThreadPoolExecutor(max_workers=8) as pool:
        won = list(pool.map(lambda _: claim(session_factory, "message:C1:1.0"), range(16)))
    assert won.count(True) == 1
