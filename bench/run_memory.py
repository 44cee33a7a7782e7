"""A run holds one copy of the base: peak memory of a real worker process during a transplant run.

Builds a Llama of about 390 M parameters locally (fp32, random weights; the demo world's
tokenizer), an evolved `v2`, and a rank-16 PEFT LoRA on all linear layers of `v1`; registers
them through the flows, starts `portllm worker --queues gpu` and requests `patch … onto v2`.
The patch is live on v1 in the channel, so the run scores the candidate and v2 alone, then live
(the patch on v1) on the same items, holding one base at a time. The worker's pool process is
sampled from /proc while the run works; printed: its resident memory after a warm-up run on the
demo world, its peak during the run, and the peak above that baseline divided by the base's
bytes. Target: <= 1.25x (a deep-copied candidate, as before, measured 2.98x).

What is above 1.00x is the patch's factors and a scoring batch's activations (16 rows: its KV
cache and a layer's intermediates). They grow with a layer's width, not with the whole model, so
their share falls as models grow: measured 0.12x here, 0.26x at `--hidden 1024 --layers 10` (119 M).

    python bench/run_memory.py [--hidden 2048] [--layers 8]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def build_models(root: Path, tokenizer_dir: Path, hidden: int, layers: int) -> tuple[Path, Path, Path, int]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 11 // 4,
                         num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=hidden // 128,
                         max_position_embeddings=512, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    v1, v2, patch = root / "v1", root / "v2", root / "patch"
    for out in (v1, v2):
        if out == v2:  # mild continued pretraining, as noise
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn_like(p) * p.std() * 0.05)
        model.save_pretrained(out, safe_serialization=True, max_shard_size="200MB")
        tokenizer.save_pretrained(out)
    base_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    model = LlamaForCausalLM.from_pretrained(v1)
    peft = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False))
    peft.save_pretrained(patch)
    return v1, v2, patch, base_bytes


def write_suite(path: Path, n: int = 24) -> Path:
    rows = [{"kind": "multiple_choice", "context": f"Q: Is product {i} waterproof?\nA:", "choices": [" yes", " no"],
             "gold": i % 2} for i in range(n)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def make_live(ws, assistant: str, version: str, channel: str) -> None:
    """Live in `channel` as if it had been run and approved, with nothing scored: the run scores it."""
    from registry import services

    with ws.session() as s:
        patch = services.current_patch(s, assistant)
        run, _ = services.request_run(s, assistant=assistant, version=version, idempotency_key=f"live-{assistant}-{version}-{channel}",
                                      requested_by="bench", channel=channel, patch_id=patch.id)
        services.claim_run(s, run.id, "bench")
        services.finish_run(s, run.id, status="succeeded")
        services.open_rollout(s, run.id, verdict="pass")
        services.decide_rollout(s, run.id, approve=True, user="bench")


def memory_kb(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0])
    return fields


def pool_child(pid: int, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.2)
    raise SystemExit("the worker started no pool process")


def wait_status(ws, run_id: int) -> tuple[str, str | None, str]:
    from registry.models import Run

    with ws.session_factory() as s:
        run = s.get(Run, run_id)
        return run.status, run.error, run.step


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=8)
    args = parser.parse_args()

    from portllm_engine.demo import build_demo_world

    world = build_demo_world()
    with tempfile.TemporaryDirectory(prefix="portllm-run-memory-") as tmp:
        root = Path(tmp)
        os.environ.update(PORTLLM_DATA_DIR=str(root / "data"), PORTLLM_NOTIFIER="console",
                          PORTLLM_SWEEP_INTERVAL_S="0", HF_HUB_OFFLINE="1")
        for key in ("PORTLLM_DATABASE_URL", "PORTLLM_BROKER_URL"):
            os.environ.pop(key, None)
        v1, v2, patch, base_bytes = build_models(root, world.bases["v1"], args.hidden, args.layers)
        print(f"base: {base_bytes / 1e6:.0f} MB of fp32 weights ({base_bytes // 4 / 1e6:.0f} M parameters)")

        from portllm_core.flows import catalog, runs
        from portllm_core.workspace import Workspace
        from registry.cli import upgrade

        ws = Workspace()
        upgrade(ws.settings.resolved_database_url())
        for version, path in (("v1", v1), ("v2", v2)):
            catalog.register_base(ws, "bench", version, str(path), actor="bench")
        catalog.add_assistant(ws, "bench-assistant", family="bench", suite=write_suite(root / "suite.jsonl"),
                              min_accuracy=0.0, approvers=["bench"], actor="bench")
        catalog.add_patch(ws, "bench-assistant", patch, base="v1", actor="bench")
        make_live(ws, "bench-assistant", "v1", "#bench")
        # A warm-up run on the demo world's tiny Llama: the baseline is a worker that has worked, as
        # every long-running one has, so modules imported on first use are not counted as the base.
        for version in ("v1", "v2"):
            catalog.register_base(ws, "warm", version, str(world.bases[version]), actor="bench")
        catalog.add_assistant(ws, "warm-assistant", family="warm", suite=world.suite_mc, actor="bench")
        catalog.add_patch(ws, "warm-assistant", world.patch, base="v1", actor="bench")

        log = open(root / "worker.log", "wb")
        worker = subprocess.Popen([sys.executable, "-m", "workers.main", "gpu"], cwd=REPO, stdout=log,
                                  stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "2"})
        try:
            child = pool_child(worker.pid)
            while b"ready on device" not in (root / "worker.log").read_bytes():
                time.sleep(0.2)
            warm_up = runs.request_run(ws.session_factory, ws.queue, kind="transplant", assistant="warm-assistant",
                                       version="v2", user="bench", channel="#bench", idempotency_key="warm-up")
            while wait_status(ws, warm_up.run_id)[0] not in ("succeeded", "failed"):
                time.sleep(0.2)
            Path(f"/proc/{child}/clear_refs").write_text("5")  # the kernel's peak (VmHWM) starts again from here
            before = memory_kb(child)
            baseline, base_anon, base_file = before["VmRSS"], before["RssAnon"], before["RssFile"]
            requested = runs.request_run(ws.session_factory, ws.queue, kind="transplant", assistant="bench-assistant",
                                         version="v2", user="bench", channel="#bench", idempotency_key="bench-1")
            started = time.monotonic()
            by_step: dict[str, tuple[int, int, int]] = {}  # step -> most (resident, anonymous, file) seen
            while True:
                status, error, step = wait_status(ws, requested.run_id)
                now = memory_kb(child)
                seen = by_step.get(step, (0, 0, 0))
                by_step[step] = (max(seen[0], now["VmRSS"]), max(seen[1], now["RssAnon"]), max(seen[2], now["RssFile"]))
                if status in ("succeeded", "failed"):
                    break
                time.sleep(0.1)
            peak = memory_kb(child)["VmHWM"]
        finally:
            worker.terminate()
            worker.wait(60)
            ws.close()
        if status != "succeeded":
            print(f"run failed: {error}\n{(root / 'worker.log').read_text()[-3000:]}")
            return 1
        print("  above baseline, in base sizes: resident (anonymous + file-backed) during each step")
        for step, (rss, anon, file) in by_step.items():
            print(f"  {(rss - baseline) * 1024 / base_bytes:5.2f}x ({(anon - base_anon) * 1024 / base_bytes:.2f} + "
                  f"{(file - base_file) * 1024 / base_bytes:.2f})  {step}")
        above = (peak - baseline) * 1024
        print(f"worker pool process: {baseline / 1024:.0f} MB after a warm-up run, peak {peak / 1024:.0f} MB "
              f"during it ({time.monotonic() - started:.0f} s)")
        print(f"peak above baseline / base bytes: {above / base_bytes:.2f}x   (target <= 1.25x; a deep-copied "
              "candidate measured 2.98x)")
        return 0 if above / base_bytes <= 1.25 else 1


if __name__ == "__main__":
    raise SystemExit(main())
