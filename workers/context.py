"""Per-process resources of a worker: settings, registry sessions, artifact store, notifier.

Database connections must not cross a fork, so each worker process builds its own on
`worker_process_init` (workers.celery_app); `current()` also rebuilds them when it finds itself
in a new process, which covers pools that fork without that signal.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property

from sqlalchemy.orm import Session, sessionmaker

from workers.settings import WorkerSettings


@dataclass
class WorkerContext:
    settings: WorkerSettings
    pid: int

    @cached_property
    def session_factory(self) -> sessionmaker[Session]:
        from registry.db import make_session_factory
        from registry.settings import RegistrySettings

        return make_session_factory(RegistrySettings(data_dir=self.settings.data_dir).resolved_database_url())

    @cached_property
    def artifacts(self):
        from registry.artifacts import ArtifactStore

        return ArtifactStore(self.settings.artifacts_dir)

    @cached_property
    def notifier(self):
        from workers.notify import make_notifier

        return make_notifier(self.settings, self.session_factory)

    @cached_property
    def console(self):
        from workers.notify import ConsoleNotifier

        return ConsoleNotifier(self.settings.outbox_path, self.session_factory)

    def answer_notifier(self, reply_to: dict):
        """Answers go back the way the question came (`reply_to["via"]`, set by the bot):
        a console question is answered in the console even where runs are reported to Slack."""
        if reply_to.get("via") == "console":
            return self.console
        return self.notifier

    @cached_property
    def sweeper(self):
        from workers.sweeper import Sweeper

        return Sweeper(self.session_factory, self.settings)

    def close(self) -> None:
        if "session_factory" in self.__dict__:
            # After a fork the parent's pooled connections belong to the parent: drop, never close.
            self.session_factory.kw["bind"].dispose(close=self.pid == os.getpid())


_current: WorkerContext | None = None


def current() -> WorkerContext:
    if _current is None or _current.pid != os.getpid():
        reset()
    return _current


def reset(settings: WorkerSettings | None = None) -> WorkerContext:
    """Start fresh in this process (after a fork, or in tests with new settings)."""
    global _current
    if _current is not None:
        _current.close()
    _current = WorkerContext(settings or WorkerSettings(), os.getpid())
    return _current
