"""Prometheus metrics of every PortLLM process: defined here once, counted where each fact happens.

The flows count runs requested, refusals and ratings; the run protocol counts runs started and
finished, their queue wait and duration, and the scores each run computed or took from the
ledger; the answer task times answers. Labels are only assistant, channel, kind, status, verdict
and reason: never a user, a question or other free text, so the series stay few and nothing a
person typed reaches the metrics store.

The bot serves them at /metrics beside /healthz, each worker on PORTLLM_METRICS_PORT. Both fork
(gunicorn's workers, Celery's pool), so a serving process switches to prometheus_client's
multiprocess mode before it forks: every process keeps its values in files in one folder, and a
scrape adds them up. Live rollouts are read from the registry at scrape time, so they are right
whichever process changed them.
"""
from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess, values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import and_, func, select
from sqlalchemy.exc import SQLAlchemyError

from registry.errors import (GateFailedNeedsAdmin, NotApprover, NotRequester, OwnRunUnderFourEyes, RateLimited,
                             RegistryError, WrongChannel)
from registry.models import Assistant, Rollout, RolloutState, Run

log = logging.getLogger(__name__)

# The only label names any PortLLM metric may have (tests/core/test_metrics.py holds them to it).
LABELS = frozenset({"assistant", "channel", "kind", "status", "verdict", "reason"})

RUNS_REQUESTED = Counter("portllm_runs_requested", "Runs requested; the same request repeated counts once.",
                         ["assistant", "channel", "kind"])
RUNS_STARTED = Counter("portllm_runs_started", "Attempts at runs that a worker claimed (a retry starts again).",
                       ["assistant", "channel", "kind"])
RUNS_FINISHED = Counter("portllm_runs_finished", "Runs that ended, by status and gate verdict (none: no verdict).",
                        ["assistant", "channel", "kind", "status", "verdict"])
RUN_DURATION = Histogram("portllm_run_duration_seconds", "From a worker's claim to the run's end.",
                         ["kind", "status"],
                         buckets=(5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 21600))
RUN_QUEUE_WAIT = Histogram("portllm_run_queue_wait_seconds", "From the request to the first worker's claim.",
                           ["kind"], buckets=(0.1, 0.5, 1, 5, 15, 30, 60, 300, 900, 3600, 14400))
EVALUATIONS_COMPUTED = Counter("portllm_evaluations_computed",
                               "Scores computed because the evaluation ledger lacked them (by finished runs, and "
                               "live scored on the full suite ahead of the next release).", ["assistant"])
EVALUATIONS_REUSED = Counter("portllm_evaluations_reused", "Scores taken from the evaluation ledger.", ["assistant"])
ANSWERS = Counter("portllm_answers", "Questions answered by a live patch, by status: ok or error.",
                  ["assistant", "channel", "status"])
ANSWER_LATENCY = Histogram("portllm_answer_latency_seconds",
                           "From a worker taking a question to the answer's last token.", ["assistant"],
                           buckets=(0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300))
TIME_TO_FIRST_TOKEN = Histogram("portllm_answer_time_to_first_token_seconds",
                                "From a worker taking a question to the answer's first visible text.",
                                ["assistant"], buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60))
RATINGS_UP = Counter("portllm_ratings_up", "👍 given to answers (a changed rating counts again).",
                     ["assistant", "channel"])
RATINGS_DOWN = Counter("portllm_ratings_down", "👎 given to answers (a changed rating counts again).",
                       ["assistant", "channel"])
REFUSALS = Counter("portllm_refusals", "Requests and decisions refused, by reason: permission, rate_limit, "
                   "channel_scope.", ["reason"])

_REFUSAL_REASONS: tuple[tuple[tuple[type[RegistryError], ...], str], ...] = (
    ((NotApprover, NotRequester, OwnRunUnderFourEyes, GateFailedNeedsAdmin), "permission"),
    ((RateLimited,), "rate_limit"),
    ((WrongChannel,), "channel_scope"),
)


# -- counting ----------------------------------------------------------------------------------

def refusal_reason(exc: BaseException) -> str | None:
    return next((reason for kinds, reason in _REFUSAL_REASONS if isinstance(exc, kinds)), None)


@contextmanager
def counting_refusals() -> Iterator[None]:
    """Count a permission, rate-limit or channel refusal raised inside, and let it go on."""
    try:
        yield
    except RegistryError as exc:
        reason = refusal_reason(exc)
        if reason is not None:
            REFUSALS.labels(reason).inc()
        raise


