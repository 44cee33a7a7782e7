"""The vllm backend's supervision against a stand-in server (tests/workers/fake_vllm.py): starts,
restarts, refusals, limits and deadlines, in seconds and without vLLM installed. What the engine
answers is tested against the real one in test_vllm.py."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from portllm_core.settings import Settings
from portllm_engine.prompt import PromptFormat, user_turn
from portllm_engine.prompt import PromptFormat
from workers.serving.backend import Served
from workers.serving.vllm import EngineError, VllmBackend

FAKE = Path(__file__).with_name("fake_vllm.py")


def launcher(tmp_path: Path, *, fail: bool = False) -> Path:
    """What PORTLLM_VLLM_PYTHON points at: runs the stand-in with vLLM's flags (or dies like a bad start)."""
    script = tmp_path / "python"
    body = ('echo "ValueError: model type foo is not supported" >&2; exit 1' if fail
            else f'exec {sys.executable} {FAKE} "$@"')
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return script


def served(tmp_path: Path, *, base: str = "v2", adapter: str = "patch-1", refuse: bool = False) -> Served:
    patch_dir = tmp_path / adapter
    patch_dir.mkdir(exist_ok=True)
    if refuse:
        (patch_dir / "refuse").touch()
    return Served("support-assistant", adapter, patch_dir, f"fp-{base}", tmp_path / base, f"demo/{base}", PromptFormat(), 1)


@pytest.fixture
def make_backend(tmp_path, monkeypatch):
    made = []

    def make(*, fail: bool = False, **settings) -> VllmBackend:
        values = {"serve_backend": "vllm", "vllm_python": str(launcher(tmp_path, fail=fail)),
                  "data_dir": tmp_path / "data", "vllm_args": "--startup-s 0.3", "vllm_start_timeout_s": 20,
                  **settings}
        backend = VllmBackend(Settings(**values), on_local_fallback=lambda s, reason: fallbacks.append(reason))
        # The prompt's token ids need a real tokenizer: test_vllm.py checks them on the demo world.
        monkeypatch.setattr(backend, "_request", lambda s, q: {"model": s.adapter, "prompt": [1, 2]})
        made.append(backend)
        return backend

    fallbacks: list[str] = []
    make.fallbacks = fallbacks
    yield make
    for backend in made:
        backend.close()


def pids(backend: VllmBackend) -> list[int]:
    return [e.process.pid for e in backend.engines._engines.values() if e.process is not None]


