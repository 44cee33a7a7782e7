"""The Celery app's configuration and the worker entry point, without starting a worker."""
from __future__ import annotations

import subprocess
import sys

import pytest

from portllm_core.tasks import broker_transport_options
from workers.celery_app import make_app
from workers.main import start_worker
from portllm_core.settings import Settings


def test_the_default_broker_is_a_sqlite_queue_in_the_data_dir(data_dir):
    settings = Settings()
    assert settings.resolved_broker_url() == f"sqla+sqlite:///{data_dir / 'queue.db'}"
    assert Settings(broker_url="redis://h:6379/0").resolved_broker_url() == "redis://h:6379/0"


def test_app_is_json_only_acks_late_and_routes_by_queue(data_dir):
    conf = make_app(Settings()).conf
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.worker_prefetch_multiplier == 1
    assert {q.name for q in conf.task_queues} == {"gpu", "serve"}
    assert conf.task_routes["portllm.transplant_and_evaluate"] == {"queue": "gpu"}
    assert conf.task_routes["portllm.answer_question"] == {"queue": "serve"}


def test_transport_options_fit_each_broker():
    # Redis redelivers unacked tasks after the visibility timeout: it must outlast the longest job.
    assert broker_transport_options("redis://h/0", 43200) == {"visibility_timeout": 43200}
    # kombu passes SQLAlchemy transport options to create_engine: no visibility_timeout there.
    assert broker_transport_options("sqla+sqlite:////tmp/q.db", 43200) == {"connect_args": {"timeout": 30}}


def test_the_bot_and_the_workers_agree_on_task_names_and_queues(data_dir):
    from portllm_core.tasks import TASK_QUEUES

    app = make_app(Settings())
    import workers.tasks  # noqa: F401  (registers the tasks on workers.celery_app.app)
    from workers.celery_app import app as registered

    for name, queue in TASK_QUEUES.items():
        assert name in registered.tasks
        assert app.conf.task_routes[name] == {"queue": queue}
    # The sweeper re-sends a stuck run of every kind with the task the bot sent it with.
    from portllm_core.tasks import TASK_FOR_RUN_KIND
    from registry.models import RunKind

    assert set(TASK_FOR_RUN_KIND) == set(RunKind)
    assert all(name in TASK_QUEUES and name in registered.tasks for name in TASK_FOR_RUN_KIND.values())


def test_importing_the_app_and_tasks_leaves_torch_out():
    code = "import sys, workers.celery_app, workers.tasks; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_an_unknown_queue_is_refused_in_one_line():
    with pytest.raises(SystemExit, match="Unknown queue cpu: use gpu and/or serve"):
        start_worker(["cpu"])


def test_each_queue_has_its_own_exchange_so_a_task_lands_in_one_queue(data_dir):
    queues = make_app(Settings()).conf.task_queues
    assert {(q.name, q.exchange.name, q.routing_key) for q in queues} == {("gpu", "gpu", "gpu"), ("serve", "serve", "serve")}
