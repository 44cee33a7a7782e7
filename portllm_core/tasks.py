"""Producer side of the job queue: the bot enqueues worker tasks by name, never importing them."""
from __future__ import annotations

import random
import time
from typing import Protocol

from celery import Celery
from sqlalchemy.exc import SQLAlchemyError

# Task names and their queues, as the workers declare them (CONTRACT.md, workers/tasks.py).
TRANSPLANT_AND_EVALUATE = "portllm.transplant_and_evaluate"
EVAL_ONLY = "portllm.eval_only"
RETUNE = "portllm.retune"
TRAIN_PATCH = "portllm.train_patch"
ANSWER_QUESTION = "portllm.answer_question"

TASK_QUEUES: dict[str, str] = {
    TRANSPLANT_AND_EVALUATE: "gpu",
    EVAL_ONLY: "gpu",
    RETUNE: "gpu",
    TRAIN_PATCH: "gpu",
    ANSWER_QUESTION: "serve",
}


class Enqueue(Protocol):
    def __call__(self, task_name: str, *args: object, queue: str | None = None) -> None: ...


def transport_options(broker_url: str) -> dict:
    """The workers' options for the embedded queue: wait for SQLite's lock rather than fail.

    kombu passes SQLAlchemy transport options to create_engine as they are, so they stay this plain.
    """
    if broker_url.startswith("sqla+sqlite"):
        return {"connect_args": {"timeout": 30}}
    return {}


def make_producer(broker_url: str) -> Celery:
    """A Celery app used only to publish: JSON only, no result backend."""
    app = Celery("portllm-bot", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_backend=None,
        task_ignore_result=True,
        broker_transport_options=transport_options(broker_url),
        broker_connection_retry_on_startup=True,
    )
    return app


class TaskQueue:
    """`enqueue(task_name, *args)` routed to the task's queue; args must be JSON primitives."""

    def __init__(self, broker_url: str) -> None:
        self.app = make_producer(broker_url)

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
                    channel = conn.default_channel
                    for name in sorted(set(TASK_QUEUES.values())):
                        self.app.amqp.queues[name](channel).declare()  # created on lookup
                break
            except SQLAlchemyError:
                if attempt == attempts:
                    raise
                time.sleep(random.uniform(0.05, 0.3))
        with self.app.producer_or_acquire() as producer:  # warm the pool send_task publishes through
            for name in sorted(set(TASK_QUEUES.values())):
                producer.maybe_declare(self.app.amqp.queues[name])

    def enqueue(self, task_name: str, *args: object, queue: str | None = None) -> None:
        self.app.send_task(task_name, args=list(args), queue=queue or TASK_QUEUES[task_name])

    __call__ = enqueue