def gone(pid: int, timeout: float = 10) -> bool:
    """Whether the process ended (and was reaped) within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def test_a_cold_engine_says_so_then_answers_and_a_warm_one_just_answers(make_backend, tmp_path):
    backend = make_backend()
    first = "".join(backend.answer(served(tmp_path), user_turn("q")))
    assert first == "(The engine for demo/v2 is starting; the answer follows in a moment.)\n\nanswer from patch-1"
    assert "".join(backend.answer(served(tmp_path), user_turn("q"))) == "answer from patch-1"
    assert len(pids(backend)) == 1


def test_warming_starts_the_engine_and_loads_the_patch_before_anyone_asks(make_backend, tmp_path):
    backend = make_backend()
    backend.warm(served(tmp_path))
    engine = next(iter(backend.engines._engines.values()))
    assert engine.ready and engine.adapters == {"patch-1"}
    assert "".join(backend.answer(served(tmp_path), user_turn("q"))) == "answer from patch-1"


def test_a_server_that_died_is_started_again_and_the_answer_retried(make_backend, tmp_path):
    backend = make_backend()
    backend.warm(served(tmp_path))
    [pid] = pids(backend)
    os.killpg(pid, signal.SIGKILL)
    time.sleep(0.2)
    text = "".join(backend.answer(served(tmp_path), user_turn("q")))
    assert text.endswith("answer from patch-1")
    assert pids(backend) and pids(backend) != [pid]


def test_a_server_that_dies_mid_answer_is_started_again_and_the_answer_starts_over(make_backend, tmp_path):
    backend = make_backend()
    crashing = served(tmp_path)
    (crashing.patch_dir / "die").touch()
    backend.warm(crashing)
    text = "".join(backend.answer(crashing, user_turn("q")))
    assert text == "answer\n\n(The engine restarted; answering again.)\n\nanswer from patch-1"


def test_a_server_that_dies_again_fails_the_answer_saying_so(make_backend, tmp_path):
    backend = make_backend()
    crashing = served(tmp_path)
    (crashing.patch_dir / "always-die").touch()
    backend.warm(crashing)
    with pytest.raises(EngineError, match="the engine for demo/v2 went down"):
        "".join(backend.answer(crashing, user_turn("q")))
    assert (tmp_path / "data" / "logs" / "vllm-demo-v2.log").read_text().count("fake vLLM starting") == 2


def test_a_server_that_cannot_start_fails_the_answer_with_its_error(make_backend, tmp_path):
    backend = make_backend(fail=True)
    with pytest.raises(EngineError, match="exited with code 1: ValueError: model type foo is not supported"):
        "".join(backend.answer(served(tmp_path), user_turn("q")))


def test_a_refused_patch_is_answered_by_the_local_backend_and_reported_once(make_backend, tmp_path, monkeypatch):
    backend = make_backend()
    monkeypatch.setattr(backend.local, "answer", lambda s, q: iter(["local answer"]))
    wide = served(tmp_path, adapter="patch-2", refuse=True)
    assert "".join(backend.answer(wide, user_turn("q"))).endswith("local answer")
    assert "".join(backend.answer(wide, user_turn("q"))) == "local answer"  # no second try on the engine
    assert len(make_backend.fallbacks) == 1 and "greater than max_lora_rank 64" in make_backend.fallbacks[0]
    assert "".join(backend.answer(served(tmp_path), user_turn("q"))) == "answer from patch-1"  # others stay on vLLM


def test_a_server_that_does_not_come_up_in_time_fails_the_answer(make_backend, tmp_path):
    backend = make_backend(vllm_args="--startup-s 30", vllm_start_timeout_s=1)
    started = time.monotonic()
    with pytest.raises(EngineError, match="did not come up within 1 s"):
        "".join(backend.answer(served(tmp_path), user_turn("q")))
    assert time.monotonic() - started < 10


def test_the_server_limit_stops_the_least_recently_used_idle_one(make_backend, tmp_path):
    backend = make_backend(vllm_max_servers=1)
    backend.warm(served(tmp_path, base="v2"))
    [first] = pids(backend)
    backend.warm(served(tmp_path, base="v3"))
    assert pids(backend) != [first] and len(pids(backend)) == 1
    assert gone(first)


def test_an_idle_server_stops(make_backend, tmp_path):
    backend = make_backend(vllm_idle_s=0.5)
    backend.warm(served(tmp_path))
    [pid] = pids(backend)
    assert gone(pid) and not pids(backend)


SERVE_WORKER = """
import sys, threading
from pathlib import Path
from portllm_core.settings import Settings
from portllm_engine.prompt import PromptFormat
from workers.serving.backend import Served
from workers.serving.vllm import VllmBackend

python, root = sys.argv[1], Path(sys.argv[2])
backend = VllmBackend(Settings(serve_backend="vllm", vllm_python=python, data_dir=root / "data",
                               vllm_args="--startup-s 0.3", vllm_start_timeout_s=20))
(root / "patch-1").mkdir()
backend.warm(Served("support-assistant", "patch-1", root / "patch-1", "fp-v2", root / "v2", "demo/v2", PromptFormat(), 1))
print(next(iter(backend.engines._engines.values())).process.pid, flush=True)
threading.Event().wait()
"""


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
def test_a_serve_worker_killed_outright_takes_its_servers_with_it(tmp_path):
    worker = subprocess.Popen([sys.executable, "-c", SERVE_WORKER, str(launcher(tmp_path)), str(tmp_path)],
                              stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2])
    try:
        server = int(worker.stdout.readline())
        assert not gone(server, timeout=1)
    finally:
        worker.kill()
        worker.wait()
    assert gone(server)


def test_a_base_with_a_url_uses_that_server_and_starts_none(make_backend, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    theirs = subprocess.Popen([sys.executable, str(FAKE), "--host", "127.0.0.1", "--port", str(port),
                               "--startup-s", "0"], stdout=subprocess.DEVNULL)
    try:
        backend = make_backend(vllm_urls={"demo/v2": f"http://127.0.0.1:{port}"},
                               vllm_python=str(tmp_path / "not-installed"))
        deadline = time.monotonic() + 10
        text = ""
        while time.monotonic() < deadline and not text.endswith("patch-1"):
            try:
                text = "".join(backend.answer(served(tmp_path), user_turn("q")))
            except EngineError:
                time.sleep(0.2)
        assert text.endswith("answer from patch-1") and not pids(backend)
    finally:
        theirs.terminate()
        theirs.wait()
