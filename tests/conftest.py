"""Fixtures shared by every package's tests."""
from __future__ import annotations

import os

import pytest

from tests.fixtures.services import drop_postgres_db, fresh_postgres_url, skip_or_fail

# Nothing in the test suite may reach a model hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = [
    "tests.fixtures.registry_db",
    "tests.fixtures.demo_world",
    "tests.fixtures.fake_slack",
]


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    root = tmp_path / "portllm-data"
    root.mkdir()
    monkeypatch.setenv("PORTLLM_DATA_DIR", str(root))
    return root


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path, monkeypatch):
    """A fresh, empty database: SQLite always, PostgreSQL when PORTLLM_TEST_DATABASE_URL is set."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'registry.db'}"
        monkeypatch.setenv("PORTLLM_DATABASE_URL", url)
        yield url
        return
    admin_url = os.environ.get("PORTLLM_TEST_DATABASE_URL")
    if not admin_url:
        skip_or_fail("PostgreSQL not configured: set PORTLLM_TEST_DATABASE_URL")
    try:
        url = fresh_postgres_url(admin_url)
    except Exception as exc:  # server down or unreachable
        skip_or_fail(f"PostgreSQL at PORTLLM_TEST_DATABASE_URL unreachable: {exc}")
    monkeypatch.setenv("PORTLLM_DATABASE_URL", url)
    yield url
    drop_postgres_db(admin_url, url)


@pytest.fixture(scope="session")
def redis_url():
    url = os.environ.get("PORTLLM_TEST_REDIS_URL")
    if not url:
        skip_or_fail("Redis not configured: set PORTLLM_TEST_REDIS_URL")
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except Exception as exc:
        skip_or_fail(f"Redis at PORTLLM_TEST_REDIS_URL unreachable: {exc}")
    return url
