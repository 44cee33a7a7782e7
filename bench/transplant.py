"""Transplant vs the alternatives, measured side by side in one run.

1. base load time vs transplant (load + merge) on a random Llama of ~70 M parameters;
2. re-fine-tuning the demo patch on the demo's v2 with the demo recipe vs transplanting it;
3. peak memory above the process baseline: one LoRA training step (seq 512, batch 8) vs a
   transplant, on the same ~70 M model, each in its own subprocess.

Run: python bench/transplant.py   (builds what it needs under .cache/bench; reuses the demo world)
"""
from __future__ import annotations

import json
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


def build_big_model() -> tuple[Path, Path]:
    """A random ~70 M Llama (float32, safetensors) and a random r=8 all-linear LoRA patch for it.

    float32 because CPUs train in it (bf16 matmuls crawl there) and both sides must load the same model.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from portllm_engine.demo import train_bpe_tokenizer
    from portllm_engine.patches import import_peft

    base, patch = CACHE / "llama-70m", CACHE / "llama-70m-patch"
    if (patch / "portllm.json").is_file():
        return base, patch
    words = [f"word{i} token{i % 97} piece{i % 13}" for i in range(4000)]
    train_bpe_tokenizer(words, base, VOCAB, 1024)
    tokenizer = AutoTokenizer.from_pretrained(base)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB, max_position_embeddings=1024, num_key_value_heads=BIG["num_attention_heads"],
        tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **BIG,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(base, safe_serialization=True)
    peft_dir = CACHE / "llama-70m-peft"
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
from portllm_engine.transplant import transplant

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
else:
    transplant(patch, base, device="cpu")
time.sleep(0.01)
peak[0] = max(peak[0], status_kib("RssAnon:"))
print(json.dumps({"anon_mib": (peak[0] - baseline_anon) / 1024, "rss_mib": (status_kib("VmHWM:") - baseline_rss) / 1024}))
"""


def peak_memory(kind: str, base: Path, patch: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, kind, str(base), str(REPO), str(patch), str(BATCH), str(SEQ)],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    import warnings

    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    CACHE.mkdir(parents=True, exist_ok=True)
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


if __name__ == "__main__":
    main()
