"""Transplant vs the alternatives, measured side by side in one run.

1. base load time vs transplant (load + merge) on a random Llama of ~70 M parameters;
2. re-fine-tuning the demo patch on the demo's v2 with the demo recipe vs transplanting it;
3. peak memory above the process baseline: one LoRA training step (seq 512, batch 8) vs a
   transplant, on the same ~70 M model, each in its own subprocess;
4. the streaming transplant to disk on two sharded Llamas, ~45 M and ~95 M parameters: its peak
   memory above the process baseline must stay flat (within 1.3x) while the model doubles.

Run: python bench/transplant.py              (builds what it needs under .cache/bench; reuses the demo world)
     python bench/transplant.py --streaming  (part 4 alone)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CACHE = REPO / ".cache" / "bench"
BIG = {"hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 10, "num_attention_heads": 12}
VOCAB = 2048
SEQ, BATCH = 512, 8
# Part 4: the same widths, 6 and 13 layers (~45 M and ~95 M parameters), saved and written in 50 MB shards.
STREAM_LAYERS = (6, 13)
SHARD_BYTES = 50 * 1000**2


def build_big_model() -> tuple[Path, Path]:
    """A random ~70 M Llama (float32, one safetensors file) and a random r=8 all-linear LoRA patch for it.

    float32 because CPUs train in it (bf16 matmuls crawl there) and both sides must load the same model.
    """
    return build_model("llama-70m", BIG["num_hidden_layers"])


def build_model(name: str, layers: int, max_shard_size: int | str = "50GB") -> tuple[Path, Path]:
    """A random Llama of BIG's width with `layers` layers, and a random r=8 all-linear LoRA patch for it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from portllm_engine.demo import train_bpe_tokenizer
    from portllm_engine.patches import import_peft

    base, patch = CACHE / name, CACHE / f"{name}-patch"
    if (patch / "portllm.json").is_file():
        return base, patch
    words = [f"word{i} token{i % 97} piece{i % 13}" for i in range(4000)]
    train_bpe_tokenizer(words, base, VOCAB, 1024)
    tokenizer = AutoTokenizer.from_pretrained(base)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB, max_position_embeddings=1024, num_key_value_heads=BIG["num_attention_heads"],
        tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **{**BIG, "num_hidden_layers": layers},
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(base, safe_serialization=True, max_shard_size=max_shard_size)
    peft_dir = CACHE / f"{name}-peft"
    lora = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM")
    get_peft_model(model, lora).save_pretrained(peft_dir, safe_serialization=True)
    import_peft(peft_dir, patch, base)
    return base, patch


def timed(*funcs, repeats: int = 5) -> list[float]:
    """Median wall time of each function, run interleaved so background load hits all alike."""
    samples: list[list[float]] = [[] for _ in funcs]
    for _ in range(repeats):
        for func, bucket in zip(funcs, samples):
            started = time.perf_counter()
            func()
            bucket.append(time.perf_counter() - started)
    return [statistics.median(bucket) for bucket in samples]


def load_vs_transplant(base: Path, patch: Path) -> tuple[float, float, float, int]:
    """transformers maps safetensors lazily on CPU: `load` alone copies nothing, while a merge
    must write (copy-on-write) every adapted weight. So the fair baseline also reads the weights
    into process memory, as any non-mmap load (or an upload to a GPU) does."""
    import torch

    from portllm_engine.models import load_base
    from portllm_engine.transplant import transplant

    model, _ = load_base(base, device="cpu")  # warms the page cache for every measurement
    params = sum(p.numel() for p in model.parameters())
    del model

    def load_into_memory():
        model, _ = load_base(base, device="cpu")
        with torch.no_grad():
            for param in model.parameters():
                param.data = param.data.clone()

    lazy_s, load_s, transplant_s = timed(
        lambda: load_base(base, device="cpu"), load_into_memory, lambda: transplant(patch, base, device="cpu"), repeats=7
    )
    return lazy_s, load_s, transplant_s, params


def retune_vs_transplant() -> tuple[float, float, str]:
    import tempfile

    from portllm_engine.demo import PATCH_RECIPE, RECIPE, build_demo_world
    from portllm_engine.patches import train_patch
    from portllm_engine.transplant import transplant

    world = build_demo_world(Path(os.environ.get("PORTLLM_DEMO_CACHE") or REPO / ".cache" / "demo-world"))
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        train_patch(world.bases["v2"], world.train_data, Path(out) / "retuned", seed=RECIPE["seed"], device="cpu", **PATCH_RECIPE)
        retune_s = time.perf_counter() - started
    (transplant_s,) = timed(lambda: transplant(world.patch, world.bases["v2"], device="cpu"), repeats=3)
    return retune_s, transplant_s, str(world.root)


