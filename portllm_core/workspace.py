"""The registry, artifact store and task queue one process works on, opened from Settings.

Every interface builds one: the Slack app, the console, the CLI commands, the demo and (as a
per-process subclass) the workers. Connections open on first use, so a process that only
parses a command never touches the database or the broker.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property

from sqlalchemy.orm import Session, sessionmaker

from portllm_core.settings import Settings


class Workspace:
    def __init__(self, settings: Settings | None = None, *,
                 session_factory: sessionmaker[Session] | None = None, queue=None) -> None:
        self.settings = settings or Settings()
        if session_factory is not None:
            self.session_factory = session_factory
        if queue is not None:
            self.queue = queue

    @cached_property
    def session_factory(self) -> sessionmaker[Session]:
        return open_registry(self.settings)

    @cached_property
    def store(self):
        from registry.artifacts import ArtifactStore

        return ArtifactStore(self.settings.artifacts_dir)

    @cached_property
    def queue(self):
        from portllm_core.tasks import TaskQueue

        return TaskQueue(self.settings)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: committed when the block ends, rolled back on any error."""
        from registry.db import session_scope

        with session_scope(self.session_factory) as session:
            yield session

    def close(self, *, owned: bool = True) -> None:
        """Drop the database pool (`owned=False` after a fork: the parent's connections are not ours to close)."""
        if "session_factory" in self.__dict__:
            self.session_factory.kw["bind"].dispose(close=owned)


def open_registry(settings: Settings) -> sessionmaker[Session]:
    """Sessions on the registry database of `settings`, for every process that opens it (CLI,
    console, workers, Slack app, demo).

    The embedded default (the SQLite file in the data dir, no PORTLLM_DATABASE_URL) is brought to
    the newest schema on first use, so a new data dir needs no set-up; processes starting at once
    take turns on a lock file beside it. A configured database (production PostgreSQL) is never
    migrated silently: its operator runs `portllm db upgrade` (docker-compose's `migrate` service)
    when they choose, and the commands say so while its tables are missing."""
    from registry.db import make_session_factory

    url = settings.resolved_database_url()
    if settings.database_url is None:
        from registry.cli import upgrade_once

        upgrade_once(url, lock=settings.data_dir / "portllm.db.lock")
    return make_session_factory(url)