def run_requested(assistant: str, channel: str, kind: str) -> None:
    RUNS_REQUESTED.labels(assistant, channel, kind).inc()


def run_started(run: Run) -> None:
    """A worker claimed `run`; its first claim also ends its wait in the queue."""
    RUNS_STARTED.labels(run.assistant.name, run.channel, run.kind).inc()
    if run.attempts == 1 and run.started_at is not None:
        RUN_QUEUE_WAIT.labels(run.kind).observe(_seconds(run.created_at, run.started_at))


def run_finished(run: Run, verdict: str | None = None) -> None:
    """`run` ended (as finish_run left it), with its gate verdict if it reached one."""
    RUNS_FINISHED.labels(run.assistant.name, run.channel, run.kind, run.status, verdict or "none").inc()
    if run.started_at is not None and run.finished_at is not None:
        RUN_DURATION.labels(run.kind, run.status).observe(_seconds(run.started_at, run.finished_at))


def evaluations_used(assistant: str, computed: Iterable[bool]) -> None:
    for was_computed in computed:
        (EVALUATIONS_COMPUTED if was_computed else EVALUATIONS_REUSED).labels(assistant).inc()


def rated(assistant: str, channel: str, up: bool) -> None:
    (RATINGS_UP if up else RATINGS_DOWN).labels(assistant, channel).inc()


class AnswerTimer:
    """Times one answer from the moment a worker takes the question."""

    def __init__(self, assistant: str, channel: str) -> None:
        self.assistant = assistant
        self.channel = channel
        self.started = time.monotonic()

    def stream(self, chunks: Iterable[str]) -> Iterator[str]:
        """Pass the generated chunks on, timing the first visible one and the end."""
        first = True
        for chunk in chunks:
            if first and chunk.strip():
                TIME_TO_FIRST_TOKEN.labels(self.assistant).observe(time.monotonic() - self.started)
                first = False
            yield chunk
        ANSWER_LATENCY.labels(self.assistant).observe(time.monotonic() - self.started)
        ANSWERS.labels(self.assistant, self.channel, "ok").inc()

    def failed(self) -> None:
        ANSWERS.labels(self.assistant, self.channel, "error").inc()


def _seconds(start, end) -> float:
    return max(0.0, (end - start).total_seconds())


# -- serving -----------------------------------------------------------------------------------

class LiveRollouts(Collector):
    """portllm_rollouts_live: channels each assistant is live in now, read from the registry at
    scrape time (a counter kept in one process could not see another's approvals and rollbacks)."""

    def __init__(self, session_factory) -> None:
        self.session_factory = session_factory

    def describe(self):  # registering must not query the database
        return [self._family()]

    def collect(self):
        family = self._family()
        live = and_(Rollout.assistant_id == Assistant.id, Rollout.state == RolloutState.LIVE)
        try:
            with self.session_factory() as s:
                rows = s.execute(select(Assistant.name, func.count(Rollout.id)).outerjoin(Rollout, live)
                                 .group_by(Assistant.name).order_by(Assistant.name)).all()
        except SQLAlchemyError as exc:  # the other metrics still go out; the gauge is missing for a scrape
            log.warning("portllm_rollouts_live left out of this scrape: the registry is unreachable (%s)",
                        type(exc).__name__)
            return
        for name, count in rows:
            family.add_metric([name], count)
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily("portllm_rollouts_live", "Channels where the assistant is live now.",
                                 labels=["assistant"])


def process_dir(metrics_dir: Path, role: str, port: int) -> Path:
    """One serving process's folder: the data dir may be shared by several hosts and processes."""
    return metrics_dir / f"{role}-{socket.gethostname()}-{port}"


def share_with_forked_processes(directory: Path) -> None:
    """Multiprocess mode for this process and every one it forks from now on, in `directory`
    (emptied: values left by a previous start would be added to this one's).

    Call it before the first value is counted. prometheus_client picks its value store when it is
    first imported; every metric above has labels, so none holds a value before its first count,
    and from here on each value it makes lives in this folder.
    """
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    values.ValueClass = values.get_value_class()


def scrape_registry(session_factory) -> CollectorRegistry:
    """What an endpoint serves: the values of every process sharing the folder, and live rollouts."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    registry.register(LiveRollouts(session_factory))
    return registry
