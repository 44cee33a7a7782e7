"""Fixtures for worker integration tests: a registry with the demo world, and a broker.

The `sqlite` stack is the embedded default (SQLite queue, SQLite registry); the `redis` stack
is production's shape: Redis, and PostgreSQL too when PORTLLM_TEST_DATABASE_URL is set.
"""
from __future__ import annotations

import os

from tests.fixtures.services import drop_postgres_db, fresh_postgres_url
from tests.workers.harness import Stack
from tests.workers.seed import seed_demo


def broker_for(request, data_dir, redis_db: int) -> str:
    """The embedded SQLite queue, or Redis (its own db number per module and xdist worker, emptied first)."""
    if request.param == "sqlite":
        return f"sqla+sqlite:///{data_dir / 'queue.db'}"
    return request.getfixturevalue("redis_db")(redis_db)


def stack_for(request, tmp_path_factory, world, redis_db: int):
    """Yields a Stack with the demo world registered; drops what it created afterwards."""
    from registry.cli import upgrade
    from registry.db import make_session_factory

    data_dir = tmp_path_factory.mktemp(f"workers-{request.param}")
    broker_url = broker_for(request, data_dir, redis_db)
    admin_url = os.environ.get("PORTLLM_TEST_DATABASE_URL")
    on_postgres = request.param == "redis" and bool(admin_url)
    database_url = fresh_postgres_url(admin_url) if on_postgres else f"sqlite:///{data_dir / 'portllm.db'}"
    upgrade(database_url)
    stack = Stack(data_dir, database_url, broker_url, make_session_factory(database_url))
    stack.ids = seed_demo(stack.session_factory, data_dir / "artifacts", world)
    yield stack
    stack.session_factory.kw["bind"].dispose()
    if on_postgres:
        drop_postgres_db(admin_url, database_url)
