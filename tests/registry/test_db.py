from __future__ import annotations

from datetime import datetime, timezone

import pytest
import sqlalchemy as sa

from registry.db import make_engine, session_scope
from registry.models import AuditEvent
from portllm_core.settings import Settings


def test_default_database_is_sqlite_in_the_data_dir(data_dir, monkeypatch):
    monkeypatch.delenv("PORTLLM_DATABASE_URL", raising=False)
    settings = Settings()
    assert settings.data_dir == data_dir
    assert settings.resolved_database_url() == f"sqlite:///{data_dir / 'portllm.db'}"
    assert settings.artifacts_dir == data_dir / "artifacts"


def test_database_url_from_env(monkeypatch):
    monkeypatch.setenv("PORTLLM_DATABASE_URL", "postgresql+psycopg://u@h/db")
    assert Settings().resolved_database_url() == "postgresql+psycopg://u@h/db"


def test_sqlite_engine_uses_wal_and_foreign_keys(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'nested' / 'r.db'}")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        engine.dispose()


def test_postgresql_engine_pre_pings():
    engine = make_engine("postgresql+psycopg://u@127.0.0.1:1/none")
    assert engine.pool._pre_ping


def test_foreign_keys_are_enforced(session_factory):
    with pytest.raises(sa.exc.IntegrityError):
        with session_scope(session_factory) as s:
            s.add(AuditEvent(actor="x", action="x", entity_type="x", entity_id=1, assistant_id=999))


def test_timestamps_read_back_timezone_aware(session_factory):
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    with session_scope(session_factory) as s:
        s.add(AuditEvent(at=at, actor="x", action="x", entity_type="x", entity_id=1))
    with session_scope(session_factory) as s:
        event = s.scalar(sa.select(AuditEvent))
        assert event.at == at and event.at.tzinfo is not None


def test_the_database_itself_allows_one_live_rollout_per_channel(session_factory):
    from registry import services as sv
    from registry.models import Rollout
    from tests.registry.helpers import finished_run, seed

    with session_scope(session_factory) as s:
        seed(s)
        runs = [finished_run(s, "v2", channel=channel) for channel in ("support", "support", "sales")]
        assistant_id = runs[0].assistant_id

    def add(run, state):
        with session_scope(session_factory) as s:
            s.add(Rollout(run_id=run.id, assistant_id=assistant_id, channel=run.channel, state=state, verdict="pass"))

    add(runs[0], "live")
    with pytest.raises(sa.exc.IntegrityError):
        add(runs[1], "live")  # bypassing the services does not get around the index
    add(runs[1], "superseded")
    add(runs[2], "live")  # another channel has its own live rollout
    with session_scope(session_factory) as s:
        assert sv.live_rollout(s, "support-assistant", "support").run_id == runs[0].id


def test_registry_imports_nothing_of_ours_and_no_torch():
    import subprocess
    import sys

    code = (
        "import sys, registry.services, registry.cli, registry.artifacts;"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'transformers', 'bot', 'workers', 'portllm_engine', 'celery', 'slack_bolt')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