MEMORY_PROBE = r"""
import json, os, sys, threading, time, torch
sys.path.insert(0, sys.argv[3])
from portllm_engine.models import load_base
from portllm_engine.transplant import transplant, transplant_to_dir

def status_kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])

# Peak of anonymous memory (tensors, activations), sampled: mapped safetensors pages are page
# cache shared with the OS, the CPU analogue of what a GPU would not hold in device memory.
peak = [0]
def sample():
    while True:
        peak[0] = max(peak[0], status_kib("RssAnon:"))
        time.sleep(0.002)

torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
import peft, transformers  # imports are part of the baseline, not of the work
baseline_anon, baseline_rss = status_kib("RssAnon:"), status_kib("VmRSS:")
open("/proc/self/clear_refs", "w").write("5")  # reset the VmHWM peak to now
threading.Thread(target=sample, daemon=True).start()
kind, base, patch = sys.argv[1], sys.argv[2], sys.argv[4]
if kind == "train":
    from peft import LoraConfig, get_peft_model
    model, tok = load_base(base, device="cpu")
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, model.config.vocab_size, (int(sys.argv[5]), int(sys.argv[6])))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
elif kind == "stream":
    transplant_to_dir(patch, base, sys.argv[5], max_shard_bytes=int(sys.argv[6]), device="cpu")
else:
    transplant(patch, base, device="cpu")
time.sleep(0.01)
peak[0] = max(peak[0], status_kib("RssAnon:"))
print(json.dumps({"anon_mib": (peak[0] - baseline_anon) / 1024, "rss_mib": (status_kib("VmHWM:") - baseline_rss) / 1024}))
"""


def peak_memory(kind: str, base: Path, patch: Path, *extra: str) -> dict[str, float]:
    extra = extra or (str(BATCH), str(SEQ))
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, kind, str(base), str(REPO), str(patch), *extra],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def streaming_flatness() -> None:
    """Part 4: peak memory of the streaming transplant at two model sizes, each in its own process."""
    import tempfile

    from portllm_engine.models import tensor_index, weight_files

    rows = []
    for layers in STREAM_LAYERS:
        base, patch = build_model(f"llama-{layers}l-sharded", layers, max_shard_size=SHARD_BYTES)
        params = sum(math.prod(shape) for _, shape, _ in tensor_index(base).values())
        base_mib = sum(f.stat().st_size for f in weight_files(base)) / 1024**2
        with tempfile.TemporaryDirectory(dir=CACHE) as scratch:
            started = time.perf_counter()
            memory = peak_memory("stream", base, patch, str(Path(scratch) / "merged"), str(SHARD_BYTES))
            rows.append((params, base_mib, len(weight_files(base)), time.perf_counter() - started, memory))
    print(f"(4) streaming transplant to disk, float32, {SHARD_BYTES / 1000**2:.0f} MB shards in and out, LoRA r=8 all-linear")
    print(f"{'params':>8} {'base MiB':>9} {'shards':>7} {'process s':>10} {'peak anon MiB':>14} {'peak RSS MiB':>13} {'RSS/base':>9}")
    for params, base_mib, shards, wall, memory in rows:
        print(f"{params / 1e6:7.1f}M {base_mib:9.1f} {shards:7d} {wall:10.1f} {memory['anon_mib']:14.1f} {memory['rss_mib']:13.1f} {memory['rss_mib'] / base_mib:9.2f}")
    (_, small_mib, _, _, small), (_, large_mib, _, _, large) = rows
    print(f"    model grew {large_mib / small_mib:.2f}x; peak grew {large['anon_mib'] / small['anon_mib']:.2f}x (anon), "
          f"{large['rss_mib'] / small['rss_mib']:.2f}x (RSS)  target <= 1.30x")


def main() -> None:
    import warnings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streaming", action="store_true", help="run part 4 (streaming transplant memory) alone")
    args = parser.parse_args()

    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    CACHE.mkdir(parents=True, exist_ok=True)
    if args.streaming:
        streaming_flatness()
        return
    base, patch = build_big_model()
    lazy_s, load_s, transplant_s, params = load_vs_transplant(base, patch)
    retune_s, demo_transplant_s, demo_root = retune_vs_transplant()
    train_mem = peak_memory("train", base, patch)
    transplant_mem = peak_memory("transplant", base, patch)
    print(f"model: random Llama, {params / 1e6:.1f} M parameters, float32, LoRA r=8 on all linear layers")
    print(f"(3) compares one LoRA training step (batch {BATCH}, seq {SEQ}) with a transplant, each in its own process")
    print(f"{'measure':52} {'other':>10} {'transplant':>10} {'ratio':>8}  target")
    print(f"{'(1) time: load (weights in memory) vs load+merge (s)':52} {load_s:10.3f} {transplant_s:10.3f} {transplant_s / load_s:8.3f}  <= 1.10")
    print(f"{'    (lazy mmap load, nothing copied, for reference)':52} {lazy_s:10.3f} {transplant_s:10.3f} {transplant_s / lazy_s:8.3f}")
    print(f"{'(2) time: re-fine-tune vs transplant, demo v2 (s)':52} {retune_s:10.2f} {demo_transplant_s:10.3f} {retune_s / demo_transplant_s:7.1f}x  >= 100x")
    for key, label in (("anon_mib", "tensors (RssAnon)"), ("rss_mib", "RSS, mapped file too")):
        name = f"(3) peak MiB above baseline, {label}"
        print(f"{name:52} {train_mem[key]:10.1f} {transplant_mem[key]:10.1f} {train_mem[key] / transplant_mem[key]:7.1f}x  >= 10x")
    print(f"demo world: {demo_root}")
    streaming_flatness()


if __name__ == "__main__":
    main()
