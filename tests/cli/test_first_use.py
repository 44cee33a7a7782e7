"""A new data dir needs no set-up: every entry point brings the embedded database to the newest schema on
first use, processes starting at once included; a configured database is never migrated silently."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import create_engine, inspect

from portllm_core.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def embedded_env(data_dir: Path) -> dict[str, str]:
    """Nothing configured but the data dir: the embedded defaults."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTLLM_")}
    return {**env, "PORTLLM_DATA_DIR": str(data_dir), "PYTHONPATH": str(REPO)}


def revision(data_dir: Path) -> str | None:
    from registry.cli import current

    return current(f"sqlite:///{data_dir / 'portllm.db'}")


def test_commands_work_on_a_new_data_dir_without_db_upgrade(tmp_path):
    """Issue 32: `base add` on a new data dir said to run `portllm db upgrade` first."""
    from registry.cli import head

    data = tmp_path / "new"
    listed = subprocess.run([sys.executable, "-m", "portllm_cli.main", "base", "list"], cwd=REPO,
                            env=embedded_env(data), capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.strip() == "No base registered yet." and listed.stderr == ""
    assert revision(data) == head()


# Each process imports everything first, then all open the registry at the same instant.
AT_ONCE = """
import sys, time
from portllm_core.workspace import Workspace
from registry import services
ws = Workspace()
time.sleep(max(0.0, float(sys.argv[1]) - time.time()))
with ws.session() as s:
    print(len(services.list_bases(s)))
"""


def test_processes_starting_at_once_on_a_new_data_dir_take_turns(tmp_path):
    from registry.cli import head

    data = tmp_path / "new"
    start = str(time.time() + 8)  # after every process has imported what it needs
    procs = [subprocess.Popen([sys.executable, "-c", AT_ONCE, start], cwd=REPO, env=embedded_env(data),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], [err for _, err in results]
    assert [out.strip() for out, _ in results] == ["0", "0", "0"]
    assert revision(data) == head()


def test_the_console_and_the_slack_app_open_a_new_data_dir_ready(tmp_path, fake_slack):
    import io

    from bot.slack_app import build_app
    from portllm_cli.console import run_console

    console_dir, slack_dir = tmp_path / "console", tmp_path / "slack"
    out = io.StringIO()
    code = run_console("#support", "alice", stdin=io.StringIO("bases\n"), out=out,
                       settings=Settings(data_dir=console_dir, database_url=None), enqueue=lambda *a: None)
    assert code == 0, out.getvalue()
    assert "has no tables" not in out.getvalue()
    build_app(Settings(data_dir=slack_dir, database_url=None, slack_bot_token="xoxb-secret-token",
                       slack_signing_secret="signing-secret-value", slack_api_url=fake_slack.url),
              enqueue=lambda *a: None)
    engine = create_engine(f"sqlite:///{slack_dir / 'portllm.db'}")
    try:
        assert {"base_models", "runs", "alembic_version"} <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_a_configured_database_is_not_migrated_silently(tmp_path):
    """PostgreSQL in production is migrated by its operator (`portllm db upgrade`, compose's `migrate`)."""
    from portllm_core.workspace import open_registry

    url = f"sqlite:///{tmp_path / 'configured.db'}"
    factory = open_registry(Settings(data_dir=tmp_path / "data", database_url=url))
    try:
        assert inspect(factory.kw["bind"]).get_table_names() == []
    finally:
        factory.kw["bind"].dispose()
