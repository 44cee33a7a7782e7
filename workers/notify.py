"""How results reach people: the console channel's outbox file, or Slack.

Tasks call `run_changed(run_id)` whenever a run moves and `answer_stream(reply_to, chunks)` for
an answer. Both notifiers read what they show from the registry, so a task passes only ids.
A notifier never fails a run: delivery problems are logged and the run goes on.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Protocol

from slack_sdk.errors import SlackClientError
from sqlalchemy.orm import Session, sessionmaker

from portllm_core.blocks import escape, run_card_message
from registry.models import FINAL_RUN_STATUSES

log = logging.getLogger(__name__)

# Slack said no, or Slack could not be reached: logged, never raised into a run.
DELIVERY_ERRORS = (SlackClientError, OSError)


class Notifier(Protocol):
    def run_changed(self, run_id: int, *, final: bool = False) -> None:
        """The run moved (progress, step or status). `final` updates are never throttled."""

    def answer_stream(self, reply_to: dict, chunks: Iterable[str]) -> str:
        """Deliver an answer as it is generated; returns the whole text."""

    def release_changed(self, release_id: int, *, announce: bool = False) -> None:
        """A release's summary moved (a verdict landed). `announce`: also post its offers, once."""


class Throttle:
    """At most one update per key per `interval` seconds; final updates always pass."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._last: dict[object, float] = {}
        self._lock = threading.Lock()

    def allow(self, key: object, *, final: bool = False) -> bool:
        with self._lock:
            now = self._clock()
            last = self._last.get(key)
            if final or last is None or now - last >= self.interval:
                self._last[key] = now
                return True
            return False


def _release(session: Session, release_id: int):
    """The release's read model, or None when it is gone."""
    from portllm_core.views import release_view
    from registry.models import Release

    release = session.get(Release, release_id)
    return None if release is None else (release, release_view(release))


def release_text(view) -> str:
    """The release summary in a few lines, for the console and Slack's notification text."""
    from portllm_core.blocks import release_rows, release_title

    lines = [f"{release_title(view)}:"] + [
        f"{assistant} in {channel}: run {run} {state}, gate {gate}" if run != "–"
        else f"{assistant} in {channel}: offered, `patch {assistant} onto {view.version}` takes it"
        for assistant, channel, run, state, gate in release_rows(view)]
    return "\n".join(lines)


def _card(session: Session, run_id: int):
    """The core's read model of a run (the same card Slack and the console show), or None."""
    from portllm_core.views import run_card
    from registry.errors import UnknownRun

    try:
        return run_card(session, run_id)
    except UnknownRun:
        return None


class ConsoleNotifier:
    """Appends JSON lines to <data_dir>/console/outbox.jsonl; `portllm console` tails the file."""

    def __init__(self, outbox: Path, session_factory: sessionmaker, *, interval: float = 0.5,
                 release_channel: str | None = None) -> None:
        self.outbox = outbox
        self.session_factory = session_factory
        self.release_channel = release_channel
        self._throttle = Throttle(interval)
        self._lock = threading.Lock()

    def _write(self, event: dict) -> None:
        self.outbox.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(event, ensure_ascii=False) + "\n"
        # One write call per line in append mode keeps lines whole across processes.
        with self._lock, open(self.outbox, "a", encoding="utf-8") as out:
            out.write(line)

    def run_changed(self, run_id: int, *, final: bool = False) -> None:
        if not self._throttle.allow(run_id, final=final):
            return
        from portllm_core.blocks import run_summary

        with self.session_factory() as session:
            card = _card(session, run_id)
        if card is None:
            return
        self._write({
            "type": "run",
            "run_id": run_id,
            "channel": card.channel,
            "status": card.status,
            "progress": card.progress,
            "step": card.step,
            "final": final or card.status in FINAL_RUN_STATUSES,
            "text": run_summary(card),
        })

    def release_changed(self, release_id: int, *, announce: bool = False) -> None:
        with self.session_factory() as session:
            found = _release(session, release_id)
        if found is None:
            return
        release, view = found
        self._write({"type": "release", "release_id": release_id, "channel": self.release_channel,
                     "text": release_text(view), "summary": view.to_json()})
        if announce:
            for offer in view.to_json()["offers"]:
                self._write({"type": "offer", "release_id": release_id, **offer,
                             "text": f"{view.version} is out: `patch {offer['assistant']} onto {view.version}` "
                                     "carries the patch onto it here."})

    def answer_stream(self, reply_to: dict, chunks: Iterable[str]) -> str:
        parts: list[str] = []
        for chunk in chunks:
            parts.append(chunk)
            self._write({"type": "answer_chunk", "reply_to": reply_to, "text": chunk})
        text = "".join(parts)
        self._write({"type": "answer_done", "reply_to": reply_to, "text": text})
        return text


