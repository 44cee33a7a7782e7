"""`portllm demo` end to end, as a newcomer runs it, on the cached demo world."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from sqlalchemy import select

pytestmark = pytest.mark.slow


DEMO_REDIS_DB = 15  # a database of its own: other tests leave unconsumed tasks in theirs


@pytest.fixture
def demo_env(data_dir):
    env = dict(os.environ, PORTLLM_DATA_DIR=str(data_dir))
    for name in ("PORTLLM_DATABASE_URL", "PORTLLM_BROKER_URL"):  # the flags choose them
        env.pop(name, None)
    return env


@pytest.fixture
def production_flags(request, database_url):
    """SQLite: the embedded defaults (SQLite queue too). PostgreSQL: `--database-url` and `--redis`."""
    if database_url.startswith("sqlite"):
        return ["--database-url", database_url]
    broker = request.getfixturevalue("redis_db")(DEMO_REDIS_DB)
    return ["--database-url", database_url, "--redis", broker]


def run_demo(env, demo_world, *extra):
    return subprocess.run(
        [sys.executable, "-m", "portllm_cli.main", "demo", "--world", str(demo_world.root), *extra],
        env=env, capture_output=True, text=True, timeout=900,
    )


def test_demo_plays_the_whole_story(demo_env, production_flags, demo_world, data_dir, database_url):
    from portllm_core.views import lineage_view
    from registry import models, services
    from registry.db import make_session_factory

    result = run_demo(demo_env, demo_world, *production_flags)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert (data_dir / "demo-kpi.png").stat().st_size > 1000
    assert "KPI chart:" in result.stdout

    factory = make_session_factory(database_url)
    with factory() as s:
        runs = {(r.target_base.version, r.kind): r for r in s.scalars(select(models.Run).order_by(models.Run.id))}
        v1, v2, other = runs["v1", "transplant"], runs["v2", "transplant"], runs["other", "transplant"]
        v3, retuned = runs["v3", "transplant"], runs["v3", "retune"]
        # v2 went live on an approval, then the rollback put the v1 rollout back.
        assert v2.rollout.decided_by == "console:alice" and v2.rollout.live_since is not None
        assert v2.rollout.state == models.RolloutState.ROLLED_BACK
        # v3's release queued its run by itself; the gate did not pass it, the story said which
        # verdict it was and took the re-tune fallback, which went live.
        assert v3.requested_by == services.RELEASE_ACTOR and v3.release_id is not None
        assert v3.status == "succeeded" and v3.rollout.verdict in ("fail", "inconclusive")
        assert f"The gate said {v3.rollout.verdict}" in result.stdout
        # v1 was live in #support again: the v3 candidate was compared with it on the same items.
        assert sorted(e.subject for e in v3.evaluations) == ["candidate", "live", "target_base"]
        assert v3.gate_report["stages"][0]["test"] == "paired"
        assert services.live_rollout(s, "support-assistant", "#support").run_id == retuned.id
        # both answers were rated, each for the rollout that gave it.
        assert services.satisfaction(s, [v2.rollout.id, retuned.rollout.id]) == {
            v2.rollout.id: services.Satisfaction(1, 1, 1.0), retuned.rollout.id: services.Satisfaction(1, 1, 1.0)}
        # the unrelated model was refused before anything was loaded onto it.
        assert other.status == "failed" and other.compat_report["errors"] and not other.evaluations
        # the lineage lists every run of the story.
        lineage = lineage_view(s, services.get_assistant(s, "support-assistant")).to_json()
        listed = {r["id"] for p in lineage["patches"] for r in p["runs"]}
        assert {v1.id, v2.id, v3.id, retuned.id, other.id} <= listed
        # the v2 candidate beat v2 alone by a wide margin (the PortLLM result, at demo scale).
        acc = {e.subject: e.accuracy for e in v2.evaluations}
        assert acc["candidate"] - acc["target_base"] >= 0.4

    if not database_url.startswith("sqlite"):
        return
    # A second `make demo` on the same data dir (the embedded default, what a newcomer runs) plays
    # the story again from the state it controls: its own assistant and channel, the world reused.
    again = run_demo(demo_env, demo_world, *production_flags)
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    assert "support-assistant-2 in #support-2" in again.stdout
    with factory() as s:
        second = services.get_assistant(s, "support-assistant-2")
        runs = {(r.target_base.version, r.kind): r for r in s.scalars(
            select(models.Run).where(models.Run.assistant_id == second.id).order_by(models.Run.id))}
        assert runs["v3", "transplant"].rollout.verdict in ("fail", "inconclusive")
        assert services.live_rollout(s, "support-assistant-2", "#support-2").run_id == runs["v3", "retune"].id
        # the first story's assistant is where it left it
        assert services.live_rollout(s, "support-assistant", "#support").run_id == retuned.id


def test_registration_twice_registers_nothing_twice(data_dir, demo_world, monkeypatch):
    """A second `portllm demo` on the same data dir reuses what the first one registered."""
    monkeypatch.delenv("PORTLLM_DATABASE_URL", raising=False)  # the embedded default in the data dir
    from rich.console import Console

    from portllm_cli.demo import ASSISTANT, CHANNEL, MODELS, Cast, _register
    from portllm_core.workspace import Workspace
    from registry import models
    from registry.cli import upgrade
    from registry.db import make_session_factory

    url = f"sqlite:///{data_dir / 'portllm.db'}"
    upgrade(url)
    first, second = Console(record=True, width=200), Console(record=True, width=200)
    ws = Workspace()
    _register(ws, demo_world, Cast(ASSISTANT, CHANNEL, MODELS["tiny"]), first)
    _register(ws, demo_world, Cast(ASSISTANT, CHANNEL, MODELS["tiny"]), second)
    ws.close()
    assert "Base demo v2 registered" in first.export_text()
    assert "Already registered" in second.export_text() and "registered from" not in second.export_text()
    with make_session_factory(url)() as s:
        assert len(s.scalars(select(models.BaseModel)).all()) == 3  # v3 is released during the story
        assert len(s.scalars(select(models.Assistant)).all()) == 1
        assert len(s.scalars(select(models.Patch)).all()) == 1


def test_the_kpi_chart_title_and_legend_fit_the_figure():
    from portllm_cli.demo import _chart

    bars = {v: {"base alone": 0.2, "transplanted patch": 0.8, "patch trained fresh": 0.9, "re-tuned patch": 0.95}
            for v in ("v1", "v2", "v3")}
    fig = _chart(bars, "support-assistant-12", 0.6)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for part in (fig.axes[0].title, fig.axes[0].get_legend()):
        box = part.get_window_extent(renderer)
        assert 0 <= box.x0 and box.x1 <= fig.bbox.x1 and 0 <= box.y0 and box.y1 <= fig.bbox.y1
