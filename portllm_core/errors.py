"""Errors the flows raise for people: what was wrong and what would be right, in one line."""
from __future__ import annotations


class BadInput(Exception):
    """An operator's or a member's mistake (a bad name, a missing file, a duplicate)."""
