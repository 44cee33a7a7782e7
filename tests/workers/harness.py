"""Real worker processes for integration tests, and waiting on what they do to the registry."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from registry.models import Run

REPO = Path(__file__).resolve().parents[2]

# Short sweeper and heartbeat limits so a killed worker's run is retried within seconds.
FAST_SWEEP = {
    "PORTLLM_SWEEP_INTERVAL_S": "1",
    "PORTLLM_HEARTBEAT_INTERVAL_S": "0.5",
    "PORTLLM_HEARTBEAT_LIMIT_S": "6",
    "PORTLLM_QUEUED_LIMIT_S": "60",
}


@dataclass
class Stack:
    """A data dir, a registry database and a broker that test and workers share."""

    data_dir: Path
    database_url: str
    broker_url: str
    session_factory: object
    ids: dict[str, int] = field(default_factory=dict)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PORTLLM_", "SLACK_"))}
        env.update(FAST_SWEEP, PORTLLM_DATA_DIR=str(self.data_dir), PORTLLM_DATABASE_URL=self.database_url,
                   PORTLLM_BROKER_URL=self.broker_url, PORTLLM_NOTIFIER="console",
                   HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                   OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
        env.update(extra)
        return env

    def producer(self):
        from portllm_core.settings import Settings
        from portllm_core.tasks import TaskQueue

        return TaskQueue(Settings(broker_url=self.broker_url))

    def run(self, run_id: int) -> Run:
        with self.session_factory() as s:
            run = s.get(Run, run_id)
            run.evaluations, run.rollout  # load while the session is open
            return run

    def wait_for(self, run_id: int, *statuses: str, timeout: float = 180, step: str | None = None) -> Run:
        """Poll until the run reaches one of `statuses` (or, with `step`, a step starting with it)."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.run(run_id)
            if run.status in statuses or (step and run.step.startswith(step)):
                return run
            if time.monotonic() > deadline:
                raise AssertionError(f"run #{run_id} still {run.status} at '{run.step}' after {timeout} s")
            time.sleep(0.3)

    def outbox(self) -> list[dict]:
        path = self.data_dir / "console" / "outbox.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# Holds a run at the first step starting with `step` (its heartbeat keeps beating) until the worker
# is killed: a test-side patch of the run protocol, so production code carries no test hook.
HOLD_AT = """
import time, workers.protocol as protocol
_step = protocol.RunJob.step
def _held(self, progress, text):
    _step(self, progress, text)
    while text.startswith({step!r}):
        time.sleep(0.2)
protocol.RunJob.step = _held
"""


class WorkerProcess:
    """`start_worker` (what `portllm worker` runs) in a process group of its own, so the test can
    kill -9 the main process and its pool child together, as a crashed machine would."""

    def __init__(self, stack: Stack, name: str, *, queues: str = "gpu,serve", hold_at: str | None = None,
                 **env: str) -> None:
        self.name = name
        self.log = stack.data_dir / f"worker-{name}.log"
        code = f"from workers.main import start_worker; start_worker({queues.split(',')!r}, hostname={name + '@%h'!r})"
        if hold_at:  # the pool child inherits the patched step when it forks
            code = HOLD_AT.format(step=hold_at) + code
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=stack.env(**env),
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_log(self, needle: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.text():
            if self.proc.poll() is not None:
                raise AssertionError(f"worker {self.name} exited {self.proc.returncode}:\n{self.text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"worker {self.name}: no '{needle}' after {timeout} s:\n{self.text()[-3000:]}")
            time.sleep(0.2)

    def ready(self) -> WorkerProcess:
        self.wait_for_log("ready on device")  # the pool child is up and has logged its device
        self.wait_for_log(" ready.")  # the consumer is connected
        return self

    def kill(self) -> None:
        """SIGKILL the whole group: nothing gets to clean up or give its task back."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # warm shutdown: the main process stops its pool
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
