"""The Celery app of the workers. No torch here: the engine is imported inside the tasks.

`celery -A workers.celery_app worker -Q gpu,serve` or `portllm worker` (workers.main) start it.
"""
from __future__ import annotations

from celery import Celery
from kombu import Exchange, Queue

from workers.settings import WorkerSettings

GPU_QUEUE = "gpu"
SERVE_QUEUE = "serve"

TASK_ROUTES = {
    "portllm.transplant_and_evaluate": {"queue": GPU_QUEUE},
    "portllm.eval_only": {"queue": GPU_QUEUE},
    "portllm.retune": {"queue": GPU_QUEUE},
    "portllm.train_patch": {"queue": GPU_QUEUE},
    "portllm.answer_question": {"queue": SERVE_QUEUE},
    # Every worker also sweeps on a timer (workers.main); this route serves manual triggers.
    "portllm.sweep": {"queue": GPU_QUEUE},
}


def broker_transport_options(broker_url: str, visibility_timeout_s: int) -> dict:
    """Options per transport: kombu hands SQLAlchemy's options to create_engine as they are."""
    if broker_url.startswith("sqla+sqlite"):
        # Bot, workers and sweeper share one SQLite file: wait for its lock instead of failing.
        return {"connect_args": {"timeout": 30}}
    if broker_url.startswith(("redis://", "rediss://", "redis+socket://")):
        return {"visibility_timeout": visibility_timeout_s}
    return {}


def make_app(settings: WorkerSettings) -> Celery:
    broker_url = settings.resolved_broker_url()
    if broker_url.startswith("sqla+sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = Celery("portllm", broker=broker_url, include=["workers.tasks"])
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_backend=None,
        task_ignore_result=True,
        # A task is acknowledged only once it has finished, and a worker that dies mid-task gives
        # it back: the registry's conditional claim makes the redelivery harmless.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options=broker_transport_options(broker_url, settings.visibility_timeout_s),
        broker_connection_retry_on_startup=True,
        # Each queue on its own direct exchange, as the bot's producer declares them: a queue
        # bound to the default exchange would also receive every task routed to `gpu`.
        task_queues=[Queue(name, Exchange(name, type="direct"), routing_key=name) for name in (GPU_QUEUE, SERVE_QUEUE)],
        task_default_queue=GPU_QUEUE,
        task_routes=TASK_ROUTES,
        task_time_limit=settings.job_time_limit_s,
        task_annotations={"portllm.answer_question": {"time_limit": settings.answer_time_limit_s}},
        worker_send_task_events=True,  # Flower
        task_send_sent_event=True,
        # A child process imports torch at start to log its device: give it time to report in.
        worker_proc_alive_timeout=120,
    )
    return app


app = make_app(WorkerSettings())

import workers.lifecycle  # noqa: E402,F401  (connects the worker signals)
