"""A database outage under the followers: `portllm console` following a run and `portllm run wait`
say that the registry is unreachable and keep following within their wait, on a PostgreSQL
server of the test's own (stopped and started again; the shared one is never touched)."""
from __future__ import annotations

import io
import threading
import time

from rich.console import Console

from tests.fixtures.own_postgres import OwnPostgres

OUTAGE_S = 3.0


def _outage_then_finish(server: OwnPostgres, factory, run_id: int) -> threading.Thread:
    """In the background: the database goes away for a while, comes back, and the run finishes."""
    from registry import services as sv
    from registry.db import session_scope

    def play() -> None:
        time.sleep(0.5)
        server.stop()
        time.sleep(OUTAGE_S)
        server.start()
        time.sleep(0.5)
        with session_scope(factory) as s:
            sv.claim_run(s, run_id, "worker-1")
        with session_scope(factory) as s:
            sv.finish_run(s, run_id, status="succeeded", compat_report={"compatible": True, "errors": []})

    thread = threading.Thread(target=play, daemon=True)
    thread.start()
    return thread


def _queued_run(factory, key: str) -> int:
    from registry import services as sv
    from registry.db import session_scope
    from tests.registry.helpers import ASSISTANT

    with session_scope(factory) as s:
        run, _ = sv.request_run(s, assistant=ASSISTANT, version="v2", idempotency_key=key, requested_by="dave",
                                channel="#support")
        return run.id


def test_followers_say_the_registry_is_unreachable_and_keep_following(own_postgres, data_dir, monkeypatch):
    """Three followers, one outage each: the console, `run wait` and `release show --wait`."""
    from portllm_cli.console import ConsoleSession, run_console
    from portllm_core.settings import Settings
    from registry.cli import upgrade
    from registry.db import make_session_factory, session_scope
    from registry import services as sv
    from tests.registry.helpers import live, seed

    upgrade(own_postgres.url)
    factory = make_session_factory(own_postgres.url)
    with session_scope(factory) as s:
        seed(s)
        live(s, "v2", channel="#support")

    # The console, following a run it was told about.
    run_id = _queued_run(factory, "console")
    out = Console(file=io.StringIO(), width=200)
    chat = ConsoleSession(channel="#support", user="alice", settings=Settings(data_dir=data_dir),
                          session_factory=factory, enqueue=lambda *a, **k: None, out=out, poll_s=0.2, wait_s=60)
    background = _outage_then_finish(own_postgres, factory, run_id)
    chat.follow_run(run_id)
    background.join(30)
    said = out.file.getvalue()
    assert f"run #{run_id}: the registry is unreachable (" in said and "still following it" in said
    assert f"run #{run_id}: the registry is back after" in said
    assert f"run #{run_id} succeeded" in said

    # `portllm run wait`, the same.
    from typer.testing import CliRunner

    from portllm_cli.main import app

    monkeypatch.setenv("PORTLLM_DATABASE_URL", own_postgres.url)
    run_id = _queued_run(factory, "wait")
    background = _outage_then_finish(own_postgres, factory, run_id)
    result = CliRunner().invoke(app, ["run", "wait", str(run_id), "--timeout", "60", "--interval", "0.2"])
    background.join(30)
    assert result.exit_code == 0, result.output
    assert f"Run #{run_id}: the registry is unreachable (" in result.output
    assert f"Run #{run_id}: the registry is back after" in result.output
    assert f"Run #{run_id} succeeded" in result.output

    # `portllm release show --wait`, following the verdicts of a release.
    with session_scope(factory) as s:
        base = sv.register_base(s, family="demo", version="v4", source_ref="demo/v4", fingerprint="4" * 64,
                                signature={}, tokenizer_fingerprint="tok" * 8, actor="eng")
        _, (released,) = sv.open_release(s, base, actor="eng")
        run_id = released.id
    background = _outage_then_finish(own_postgres, factory, run_id)
    result = CliRunner().invoke(app, ["release", "show", "demo", "v4", "--wait", "60"])
    background.join(30)
    assert result.exit_code == 0, result.output
    assert "release demo v4: the registry is unreachable (" in result.output
    assert "release demo v4: the registry is back after" in result.output
    assert "succeeded" in result.output.split("the registry is back after")[-1]

    # Without a wait, a command says the registry is unreachable in one line, not a traceback; the
    # console refuses a command it cannot run and goes on with the next.
    own_postgres.stop()
    result = CliRunner().invoke(app, ["release", "show", "demo", "v4"])
    assert result.exit_code == 1
    assert result.output.startswith("error: the registry database is unreachable (")
    piped = io.StringIO()
    code = run_console("#support", "alice", stdin=io.StringIO("status\nhelp\n"), out=piped,
                       settings=Settings(data_dir=data_dir), session_factory=factory,
                       enqueue=lambda *a, **k: None, poll_s=0.1, wait_s=5)
    assert code == 1
    assert "The registry is unreachable; nothing was requested." in piped.getvalue()
    assert "PortLLM commands" in piped.getvalue()
    own_postgres.start()
