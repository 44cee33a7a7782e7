"""Fixtures shared by every package's tests."""
from __future__ import annotations

import os
import uuid

import pytest

from tests.fixtures.services import skip_or_fail

# Nothing in the test suite may reach a model hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = [
    "tests.fixtures.registry_db",
    "tests.fixtures.demo_world",
]


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    root = tmp_path / "portllm-data"
    root.mkdir()
    monkeypatch.setenv("PORTLLM_DATA_DIR", str(root))
    return root


def _fresh_postgres_url(admin_url: str) -> str:
    """Create an empty database on the server of `admin_url` and return its URL."""
    import sqlalchemy as sa

    name = f"portllm_test_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    return sa.engine.make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def _drop_postgres_db(admin_url: str, url: str) -> None:
    import sqlalchemy as sa

    name = sa.engine.make_url(url).database
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()


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
        url = _fresh_postgres_url(admin_url)
    except Exception as exc:  # server down or unreachable
        skip_or_fail(f"PostgreSQL at PORTLLM_TEST_DATABASE_URL unreachable: {exc}")
    monkeypatch.setenv("PORTLLM_DATABASE_URL", url)
    yield url
    _drop_postgres_db(admin_url, url)


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
