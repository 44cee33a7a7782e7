"""The console channel: the Slack commands in a terminal, on the embedded defaults.

For operators on the server, not a way to act as someone else: whatever is done here is
audited as `console:<name>`, never as a Slack user.

One command a line (typed, or piped on stdin), replies in order. After `patch`/`eval` it
follows the run in the registry until it ends and prints its card; after `ask` it prints the
answer the workers stream into <data_dir>/console/outbox.jsonl for this request.
"""
from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn
from sqlalchemy.orm import Session, sessionmaker

from portllm_cli import terminal
from portllm_core import views
from portllm_core.commands.grammar import refuse_control
from portllm_core.commands.handlers import Context, handle
from portllm_core.commands.replies import Reply
from portllm_core.flows.runs import RateLimits
from portllm_core.tasks import Enqueue
from portllm_core.workspace import Workspace
from portllm_core.settings import Settings
from registry.db import outage_reason, unreachable
from registry.services.catalog import CONSOLE_ACTOR_PREFIX

PROMPT = "portllm> "
QUEUED_HINT_AFTER_S = 10.0  # say that a worker is needed when a run sits queued this long
PIPED_WAIT_S = 600.0  # piped: how long a run or an answer may take before the console gives up
EXIT_TIMED_OUT = 124  # what coreutils' `timeout` returns, so scripts treat both alike


class WaitTimedOut(Exception):
    """Piped mode waited `--wait` seconds for a run or an answer; the message says what to do."""


class ConsoleSession:
    """One console session: who types, in which channel, and where replies go.

    `wait_s` None waits as long as it takes (the interactive REPL: Ctrl-C stops waiting); a
    number bounds every wait and raises WaitTimedOut after it (piped input, scripts, CI).
    """

    def __init__(self, *, channel: str, user: str, settings: Settings, session_factory: sessionmaker[Session],
                 enqueue: Enqueue, out: Console, poll_s: float, wait_s: float | None) -> None:
        self.channel, self.user, self.settings = channel, user, settings
        self.session_factory, self.enqueue, self.out = session_factory, enqueue, out
        self.poll_s, self.wait_s = poll_s, wait_s
        self.last_answer_id: int | None = None  # the last answer printed, for scripts that rate it

    def run_line(self, line: str) -> Reply:
        outbox = self.settings.outbox_path
        offset = outbox.stat().st_size if outbox.exists() else 0
        ctx = Context(user=f"{CONSOLE_ACTOR_PREFIX}{self.user}", channel=self.channel,
                      session_factory=self.session_factory, enqueue=self.enqueue,
                      request_id=f"console:{uuid.uuid4().hex}", limits=RateLimits.from_settings(self.settings),
                      reply_to={"via": "console"})
        reply = handle(line, ctx)
        self.out.print(terminal.render(reply))
        if reply.ok and reply.run_id is not None and reply.view is None:  # patch / eval queued
            self.follow_run(reply.run_id)
        if reply.ok and reply.reply_to is not None:
            self.print_answer(outbox, offset, reply.reply_to["request_id"])
        return reply

    def _waited_too_long(self, started: float) -> bool:
        return self.wait_s is not None and time.monotonic() - started > self.wait_s

    def follow_run(self, run_id: int) -> None:
        """Show the run's progress from the registry until it ends, then its card: a bar on a
        terminal, one line per step elsewhere (a pipe shows each line as it happens)."""
        started, hinted, last, outage = time.monotonic(), False, None, None
        with Progress(TextColumn("run #{task.fields[run_id]}"), BarColumn(), TaskProgressColumn(),
                      TextColumn("{task.description}"), console=self.out, transient=True,
                      disable=not self.out.is_terminal) as bar:
            task = bar.add_task("queued", total=1.0, run_id=run_id)
            while True:
                try:
                    with self.session_factory() as s:
                        card = views.run_card(s, run_id)
                except Exception as exc:  # the registry down: say so, keep following within the wait
                    if not unreachable(exc):
                        raise
                    if outage is None:
                        outage = time.monotonic()
                        bar.console.print(f"run #{run_id}: the registry is unreachable ({outage_reason(exc)}); "
                                          "still following it", markup=False)
                    if self._waited_too_long(started):
                        raise WaitTimedOut(f"the registry stayed unreachable: run #{run_id} is where it was "
                                           f"{time.monotonic() - outage:.0f} s ago; `portllm run wait {run_id}` "
                                           "follows it once the registry is back") from None
                    time.sleep(self.poll_s)
                    continue
                if outage is not None:
                    bar.console.print(f"run #{run_id}: the registry is back after {time.monotonic() - outage:.0f} s")
                    outage = None
                bar.update(task, completed=card.progress, description=card.step or card.status)
                if not self.out.is_terminal and (card.status, card.step) != last:
                    last = (card.status, card.step)
                    self.out.print(f"run #{run_id} {card.status} {card.progress:.0%}: {card.step or card.status}")
                if not card.active:
                    break
                if card.status == "queued" and time.monotonic() - started > QUEUED_HINT_AFTER_S and not hinted:
                    bar.console.print(f"run #{run_id} is still queued: is a worker running (`portllm worker`)?")
                    hinted = True
                if self._waited_too_long(started):
                    raise WaitTimedOut(
                        f"no worker picked up run #{run_id} in {self.wait_s:.0f} s: start `portllm worker`"
                        if card.status == "queued" else
                        f"run #{run_id} is still {card.status} after {self.wait_s:.0f} s ({card.step}); "
                        f"`portllm run wait {run_id}` follows it")
                time.sleep(self.poll_s)
        self.out.print(terminal.run_card(card))

    def print_answer(self, outbox: Path, offset: int, request_id: str) -> None:
        """Print the streamed answer addressed to this request, chunk by chunk."""
        printed = False
        started, hinted = time.monotonic(), False
        for record in _tail_jsonl(outbox, offset, self.poll_s):
            if not printed and not hinted and time.monotonic() - started > QUEUED_HINT_AFTER_S:
                self.out.print("(no answer yet: is a worker serving, `portllm worker`?)")
                hinted = True
            if self._waited_too_long(started):
                raise WaitTimedOut(f"no answer in {self.wait_s:.0f} s: is a worker serving (`portllm worker`)?")
            if record is None or (record.get("reply_to") or {}).get("request_id") != request_id:
                continue
            if record.get("type") == "answer_chunk":
                self.out.print(record.get("text", ""), end="", markup=False, highlight=False, soft_wrap=True)
                printed = True
            elif record.get("type") == "answer_done":
                if record.get("text") and not printed:  # a notifier that sends the whole answer at the end
                    self.out.print(record["text"], end="", markup=False, highlight=False, soft_wrap=True)
                self.out.print()
                # The worker numbers the answer (reply_to["answer_id"]) before generating it.
                self.last_answer_id = (record.get("reply_to") or {}).get("answer_id")
                if self.last_answer_id is not None:
                    answer = self.last_answer_id
                    self.out.print(f"(answer #{answer} · `rate {answer} up` or `rate {answer} down`)", markup=False)
                return


