"""Per-process resources of a worker: the workspace (registry, artifact store, queue) plus the
notifiers and the sweeper.

Database connections must not cross a fork, so each worker process builds its own on
`worker_process_init` (workers.lifecycle); `current()` also rebuilds them when it finds itself
in a new process, which covers pools that fork without that signal.
"""
from __future__ import annotations

import os
from functools import cached_property

from portllm_core.settings import Settings
from portllm_core.workspace import Workspace


class WorkerContext(Workspace):
    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.pid = os.getpid()

    @cached_property
    def notifier(self):
        from workers.notify import make_notifier

        return make_notifier(self.settings, self.session_factory)

    @cached_property
    def console(self):
        from workers.notify import ConsoleNotifier

        return ConsoleNotifier(self.settings.outbox_path, self.session_factory,
                               release_channel=self.settings.release_channel)

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


_current: WorkerContext | None = None


def current() -> WorkerContext:
    if _current is None or _current.pid != os.getpid():
        reset()
    return _current


def reset(settings: Settings | None = None) -> WorkerContext:
    """Start fresh in this process (after a fork, or in tests with new settings)."""
    global _current
    if _current is not None:
        # After a fork the parent's pooled connections belong to the parent: drop, never close.
        _current.close(owned=_current.pid == os.getpid())
    _current = WorkerContext(settings or Settings())
    return _current
