"""Answers through a real serve worker and the console channel, PORTLLM_SERVE_BACKEND=local vs
vllm, measured side by side in one run on the demo world:

- one ask at a time: seconds until the whole answer is in the console's outbox;
- N asks at once (default 8): the wall time until all are answered, and its ratio to one
  answer (target on vLLM: <= 2x; the local backend answers them one after another);
- time to first token: from the ask to the answer's first piece in the outbox, p50 and p95.

Each backend gets its own serve worker (`portllm worker --queues serve`), warmed as a rollout
going live warms it (the vLLM server's start-up is reported, not timed into the answers).
vLLM needs its environment (`make vllm`); on CPU pass the RAM share it may reserve.
    python bench/serve.py [--rounds 3] [--concurrent 8] [--backends local,vllm] [--broker redis://…/14]
                          [--vllm-args "--dtype float32 --gpu-memory-utilization 0.15"]
                          [--hidden 1024 --layers 10]   (a 128 M-parameter Llama built from a config)
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
CPU_VLLM_ARGS = "--dtype float32 --gpu-memory-utilization 0.15 --max-num-seqs 16"


class Outbox:
    """Tails the console outbox: when each request's first piece and its end were first seen."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.first: dict[str, float] = {}
        self.done: dict[str, float] = {}
        self.texts: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tail, daemon=True)
        self._thread.start()

    def _tail(self) -> None:
        offset, partial = 0, ""
        while not self._stop.is_set():
            if self.path.exists():
                with open(self.path, encoding="utf-8") as f:
                    f.seek(offset)
                    chunk = f.read()
                    offset = f.tell()
                now = time.perf_counter()
                lines = (partial + chunk).split("\n")
                partial = lines.pop()
                for line in lines:
                    event = json.loads(line)
                    rid = (event.get("reply_to") or {}).get("request_id")
                    if event["type"] == "answer_chunk" and event["text"].strip():
                        self.first.setdefault(rid, now)
                    elif event["type"] == "answer_done":
                        self.done.setdefault(rid, now)
                        self.first.setdefault(rid, now)
                        self.texts[rid] = event["text"]
            time.sleep(0.002)

    def wait(self, request_ids: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not all(r in self.done for r in request_ids):
            if time.monotonic() > deadline:
                raise SystemExit(f"no answer for {[r for r in request_ids if r not in self.done]} in {timeout} s")
            time.sleep(0.005)

    def close(self) -> None:
        self._stop.set()


def built_world(demo, root: Path, hidden: int, layers: int):
    """The demo world with its v2 and patch replaced by a larger Llama built from a config."""
    import dataclasses

    from bench.run_memory import build_models
    from portllm_engine.patches import import_peft

    v1, v2, peft_dir, base_bytes = build_models(root, demo.bases["v1"], hidden, layers)
    import_peft(peft_dir, root / "portllm-patch", v1)
    print(f"model: Llama {layers} x {hidden}, {base_bytes // 4 / 1e6:.0f} M parameters, fp32; rank-16 patch")
    return dataclasses.replace(demo, bases={"v1": v1, "v2": v2}, patch=root / "portllm-patch")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(stack, outbox: Outbox, backend: str, questions: list[str], args) -> dict:
    from portllm_core.tasks import ANSWER_QUESTION, WARM_ANSWERS
    from tests.workers.harness import WorkerProcess
    from tests.workers.seed import ASSISTANT, CHANNEL

    env = {"PORTLLM_SERVE_BACKEND": backend, "PORTLLM_TORCH_THREADS": str(args.threads)}
    if backend == "vllm":
        env.update(PORTLLM_VLLM_PYTHON=str(REPO / ".venv-vllm" / "bin" / "python"), PORTLLM_VLLM_ARGS=args.vllm_args)
    worker = WorkerProcess(stack, f"bench-{backend}", queues="serve", **env)
    queue = stack.producer()
    asked = 0

    def ask_all(n: int) -> tuple[list[str], float]:
        nonlocal asked
        ids, sent = [], {}
        started = time.perf_counter()
        for _ in range(n):
            rid = f"{backend}-{asked}"
            reply_to = {"channel": CHANNEL, "user": "bench", "request_id": rid, "via": "console"}
            sent[rid] = time.perf_counter()
            queue.enqueue(ANSWER_QUESTION, ASSISTANT, CHANNEL, questions[asked % len(questions)], "bench", reply_to)
            ids.append(rid)
            asked += 1
        outbox.wait(ids, 600)
        wall = max(outbox.done[r] for r in ids) - started
        return [outbox.first[r] - sent[r] for r in ids], wall

    try:
        worker.wait_for_log("ready on device" if backend == "local" else "serve worker ready", timeout=180)
        worker.wait_for_log(" ready.", timeout=180)
        started = time.perf_counter()
        queue.enqueue(WARM_ANSWERS, ASSISTANT, CHANNEL)  # what approving does
        worker.wait_for_log("is ready to answer", timeout=600)
        warm_s = time.perf_counter() - started
        ask_all(1)  # one untimed answer: first-call costs out of the way
        single, single_ttft, conc, conc_ttft = [], [], [], []
        for _ in range(args.rounds):
            ttft, wall = ask_all(1)
            single.append(wall)
            single_ttft += ttft
            ttft, wall = ask_all(args.concurrent)
            conc.append(wall)
            conc_ttft += ttft
        if any(outbox.texts[r].startswith("Sorry") for r in outbox.texts if r.startswith(backend)):
            raise SystemExit(f"{backend}: some answers failed; see {worker.log}")
        return {"warm_s": warm_s, "single": statistics.median(single), "conc": statistics.median(conc),
                "ttft1": statistics.median(single_ttft), "ttft_p50": pct(conc_ttft, 0.5),
                "ttft_p95": pct(conc_ttft, 0.95)}
    finally:
        worker.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of (1 ask, then N at once) per backend")
    parser.add_argument("--concurrent", type=int, default=8, help="asks sent at once")
    parser.add_argument("--backends", default="local,vllm", help="comma-separated: local, vllm")
    parser.add_argument("--vllm-args", default=CPU_VLLM_ARGS, help="PORTLLM_VLLM_ARGS for the vLLM servers")
    parser.add_argument("--threads", type=int, default=1, help="PORTLLM_TORCH_THREADS of the local worker")
    parser.add_argument("--hidden", type=int, default=0,
                        help="serve a Llama of this width built from a config (random weights, the demo's tokenizer, "
                             "a rank-16 patch on every linear layer) instead of the demo world; 1024 with 10 layers "
                             "is 128 M parameters")
    parser.add_argument("--layers", type=int, default=10, help="layers of the --hidden model")
    parser.add_argument("--broker", default=None,
                        help="a Redis URL to use (its db is emptied first); default: the embedded SQLite queue")
    args = parser.parse_args()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if "vllm" in backends and not (REPO / ".venv-vllm" / "bin" / "python").exists():
        print("vLLM is not installed (.venv-vllm): run `make vllm`; measuring local only")
        backends = [b for b in backends if b != "vllm"]

    from portllm_engine.demo import build_demo_world
    from registry.cli import upgrade
    from registry.db import make_session_factory
    from tests.fixtures.demo_world import demo_cache_dir
    from tests.workers.harness import Stack
    from tests.workers.seed import go_live, seed_demo

    world = build_demo_world(demo_cache_dir())
    items = [json.loads(line) for line in world.suite.read_text().splitlines() if line.strip()]
    questions = [re.sub(r"^Question: |\nAnswer:$", "", item["prompt"]) for item in items]
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        data_dir = Path(tmp)
        database_url = f"sqlite:///{data_dir / 'portllm.db'}"
        upgrade(database_url)
        if args.broker:
            import redis

            redis.Redis.from_url(args.broker).flushdb()
        stack = Stack(data_dir, database_url, args.broker or f"sqla+sqlite:///{data_dir / 'queue.db'}",
                      make_session_factory(database_url))
        if args.hidden:
            world = built_world(world, data_dir / "model", args.hidden, args.layers)
        stack.ids = seed_demo(stack.session_factory, data_dir / "artifacts", world)
        go_live(stack.session_factory, "v2", key="bench", patch_id=stack.ids["patch"])
        outbox = Outbox(data_dir / "console" / "outbox.jsonl")
        try:
            results = {backend: measure(stack, outbox, backend, questions, args) for backend in backends}
        finally:
            outbox.close()
            stack.session_factory.kw["bind"].dispose()

    n = args.concurrent
    model = f"Llama {args.layers}x{args.hidden} (v2 + patch)" if args.hidden else "demo world (v2 + support patch)"
    print(f"{model}, serve worker + console outbox, queue {'Redis' if args.broker else 'SQLite'}, "
          f"{args.rounds} rounds, "
          f"medians; TTFT p50/p95 over the {n}-at-once asks")
    print(f"{'backend':<8}{'warm-up s':>10}{'1 ask s':>9}{'TTFT 1 ms':>11}{f'{n} at once s':>14}"
          f"{f'{n}x / 1x':>9}{'TTFT p50 ms':>13}{'TTFT p95 ms':>13}")
    for backend, r in results.items():
        print(f"{backend:<8}{r['warm_s']:>10.1f}{r['single']:>9.2f}{r['ttft1'] * 1000:>11.0f}{r['conc']:>14.2f}"
              f"{r['conc'] / r['single']:>8.1f}x{r['ttft_p50'] * 1000:>13.0f}{r['ttft_p95'] * 1000:>13.0f}")
    if "vllm" in results:
        ratio = results["vllm"]["conc"] / results["vllm"]["single"]
        print(f"vllm: {n} at once in {ratio:.1f}x one answer's time (target <= 2x: {'met' if ratio <= 2 else 'NOT met'})")
    if {"local", "vllm"} <= set(results):
        print(f"{n} at once: vllm {results['local']['conc'] / results['vllm']['conc']:.1f}x faster than local")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