def _tail_jsonl(path: Path, offset: int, poll_s: float) -> Iterator[dict | None]:
    """JSON objects appended to `path` after `offset`, as they arrive; None after each poll that
    found nothing new, so the caller can tell time passing (and stop)."""
    pending = b""
    while True:
        if path.exists():
            with path.open("rb") as f:
                f.seek(offset)
                data = f.read()
            offset += len(data)
            pending += data
            *lines, pending = pending.split(b"\n")  # a half-written last line waits for its end
            for line in lines:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    yield record
        yield None
        time.sleep(poll_s)


def run_console(channel: str = "#support", user: str = "alice", stdin: TextIO | None = None,
                out: TextIO | None = None, *, settings: Settings | None = None,
                session_factory: sessionmaker[Session] | None = None, enqueue: Enqueue | None = None,
                poll_s: float = 0.5, wait_s: float = PIPED_WAIT_S) -> int:
    """Run commands from stdin (a REPL on a terminal). Exit 0, 1 if any command was refused, or
    124 when piped input waited `wait_s` for a run or an answer (the REPL waits as long as it takes)."""
    console = Console(file=out or sys.stdout, highlight=False)
    for what, value in (("user", user), ("channel", channel)):  # both are written to the registry
        if (refused := refuse_control(value)) is not None:
            console.print(f"error: the {what} name: {refused}", markup=False)
            return 1
    if stdin is None and hasattr(sys.stdin, "reconfigure"):
        # Bytes that are not UTF-8 become lone surrogates, which the grammar refuses like control
        # characters, instead of a decode error that would end the session.
        sys.stdin.reconfigure(errors="surrogateescape")
    ws = Workspace(settings, session_factory=session_factory, queue=enqueue)
    stdin = stdin or sys.stdin
    interactive = stdin.isatty()
    session = ConsoleSession(channel=channel, user=user, settings=ws.settings, session_factory=ws.session_factory,
                             enqueue=ws.queue, out=console, poll_s=poll_s, wait_s=None if interactive else wait_s)
    if interactive:
        console.print(f"PortLLM console · {user} in {channel} · `help` lists the commands, Ctrl-D leaves.")
    refused = False
    for line in _lines(stdin, console if interactive else None):
        if interactive and line.strip().lower() in ("quit", "exit"):
            break
        try:
            refused |= not session.run_line(line).ok
        except KeyboardInterrupt:  # stop waiting for this command, keep the session
            console.print("\n(interrupted)")
        except WaitTimedOut as exc:
            console.print(f"error: {exc}", markup=False)
            return EXIT_TIMED_OUT
    return 1 if refused else 0


def _lines(stdin: TextIO, prompt_to: Console | None) -> Iterator[str]:
    while True:
        if prompt_to is not None:
            prompt_to.print(PROMPT, end="")
        line = stdin.readline()
        if not line:
            return
        if line.strip():
            # Only the line break and spaces come off: str.strip() would also drop control characters
            # at the ends, which the grammar refuses wherever they are.
            yield line.rstrip("\r\n").strip(" \t")
