from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from portllm_engine.cli import engine_app


@pytest.fixture
def run():
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(engine_app, [str(a) for a in args])

    return invoke


def one_line_error(result) -> str:
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_compat_exit_codes_and_json(run, tiny):
    ok = run("compat", "--patch", tiny.patch, "--base", tiny.drifted, "--json")
    assert ok.exit_code == 0
    assert json.loads(ok.stdout) == {"compatible": True, "errors": [], "warnings": []}
    bad = run("compat", "--patch", tiny.patch, "--base", tiny.other, "--json")
    assert bad.exit_code == 3
    report = json.loads(bad.stdout)
    assert report["compatible"] is False and report["errors"][0]["code"]
    human = run("compat", "--patch", tiny.patch, "--base", tiny.other)
    assert human.exit_code == 3
    # The reason first, on one line; a few short lines after it, not one per module.
    lines = human.stdout.splitlines()
    assert lines[0].startswith("NOT compatible: the base's architecture is not the one the patch was trained on")
    assert len(lines) <= 4 and lines[-1] == f"  (--json lists all {len(report['errors'])} problems)"


def test_drift_json(run, tiny):
    result = run("drift", "--from", tiny.base, "--to", tiny.drifted, "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert set(data) == {"overall", "modules"} and data["modules"]["model.layers.0.self_attn.q_proj"] == pytest.approx(0.1)


def test_transplant_writes_a_model(run, tiny, tmp_path):
    result = run("transplant", "--patch", tiny.patch, "--base", tiny.base, "--out", tmp_path / "merged", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    refused = run("transplant", "--patch", tiny.patch, "--base", tiny.other, "--out", tmp_path / "x", "--device", "cpu")
    assert refused.exit_code == 3
    assert "does not fit other: the base's architecture is not the one" in one_line_error(refused)
    again = run("transplant", "--patch", tiny.patch, "--base", tiny.base, "--out", tmp_path / "merged", "--device", "cpu")
    assert again.exit_code == 1
    assert "not an empty folder: pass a new --out folder" in one_line_error(again)


def test_eval_json(run, tiny, tmp_path):
    suite = tmp_path / "suite.jsonl"
    rows = [
        {"kind": "multiple_choice", "context": "The quick brown", "choices": [" fox", " dog"], "gold": 0},
        {"kind": "multiple_choice", "context": "Altavia makes", "choices": [" docks", " rivers"], "gold": 0},
    ]
    suite.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = run("eval", "--model", tiny.base, "--patch", tiny.patch, "--suite", suite, "--batch-size", 1, "--json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) == {"n", "accuracy", "ci95", "metrics", "prompt_format", "items"}
    assert data["n"] == 2 and set(data["metrics"]) == {"acc", "acc_norm"} and len(data["ci95"]) == 2
    # Each item's result, in suite order: what a script compares item by item with another run.
    assert [item["index"] for item in data["items"]] == [0, 1]
    assert all(isinstance(item["correct"], bool) for item in data["items"])
    assert sum(item["correct"] for item in data["items"]) / 2 == pytest.approx(data["accuracy"])


@pytest.mark.parametrize(
    ("suite_text", "needle"),
    [
        ('{"kind": "generate", "prompt": "a", "target": "b"}\n{oops\n', "line 2"),
        ("", "no items"),
        ('{"kind": "poem", "prompt": "a"}\n', "kind must be one of"),
    ],
)
def test_eval_bad_suites(run, tiny, tmp_path, suite_text, needle):
    suite = tmp_path / "suite.jsonl"
    suite.write_text(suite_text)
    result = run("eval", "--model", tiny.base, "--suite", suite)
    assert result.exit_code == 1
    assert needle in one_line_error(result)


def test_unknown_paths(run, tiny, tmp_path):
    result = run("compat", "--patch", tmp_path / "nope", "--base", tiny.base)
    assert result.exit_code == 1 and "not found" in one_line_error(result)
    result = run("compat", "--patch", tiny.patch, "--base", tmp_path / "nope", "--json")
    assert result.exit_code == 1 and "not found" in one_line_error(result)
    result = run("eval", "--model", tmp_path / "nope", "--suite", tmp_path / "nope.jsonl")
    assert result.exit_code == 1 and "not found" in one_line_error(result)
    result = run("generate", "--model", tmp_path / "nope", "--prompt", "hi")
    assert result.exit_code == 1 and "not found" in one_line_error(result)
    result = run("drift", "--from", tmp_path / "nope", "--to", tiny.base)
    assert result.exit_code == 1 and "not found" in one_line_error(result)


def test_generate_streams_to_stdout(run, tiny):
    result = run("generate", "--model", tiny.base, "--patch", tiny.patch, "--prompt", "How much?", "--max-new-tokens", 5, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert result.stdout.endswith("\n")
