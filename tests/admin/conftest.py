"""The admin CLI driven as an operator would: a root app with `register`, a tiny world, a registry."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer
from click.testing import Result
from typer.testing import CliRunner

from tests.admin.tiny_world import TinyWorld, build_tiny_world


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> TinyWorld:
    return build_tiny_world(tmp_path_factory.mktemp("tiny-world"))


@dataclass
class Cli:
    """`cli("base", "list")` runs `portllm base list` in-process against the test's registry."""

    app: typer.Typer
    data_dir: Path
    database_url: str

    def __call__(self, *args: object, input: str | None = None) -> Result:
        return CliRunner().invoke(self.app, [str(a) for a in args], input=input)

    def ok(self, *args: object) -> Result:
        result = self(*args)
        assert result.exit_code == 0, f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
        return result

    def json(self, *args: object):
        return json.loads(self.ok(*args, "--json").stdout)

    def snapshot(self) -> tuple[dict[str, int], list[str]]:
        """Row counts of every registry table; every artifact and file in the store (and any temp dir)."""
        import sqlalchemy as sa

        from registry.models import Base

        engine = sa.create_engine(self.database_url)
        try:
            with engine.connect() as conn:
                counts = {
                    name: conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
                    for name, table in Base.metadata.tables.items()
                }
        finally:
            engine.dispose()
        store = self.data_dir / "artifacts"
        # Empty fan-out folders (sha256/ab) are not artifacts; anything deeper, or any file, is.
        paths = [p.relative_to(store) for p in store.rglob("*")] if store.exists() else []
        files = sorted(str(p) for p in paths if len(p.parts) >= 3 or (store / p).is_file())
        return counts, files


@pytest.fixture
def cli(data_dir, migrated_url, monkeypatch) -> Cli:
    from portllm_cli.admin import register

    monkeypatch.setenv("PORTLLM_USER", "ops")
    app = typer.Typer(pretty_exceptions_enable=False)
    register(app)
    return Cli(app, data_dir, migrated_url)


@pytest.fixture
def registered(cli: Cli, tiny_world: TinyWorld) -> Cli:
    """Bases v1, v2 and other (another architecture, forced in) of family `tiny`, and an assistant `support`
    whose gate any run passes."""
    cli.ok("base", "add", "tiny", "v1", tiny_world.v1)
    cli.ok("base", "add", "tiny", "v2", tiny_world.v2)
    cli.ok("base", "add", "tiny", "other", tiny_world.other, "--force")  # another architecture, on purpose
    cli.ok(
        "assistant", "add", "support", "--family", "tiny", "--suite", tiny_world.suite,
        "--min-accuracy", "0", "--max-regression", "1", "--approver", "alice", "--admin", "bob",
    )
    return cli


@pytest.fixture
def worker(registered: Cli, session_factory, monkeypatch):
    """A real gpu-queue worker on the embedded SQLite queue, sharing the test's registry and store."""
    from tests.workers.harness import Stack, WorkerProcess

    broker_url = f"sqla+sqlite:///{registered.data_dir / 'queue.db'}"
    monkeypatch.setenv("PORTLLM_BROKER_URL", broker_url)
    stack = Stack(registered.data_dir, registered.database_url, broker_url, session_factory)
    worker = WorkerProcess(stack, "admin-flow", queues="gpu").ready()
    yield worker
    worker.stop()
