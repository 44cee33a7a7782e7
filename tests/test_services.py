"""The tests' own PostgreSQL and Redis (tests/fixtures/services.py)."""
from __future__ import annotations

import pytest
import redis
import sqlalchemy as sa

from tests.fixtures import services


def test_each_xdist_worker_has_its_own_block_of_redis_db_numbers(redis_server, monkeypatch):
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")  # db 3 is no other test's, on gw0 or gw1
    first = services.redis_db_url(redis_server, 3)
    redis.Redis.from_url(first).set("left-over", "1")
    assert services.redis_db_url(redis_server, 3) == first
    assert redis.Redis.from_url(first).dbsize() == 0  # emptied for the next user
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    assert first.endswith("/3") and services.redis_db_url(redis_server, 3).endswith("/19")
    with pytest.raises(ValueError):
        services.redis_db_url(redis_server, 16)


def test_a_fresh_postgres_database_is_empty_and_dropped_after(database_url):
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            assert sa.inspect(conn).get_table_names() == []
    finally:
        engine.dispose()


def test_a_missing_server_is_skipped_with_the_package_to_install(monkeypatch):
    monkeypatch.delenv(services.DATABASE_ENV, raising=False)
    monkeypatch.delenv("PORTLLM_TEST_REQUIRE_SERVICES", raising=False)
    with pytest.raises(pytest.skip.Exception, match="Debian package `postgresql`"):
        services.service_url(services.DATABASE_ENV)
    monkeypatch.setenv("PORTLLM_TEST_REQUIRE_SERVICES", "1")
    with pytest.raises(pytest.fail.Exception, match="Debian package `postgresql`"):
        services.service_url(services.DATABASE_ENV)
