"""PORTLLM_SERVE_BACKEND=vllm with the real engine: the demo world's assistant, served by a serve
worker that runs a vLLM server (the CPU build) for its base, compared with the local backend.

Needs vLLM's own environment (`make vllm`, .venv-vllm): skipped with a reason without it, and
a failure where PORTLLM_TEST_REQUIRE_VLLM=1 (CI). The tests share one worker and run in order.
"""
from __future__ import annotations

import json
import os
import re
import signal
import time

import pytest

from portllm_engine.prompt import user_turn
from registry import services
from registry.db import session_scope
from tests.workers.harness import REPO, Stack, WorkerProcess
from tests.workers.seed import ASSISTANT, CHANNEL, go_live, register_patch_dir, seed_demo

pytestmark = pytest.mark.slow

VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
# float32 as the local backend loads the demo's bases (vLLM on CPU would pick bf16); on CPU the
# memory share is of RAM, and its default 0.92 cannot be had on a shared machine.
VLLM_ARGS = "--dtype float32 --gpu-memory-utilization 0.15 --max-num-seqs 16"
OPS = "#ops"  # where a patch vLLM refuses goes live
START_S = 300  # a cold server on two busy cores, with margin


@pytest.fixture(scope="module")
def vllm_python():
    if not VLLM_PYTHON.exists():
        message = f"vLLM is not installed ({VLLM_PYTHON} is missing): run `make vllm`"
        if os.environ.get("PORTLLM_TEST_REQUIRE_VLLM") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return VLLM_PYTHON


def wide_patch(world, out_dir):
    """A rank-128 LoRA on v2: above the engine's --max-lora-rank, so vLLM refuses it."""
    from peft import LoraConfig, get_peft_model

    from portllm_engine.models import load_base
    from portllm_engine.patches import import_peft

    base, _ = load_base(world.bases["v2"], device="cpu")
    model = get_peft_model(base, LoraConfig(r=128, lora_alpha=16, target_modules=["q_proj"]))
    model.save_pretrained(out_dir / "peft")
    import_peft(out_dir / "peft", out_dir / "patch", world.bases["v2"])
    return out_dir / "patch"


@pytest.fixture(scope="module")
def stack(tmp_path_factory, demo_world, vllm_python):
    from registry.artifacts import ArtifactStore
    from registry.cli import upgrade
    from registry.db import make_session_factory

    data_dir = tmp_path_factory.mktemp("vllm")
    database_url = f"sqlite:///{data_dir / 'portllm.db'}"
    upgrade(database_url)
    stack = Stack(data_dir, database_url, f"sqla+sqlite:///{data_dir / 'queue.db'}", make_session_factory(database_url))
    stack.ids = seed_demo(stack.session_factory, data_dir / "artifacts", demo_world)
    go_live(stack.session_factory, "v2", key="live-v2", patch_id=stack.ids["patch"])
    with session_scope(stack.session_factory) as s:
        wide = register_patch_dir(s, ArtifactStore(data_dir / "artifacts"), wide_patch(demo_world, data_dir),
                                  origin="v2").id
    go_live(stack.session_factory, "v2", key="live-wide", patch_id=wide, channel=OPS)
    yield stack
    stack.session_factory.kw["bind"].dispose()


@pytest.fixture(scope="module")
def worker(stack, vllm_python):
    worker = WorkerProcess(stack, "vllm", queues="serve", PORTLLM_SERVE_BACKEND="vllm",
                           PORTLLM_VLLM_PYTHON=str(vllm_python), PORTLLM_VLLM_ARGS=VLLM_ARGS,
                           PORTLLM_VLLM_START_TIMEOUT_S=str(START_S))
    worker.wait_for_log("serve worker ready: answers on vllm")
    worker.wait_for_log(" ready.")
    yield worker
    worker.stop()
    for pid in map(int, re.findall(r"vLLM server for demo/v2 \(pid (\d+)\)", worker.text())):
        with pytest.raises(ProcessLookupError):  # the servers stop with the worker
            os.kill(pid, 0)


def questions(world) -> list[tuple[str, str]]:
    """(question, target) of each generate item: the question as a person would type it."""
    items = [json.loads(line) for line in world.suite.read_text().splitlines() if line.strip()]
    return [(re.sub(r"^Question: |\nAnswer:$", "", item["prompt"]), item["target"]) for item in items]


def ask(stack, question: str, request_id: str, channel: str = CHANNEL) -> None:
    reply_to = {"channel": channel, "user": "bob", "request_id": request_id, "via": "console"}
    stack.producer().enqueue("portllm.answer_question", ASSISTANT, channel, question, "bob", reply_to)


