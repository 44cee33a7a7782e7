"""Fixtures shared by every package's tests."""
from __future__ import annotations

import os

import pytest

from tests.fixtures.services import (
    DATABASE_ENV,
    REDIS_ENV,
    drop_postgres_db,
    fresh_postgres_url,
    redis_db_url,
    service_url,
    skip_or_fail,
    start_services,
)

# Nothing in the test suite may reach a model hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = [
    "tests.fixtures.registry_db",
    "tests.fixtures.demo_world",
    "tests.fixtures.fake_slack",
    "tests.fixtures.own_postgres",
]


def pytest_configure(config):
    """The controller (or the only process) starts PostgreSQL and Redis before xdist spawns workers."""
    if hasattr(config, "workerinput"):
        return
    config._portllm_services = start_services()


def pytest_unconfigure(config):
    services = getattr(config, "_portllm_services", None)
    if services is not None:
        services.stop()


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    root = tmp_path / "portllm-data"
    root.mkdir()
    monkeypatch.setenv("PORTLLM_DATA_DIR", str(root))
    return root


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path, monkeypatch):
    """A fresh, empty database: SQLite, and PostgreSQL (the session's own, or PORTLLM_TEST_DATABASE_URL)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'registry.db'}"
        monkeypatch.setenv("PORTLLM_DATABASE_URL", url)
        yield url
        return
    admin_url = service_url(DATABASE_ENV)
    try:
        url = fresh_postgres_url(admin_url)
    except Exception as exc:  # server down or unreachable
        skip_or_fail(f"PostgreSQL at {DATABASE_ENV} unreachable: {exc}")
    monkeypatch.setenv("PORTLLM_DATABASE_URL", url)
    yield url
    drop_postgres_db(admin_url, url)


@pytest.fixture(scope="session")
def redis_server():
    """The Redis server's URL (the session's own, or PORTLLM_TEST_REDIS_URL), checked to answer."""
    import redis

    url = service_url(REDIS_ENV)
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except Exception as exc:
        skip_or_fail(f"Redis at {REDIS_ENV} unreachable: {exc}")
    return url


@pytest.fixture(scope="session")
def redis_db(redis_server):
    """`redis_db(n)`: the URL of this xdist worker's db number n (0..15), emptied."""
    return lambda db: redis_db_url(redis_server, db)


@pytest.fixture(scope="session")
def redis_url(redis_db):
    """This xdist worker's Redis db 0, emptied at the start of the session."""
    return redis_db(0)
