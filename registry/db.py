"""Engines and sessions. Create engines per process: a Celery worker calls make_engine after fork."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

# Seconds a SQLite writer waits for another process's write lock (bot, workers, sweeper).
SQLITE_BUSY_TIMEOUT_S = 30


def make_engine(url: str, **kwargs) -> Engine:
    """An engine for `url` (the caller reads it from its settings). SQLite gets WAL and foreign keys."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:" and not parsed.database.startswith("file:"):
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        kwargs.setdefault("connect_args", {}).setdefault("timeout", SQLITE_BUSY_TIMEOUT_S)
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # Connections die under a long-lived worker (server restarts, idle timeouts): test them first.
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_recycle", 1800)
    return create_engine(url, **kwargs)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    try:
        # WAL lets the bot read while a worker writes; SQLite leaves foreign keys off by default.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def make_session_factory(url: str | Engine) -> sessionmaker[Session]:
    """A sessionmaker; objects stay readable after commit (callers render them afterwards)."""
    engine = url if isinstance(url, Engine) else make_engine(url)
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One transaction: commit on success, roll back on any exception, always close."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def unreachable(exc: BaseException) -> bool:
    """Whether `exc` says the database could not be reached (stopped, restarting, the network),
    rather than that a query was wrong: followers say so and look again instead of dying."""
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    text = str(exc).lower()
    missing_schema = "no such table" in text or ("relation" in text and "does not exist" in text)
    return isinstance(exc, (OperationalError, InterfaceError)) and not missing_schema


def outage_reason(exc: BaseException) -> str:
    """The first line of the driver's message, for people ('connection refused', …)."""
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines()
    return lines[0][:200] if lines else type(cause).__name__
