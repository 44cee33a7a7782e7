"""The Celery app of the workers. No torch here: the engine is imported inside the steps.

`celery -A workers.celery_app worker -Q gpu,serve` or `portllm worker` (workers.main) start it.
Names, queues, routes and broker options come from the task contract (portllm_core.tasks).
"""
from __future__ import annotations

from celery import Celery

from portllm_core import tasks
from portllm_core.settings import Settings


def make_app(settings: Settings) -> Celery:
    app = tasks.make_celery(settings, "portllm", include=["workers.tasks"])
    app.conf.update(
        # A task is acknowledged only once it has finished, and a worker that dies mid-task gives
        # it back: the registry's conditional claim makes the redelivery harmless.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=settings.job_time_limit_s,
        task_annotations={tasks.ANSWER_QUESTION: {"time_limit": settings.answer_time_limit_s}},
        worker_send_task_events=True,  # Flower
        task_send_sent_event=True,
        # A child process imports torch at start to log its device: give it time to report in.
        worker_proc_alive_timeout=120,
    )
    return app


app = make_app(Settings())

import workers.lifecycle  # noqa: E402,F401  (connects the worker signals)