def _reason(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    return response.get("error", str(exc)) if response is not None else str(exc)


def _coalesce(chunks: Iterable[str], interval: float) -> Iterator[str]:
    """Group generated pieces so Slack sees at most one write per `interval` seconds."""
    pending: list[str] = []
    last = float("-inf")  # the first piece goes out at once: time to first token matters
    for chunk in chunks:
        pending.append(chunk)
        if time.monotonic() - last >= interval:
            yield "".join(pending)
            pending.clear()
            last = time.monotonic()
    if pending:
        yield "".join(pending)


class SlackNotifier:
    """One Slack message per run, posted once and updated in place (throttled); streamed answers.

    The message's {"channel", "ts"} is kept in `run.notify_ref` so every worker updates the same one.
    """

    def __init__(self, client, session_factory: sessionmaker, *, interval: float = 1.0,
                 release_channel: str | None = None) -> None:
        self.client = client
        self.session_factory = session_factory
        self.interval = interval
        self.release_channel = release_channel
        self._throttle = Throttle(interval)

    @classmethod
    def from_settings(cls, settings, session_factory: sessionmaker) -> SlackNotifier:
        from portllm_core.slack import make_client

        return cls(make_client(settings), session_factory, interval=settings.slack_update_interval_s,
                   release_channel=settings.release_channel)

    def release_changed(self, release_id: int, *, announce: bool = False) -> None:
        """The summary in the operations channel (posted once, then updated), and the offer cards."""
        from portllm_core.blocks import offer_blocks, release_blocks

        with self.session_factory() as session:
            found = _release(session, release_id)
            if found is None:
                return
            release, view = found
            try:
                if announce:
                    for offer in view.to_json()["offers"]:
                        self.client.chat_postMessage(
                            channel=offer["channel"], text=f"{view.version} is out: carry {offer['assistant']} onto it?",
                            blocks=offer_blocks(release_id, view.version, offer["assistant"], offer["channel"]))
                if self.release_channel is None:
                    return
                text, blocks = release_text(view), release_blocks(view)
                if release.notify_ref:
                    self.client.chat_update(channel=release.notify_ref["channel"], ts=release.notify_ref["ts"],
                                            text=text, blocks=blocks)
                    return
                posted = self.client.chat_postMessage(channel=self.release_channel, text=text, blocks=blocks)
            except DELIVERY_ERRORS as exc:
                log.warning("Slack update for release %s failed: %s", release_id, _reason(exc))
                return
            release.notify_ref = {"channel": posted["channel"], "ts": posted["ts"]}
            session.commit()

    def run_changed(self, run_id: int, *, final: bool = False) -> None:
        if not self._throttle.allow(run_id, final=final):
            return
        from registry import services
        from registry.models import Run

        with self.session_factory() as session:
            card = _card(session, run_id)
            if card is None:
                return
            run = session.get(Run, run_id)
            message = run_card_message(card)
            try:
                if run.notify_ref:
                    ref = run.notify_ref
                    self.client.chat_update(channel=ref["channel"], ts=ref["ts"], **message)
                    return
                # Only ever to the run's own channel: the card shows KPIs and who asked.
                posted = self.client.chat_postMessage(channel=run.channel, **message)
            except DELIVERY_ERRORS as exc:
                log.warning("Slack update for run %s failed: %s", run_id, _reason(exc))
                return
            services.set_notify_ref(session, run_id, {"channel": posted["channel"], "ts": posted["ts"]})
            session.commit()

    def answer_stream(self, reply_to: dict, chunks: Iterable[str]) -> str:
        """chat_stream into the thread; where streaming is refused, a message updated in place.

        What is posted is escaped (the model may echo `<!channel>` or write a disguised link);
        what is returned is the answer as generated. Escaping maps each character on its own,
        so escaping piece by piece equals escaping the whole.
        """
        sent: list[str] = []
        pieces = _coalesce(chunks, self.interval)
        channel, thread_ts = reply_to["channel"], reply_to.get("thread_ts")
        if thread_ts:
            stream = self.client.chat_stream(
                channel=channel, thread_ts=thread_ts, buffer_size=1,
                recipient_team_id=reply_to.get("team"), recipient_user_id=reply_to.get("user"),
            )
            try:
                for piece in pieces:
                    sent.append(piece)  # before sending: a refused start falls back with it
                    stream.append(markdown_text=escape(piece))
                stream.stop()
                self._remember_answer(reply_to, channel, stream.ts)
                return "".join(sent)
            except DELIVERY_ERRORS as exc:
                log.info("chat_stream unavailable (%s); falling back to chat.update", _reason(exc))
        text, ts = self._answer_by_update(channel, thread_ts, sent, pieces)
        self._remember_answer(reply_to, channel, ts)
        return text

    def _remember_answer(self, reply_to: dict, channel: str, ts: str | None) -> None:
        """Tie the posted message to the answer's row, so 👍/👎 reactions on it rate the answer."""
        if ts is None or reply_to.get("answer_id") is None:
            return
        from registry import services
        from registry.db import session_scope

        with session_scope(self.session_factory) as session:
            services.set_answer_message(session, reply_to["answer_id"], ts)

    def _answer_by_update(self, channel: str, thread_ts: str | None, sent: list[str],
                          pieces: Iterator[str]) -> tuple[str, str | None]:
        text = "".join(sent)
        ts = None
        try:
            for piece in pieces:
                text += piece
                if ts is None:
                    ts = self.client.chat_postMessage(channel=channel, thread_ts=thread_ts, text=escape(text))["ts"]
                else:
                    self.client.chat_update(channel=channel, ts=ts, text=escape(text))
            if ts is None:
                ts = self.client.chat_postMessage(channel=channel, thread_ts=thread_ts,
                                                  text=escape(text) or "(no answer)")["ts"]
        except DELIVERY_ERRORS as exc:
            log.warning("Slack answer in %s failed: %s", channel, _reason(exc))
        return text, ts


def make_notifier(settings, session_factory: sessionmaker) -> Notifier:
    """The notifier for run updates (and answers to Slack questions): PORTLLM_NOTIFIER."""
    if settings.notifier == "slack":
        return SlackNotifier.from_settings(settings, session_factory)
    return ConsoleNotifier(settings.outbox_path, session_factory, release_channel=settings.release_channel)
