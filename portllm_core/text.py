"""Small text helpers shared by the core's flows and every interface (no heavy imports)."""
from __future__ import annotations


def short(digest: str | None, n: int = 12) -> str:
    """The first `n` characters of a digest or fingerprint, as people are shown it ('' for none)."""
    return (digest or "")[:n]
