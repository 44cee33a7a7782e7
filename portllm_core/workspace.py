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
        from registry.db import make_session_factory

        return make_session_factory(self.settings.resolved_database_url())

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
