"""The task contract between producers (Slack app, console, CLI, sweeper) and the workers.

Task names, their queues, the run kind each task works on, and the broker options are defined
here once. Producers publish by name through `TaskQueue` and never import the task code (which
pulls in torch); the workers' Celery app (workers/celery_app.py) builds its configuration from
`celery_config`.
"""
from __future__ import annotations

import random
import time
from typing import Protocol

from celery import Celery
from kombu import Exchange, Queue
from sqlalchemy.exc import SQLAlchemyError

from portllm_core.settings import SQLITE_QUEUE_PREFIX, Settings

GPU_QUEUE = "gpu"  # transplants, evaluations, re-tunes, training: one job per GPU
SERVE_QUEUE = "serve"  # answers in the channel
QUEUES = (GPU_QUEUE, SERVE_QUEUE)

TRANSPLANT_AND_EVALUATE = "portllm.transplant_and_evaluate"
EVAL_ONLY = "portllm.eval_only"
RETUNE = "portllm.retune"
TRAIN_PATCH = "portllm.train_patch"
SCORE_LIVE = "portllm.score_live"  # what just went live, on the full suite, ahead of the next release
ANSWER_QUESTION = "portllm.answer_question"
WARM_ANSWERS = "portllm.warm_answers"  # a rollout went live: its base and patch ready to answer
ANNOUNCE_RELEASE = "portllm.announce_release"  # post a release's summary and its offers
SWEEP = "portllm.sweep"  # every worker sweeps on a timer; the task serves manual triggers

TASK_QUEUES: dict[str, str] = {
    TRANSPLANT_AND_EVALUATE: GPU_QUEUE,
    EVAL_ONLY: GPU_QUEUE,
    RETUNE: GPU_QUEUE,
    TRAIN_PATCH: GPU_QUEUE,
    SCORE_LIVE: GPU_QUEUE,
    ANSWER_QUESTION: SERVE_QUEUE,
    WARM_ANSWERS: SERVE_QUEUE,
    ANNOUNCE_RELEASE: SERVE_QUEUE,
    SWEEP: GPU_QUEUE,
}

# The task that works on a run of each kind (registry.models.RunKind values).
TASK_FOR_RUN_KIND: dict[str, str] = {
    "transplant": TRANSPLANT_AND_EVALUATE,
    "eval": EVAL_ONLY,
    "retune": RETUNE,
    "train": TRAIN_PATCH,
}


# Tasks that yield to everything else on their queue (kombu's Redis transport: 0 is first, 9 last).
LOW_PRIORITY = {SCORE_LIVE: 9}


class Enqueue(Protocol):
    def __call__(self, task_name: str, *args: object) -> None: ...


def broker_transport_options(broker_url: str, visibility_timeout_s: int) -> dict:
    """Options per transport: kombu hands SQLAlchemy's options to create_engine as they are."""
    if broker_url.startswith(SQLITE_QUEUE_PREFIX):
        # Bot, workers and sweeper share one SQLite file: wait for its lock instead of failing.
        return {"connect_args": {"timeout": 30}}
    if broker_url.startswith(("redis://", "rediss://", "redis+socket://")):
        return {"visibility_timeout": visibility_timeout_s}
    return {}


def celery_config(settings: Settings) -> dict:
    """What producers and workers agree on: JSON only, no results, the queues and the routes."""
    broker_url = settings.resolved_broker_url()
    return {
        "broker_url": broker_url,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_backend": None,
        "task_ignore_result": True,
        "broker_transport_options": broker_transport_options(broker_url, settings.visibility_timeout_s),
        "broker_connection_retry_on_startup": True,
        # Each queue on its own direct exchange: a queue bound to the default exchange would also
        # receive every task routed to another queue.
        "task_queues": [Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUES],
        "task_default_queue": GPU_QUEUE,
        "task_routes": {name: {"queue": queue} for name, queue in TASK_QUEUES.items()},
    }


def make_celery(settings: Settings, name: str, **kwargs) -> Celery:
    if settings.resolved_broker_url().startswith(SQLITE_QUEUE_PREFIX):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = Celery(name, **kwargs)
    app.conf.update(celery_config(settings))
    return app


class TaskQueue:
    """`enqueue(task_name, *args)` routed to the task's queue; args must be JSON primitives."""

    def __init__(self, settings: Settings) -> None:
        self.app = make_celery(settings, "portllm-producer", set_as_current=False)

    def connect(self, attempts: int = 5) -> None:
        """Open the broker connection and declare the queues now, not during the first command.

        The embedded SQLAlchemy transport creates its tables and queue rows on first use and is
        only thread-safe, not process-safe: two processes starting at once (gunicorn workers, a
        Celery worker) can both try to insert the same row. The loser retries on a fresh
        connection and then finds the row.
        """
        for attempt in range(1, attempts + 1):
            try:
                with self.app.connection_for_write() as conn:
                    for queue in self.app.conf.task_queues:
                        queue(conn.default_channel).declare()
                break
            except SQLAlchemyError:
                if attempt == attempts:
                    raise
                time.sleep(random.uniform(0.05, 0.3))
        with self.app.producer_or_acquire() as producer:  # warm the pool send_task publishes through
            for queue in self.app.conf.task_queues:
                producer.maybe_declare(queue)

    def enqueue(self, task_name: str, *args: object) -> None:
        self.app.send_task(task_name, args=list(args), queue=TASK_QUEUES[task_name],
                           priority=LOW_PRIORITY.get(task_name))

    __call__ = enqueue