def answers(stack, request_ids: list[str], timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        done = {e["reply_to"]["request_id"]: e["text"] for e in stack.outbox() if e["type"] == "answer_done"}
        if all(r in done for r in request_ids):
            return {r: done[r] for r in request_ids}
        if time.monotonic() > deadline:
            missing = [r for r in request_ids if r not in done]
            raise AssertionError(f"no answer for {missing[:5]} ({len(missing)} in all) within {timeout} s")
        time.sleep(0.3)


NOTICE = "(The engine for demo/v2 is starting; the answer follows in a moment.)\n\n"


def test_a_cold_engine_says_it_is_starting_then_answers(stack, worker, demo_world):
    question, target = questions(demo_world)[0]
    ask(stack, question, "cold")
    text = answers(stack, ["cold"], START_S + 60)["cold"]
    assert text.startswith(NOTICE), text
    assert text.removeprefix(NOTICE).strip(), text
    worker.wait_for_log("vLLM server for demo/v2 is up")
    worker.wait_for_log("patch-1 of support-assistant loaded on the vLLM server for demo/v2")


def test_eight_concurrent_asks_are_all_answered_by_one_engine(stack, worker, demo_world):
    asked = questions(demo_world)[:8]
    ids = [f"eight-{i}" for i in range(len(asked))]
    started = time.monotonic()
    for request_id, (question, _) in zip(ids, asked):
        ask(stack, question, request_id)
    got = answers(stack, ids, 120)
    wall = time.monotonic() - started
    assert all(text.strip() and not text.startswith(("Sorry", "(The engine")) for text in got.values()), got
    assert worker.text().count("starting a vLLM server for demo/v2") == 1
    assert "loading base" not in worker.text()  # the base lives in vLLM only: the worker read its tokenizer
    print(f"8 concurrent asks answered in {wall:.1f} s")


def test_greedy_answers_match_the_local_backend_and_accuracy_holds(stack, worker, demo_world):
    from portllm_engine.transplant import PatchServer

    asked = questions(demo_world)
    ids = [f"suite-{i}" for i in range(len(asked))]
    for request_id, (question, _) in zip(ids, asked):
        ask(stack, question, request_id)

    local = PatchServer(demo_world.bases["v2"], device="cpu")  # what PORTLLM_SERVE_BACKEND=local runs
    local.attach("patch-1", demo_world.patch)
    local_answers = ["".join(local.generate("patch-1", user_turn(question))) for question, _ in asked]
    served = answers(stack, ids, 300)

    same = sum(served[i].strip() == mine.strip() for i, mine in zip(ids, local_answers))
    served_acc = sum(served[i].strip() == target for i, (_, target) in zip(ids, asked)) / len(asked)
    local_acc = sum(mine.strip() == target for mine, (_, target) in zip(local_answers, asked)) / len(asked)
    print(f"vLLM vs local: {same}/{len(asked)} answers the same; accuracy {served_acc:.0%} vs {local_acc:.0%}")
    assert same >= 0.9 * len(asked)
    assert abs(served_acc - local_acc) <= 0.05


def test_a_patch_vllm_refuses_is_answered_locally_and_status_says_so(stack, worker, demo_world):
    question, _ = questions(demo_world)[0]
    ask(stack, question, "wide", channel=OPS)
    text = answers(stack, ["wide"], 240)["wide"]
    assert text.strip() and not text.startswith("Sorry"), text
    worker.wait_for_log("is answered by the local backend instead")
    from portllm_core.views import status_view

    with stack.session_factory() as s:
        rows = {row.channel: row for row in status_view(s, ASSISTANT).live}
    assert "greater than max_lora_rank" in rows[OPS].served_locally
    assert rows[CHANNEL].served_locally is None
    assert "max_lora_rank" in rows[OPS].to_json()["served_locally"]  # `status --json`, for scripts


def test_a_server_that_dies_is_started_again_and_the_answer_retried(stack, worker, demo_world):
    pid = int(re.findall(r"vLLM server for demo/v2 \(pid (\d+)\)", worker.text())[-1])
    os.killpg(pid, signal.SIGKILL)
    question, _ = questions(demo_world)[1]
    ask(stack, question, "after-death")
    text = answers(stack, ["after-death"], START_S + 60)["after-death"]
    assert text.strip() and not text.startswith("Sorry"), text
    assert worker.text().count("starting a vLLM server for demo/v2") == 2
