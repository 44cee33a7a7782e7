from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import typer
from typer.testing import CliRunner

from portllm_engine.cli import demo_build
from portllm_engine.compat import check
from portllm_engine.demo import build_demo_world, load_demo_world
from portllm_engine.drift import measure_drift
from portllm_engine.kpi import evaluate, load_suite
from portllm_engine.models import load_base
from portllm_engine.patches import read_manifest
from portllm_engine.transplant import transplant


def test_a_world_from_another_recipe_is_not_reused(tmp_path):
    (tmp_path / "world.json").write_text(json.dumps({"recipe_hash": "old"}))
    assert load_demo_world(tmp_path) is None
    assert load_demo_world(tmp_path / "missing") is None


def test_two_builders_at_once_build_the_world_once(tmp_path, monkeypatch):
    """Two xdist workers on a cold cache: one builds, the other waits on the lock and reuses its world."""
    import portllm_engine.demo as demo

    builds = []

    def build(out, report):
        builds.append(out)
        time.sleep(0.5)  # the second builder arrives meanwhile
        meta = {"recipe_hash": demo.recipe_hash(), "bases": {}, "patch": "p", "train_data": "t", "suite": "s",
                "suite_mc": "m", "questions": [], "fresh_patches": {}}
        (out / "world.json").write_text(json.dumps(meta))
        return meta

    monkeypatch.setattr(demo, "_build", build)
    with ThreadPoolExecutor(2) as pool:  # flock excludes two open files of one process too
        first, second = pool.map(lambda _: build_demo_world(tmp_path / "world"), range(2))
    assert len(builds) == 1 and first == second


@pytest.mark.slow
def test_demo_world_kpis(demo_world):
    suite = load_suite(demo_world.suite)
    suite_mc = load_suite(demo_world.suite_mc)
    v2, tokenizer = load_base(demo_world.bases["v2"], device="cpu")
    v2_alone = evaluate(v2, tokenizer, suite)
    v2_alone_mc = evaluate(v2, tokenizer, suite_mc)
    v2_patched, tokenizer = transplant(demo_world.patch, demo_world.bases["v2"], device="cpu")
    v2_with_patch = evaluate(v2_patched, tokenizer, suite)
    v2_with_patch_mc = evaluate(v2_patched, tokenizer, suite_mc)
    v1_patched, tokenizer = transplant(demo_world.patch, demo_world.bases["v1"], device="cpu")
    v1_with_patch = evaluate(v1_patched, tokenizer, suite)

    assert v2_with_patch.accuracy - v2_alone.accuracy >= 0.40
    assert v1_with_patch.accuracy >= 0.85
    assert v2_with_patch_mc.metrics["acc"] > v2_alone_mc.metrics["acc"]
    drift = measure_drift(demo_world.bases["v1"], demo_world.bases["v2"], read_manifest(demo_world.patch).target_modules)
    assert 0.05 <= drift.overall <= 0.35
    report = check(demo_world.patch, demo_world.bases["other"])
    assert not report.compatible
    assert "shape_mismatch" in {e["code"] for e in report.errors}


@pytest.mark.slow
def test_demo_world_is_reused_and_complete(demo_world):
    again = build_demo_world(demo_world.root)
    assert again == demo_world
    assert set(again.bases) == {"v1", "v2", "v3", "other"}
    assert again.questions and again.train_data.is_file() and again.suite_mc.is_file()
    rows = [json.loads(line) for line in again.train_data.read_text().splitlines()]
    assert all(set(r) == {"prompt", "completion"} for r in rows)
    app = typer.Typer()
    app.command()(demo_build)
    result = CliRunner().invoke(app, ["--out", str(demo_world.root)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(demo_world.root)
