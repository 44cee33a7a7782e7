"""Claims on keys with a time to live, shared by every process on one database.

The Slack app's dedupe on the embedded defaults: the first process to claim a Slack event,
command or click handles it; the others (a retry, the second delivery of an @mention, another
gunicorn worker) see it claimed until it expires.
"""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from registry.models import SeenKey, utcnow
from registry.services.common import conditional_update, insert_unless_exists


def claim_key(s: Session, key: str, ttl_s: float) -> bool:
    """True for exactly one caller per key until the key expires, across processes."""
    now = utcnow()
    expires_at = now + timedelta(seconds=ttl_s)
    if insert_unless_exists(s, SeenKey, {"key": key, "expires_at": expires_at}, key="key",
                            returning=SeenKey.key) is not None:
        return True
    # Taken before: claimable again only once expired, and then by one caller (conditional update).
    return conditional_update(s, SeenKey, [SeenKey.key == key, SeenKey.expires_at <= now],
                              expires_at=expires_at) == 1


def give_back_key(s: Session, key: str) -> None:
    """Give a claim back: the next caller claims the key as if it were new."""
    s.execute(delete(SeenKey).where(SeenKey.key == key))


def key_claimed(s: Session, key: str) -> bool:
    return s.scalar(select(SeenKey.key).where(SeenKey.key == key, SeenKey.expires_at > utcnow())) is not None


def purge_expired_keys(s: Session) -> int:
    return s.execute(delete(SeenKey).where(SeenKey.expires_at <= utcnow())).rowcount
