"""The console when its input is piped (scripts, CI): prompt output, a bounded wait, exit 124."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

from portllm_cli.console import run_console
from portllm_core.settings import Settings
from tests.bot.conftest import ASSISTANT

REPO = Path(__file__).resolve().parents[2]


def test_a_run_no_worker_picks_up_ends_the_piped_console_with_124_within_the_wait(world, data_dir):
    out = io.StringIO()
    started = time.monotonic()
    code = run_console("#support", "alice", stdin=io.StringIO(f"patch {ASSISTANT} onto v2\nstatus\n"), out=out,
                       settings=Settings(data_dir=data_dir), session_factory=world.session_factory,
                       enqueue=world.queue, poll_s=0.05, wait_s=1.0)
    assert code == 124
    assert time.monotonic() - started < 10
    assert "no worker picked up run #1 in 1 s: start `portllm worker`" in out.getvalue()
    assert "run #1 queued 0%" in out.getvalue()  # progress as plain lines when not a terminal


def test_output_reaches_a_pipe_line_by_line_while_the_console_still_waits(world, data_dir, database_url):
    env = {**os.environ, "PORTLLM_DATA_DIR": str(data_dir), "PORTLLM_DATABASE_URL": database_url,
           "PORTLLM_BROKER_URL": world.broker_url, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "portllm_cli.main", "console", "--wait", "30"], cwd=REPO, env=env,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        proc.stdin.write(f"help\npatch {ASSISTANT} onto v2\n")
        proc.stdin.flush()  # stdin stays open: the console is still running when we read
        lines = []
        while not any("is still queued" in line or "queued 0%" in line for line in lines):
            lines.append(proc.stdout.readline())
            assert lines[-1], f"the console exited early: {lines}"
        assert proc.poll() is None, "read while the console was still waiting for the run"
        assert any("PortLLM commands" in line for line in lines)
    finally:
        proc.kill()
        proc.wait()


def test_library_deprecation_notices_are_silenced_at_the_cli_edge_and_ours_still_show():
    code = (
        "import warnings; from portllm_cli.main import silence_library_warnings; silence_library_warnings();"
        "warnings.warn_explicit('is_gradient_checkpointing is deprecated', FutureWarning, 'm.py', 1,"
        " module='transformers.modeling_utils');"
        "warnings.warn_explicit('our own notice', FutureWarning, 'f.py', 1, module='portllm_core.flows.runs')"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert "our own notice" in result.stderr
    assert "is_gradient_checkpointing" not in result.stderr
