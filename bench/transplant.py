"""Transplant vs the alternatives, measured side by side in one run.

1. base load time vs transplant (load + merge) on a random Llama of ~70 M parameters;
2. re-fine-tuning the demo patch on the demo's v2 with the demo recipe vs transplanting it;
3. peak memory above the process baseline: one LoRA training step (seq 512, batch 8) vs a
   transplant, on the same ~70 M model, each in its own subprocess;
4. the transplant to disk (`engine transplant --out`) vs `cp -r` of the base, on a Llama-3.2-3B-shaped
   bf16 checkpoint (7 shards of at most 1 GiB, random weights, written from its config without
   holding it in memory) with a rank-16 LoRA on all linear layers: wall time of each, interleaved,
   and the transplant's peak anonymous memory (target <= 512 MiB at any size, time <= 6x cp -r).
   --layers picks a smaller model of the same width where disk or time is short.

Run: python bench/transplant.py                        (builds what it needs under .cache/bench; reuses the demo world)
     python bench/transplant.py --to-disk [--layers N]  (part 4 alone; 28 layers is the 3B shape, ~6.7 GiB)
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
# Part 4: Llama-3.2-3B's shape, with the output layer untied (as the 7-shard, 7.2 GB checkpoint has it).
LLAMA_3B = {
    "vocab_size": 128256, "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 28,
    "num_attention_heads": 24, "num_key_value_heads": 8, "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": False,
}
LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DISK_SHARD_BYTES = 1024**3
DISK_RANK, DISK_ALPHA = 16, 32
ROUNDS = 3


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


# What both probes below start with: the kernel keeps no peak of anonymous memory alone (VmHWM
# counts mapped files too), so once started a thread samples RssAnon every millisecond.
ANON_PEAK = r"""
import threading, time

def status_kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])

peak = [0]
def sample():
    while True:
        peak[0] = max(peak[0], status_kib("RssAnon:"))
        time.sleep(0.001)

def start_sampling():
    threading.Thread(target=sample, daemon=True).start()
"""

# Peak of anonymous memory (tensors, activations): mapped safetensors pages are page cache shared
# with the OS, the CPU analogue of what a GPU would not hold in device memory.
MEMORY_PROBE = ANON_PEAK + r"""
import json, os, sys, torch
sys.path.insert(0, sys.argv[3])
from portllm_engine.models import load_base
from portllm_engine.transplant import transplant

torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
import peft, transformers  # imports are part of the baseline, not of the work
baseline_anon, baseline_rss = status_kib("RssAnon:"), status_kib("VmRSS:")
open("/proc/self/clear_refs", "w").write("5")  # reset the VmHWM peak to now
start_sampling()
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


def peak_memory(kind: str, base: Path, patch: Path, *extra: str) -> dict[str, float]:
    extra = extra or (str(BATCH), str(SEQ))
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, kind, str(base), str(REPO), str(patch), *extra],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def llama_3b_tensors(layers: int) -> list[tuple[str, list[int]]]:
    """Checkpoint names and shapes of a Llama-3.2-3B-shaped model with `layers` layers, in HF's order."""
    h, i, v = LLAMA_3B["hidden_size"], LLAMA_3B["intermediate_size"], LLAMA_3B["vocab_size"]
    kv = LLAMA_3B["num_key_value_heads"] * h // LLAMA_3B["num_attention_heads"]
    shapes = {"q_proj": [h, h], "k_proj": [kv, h], "v_proj": [kv, h], "o_proj": [h, h],
              "gate_proj": [i, h], "up_proj": [i, h], "down_proj": [h, i]}
    tensors = [("model.embed_tokens.weight", [v, h])]
    for layer in range(layers):
        prefix = f"model.layers.{layer}"
        tensors += [(f"{prefix}.input_layernorm.weight", [h]), (f"{prefix}.post_attention_layernorm.weight", [h])]
        tensors += [(f"{prefix}.{'mlp' if 'p_proj' in name or name == 'down_proj' else 'self_attn'}.{name}.weight", shape)
                    for name, shape in shapes.items()]
    return tensors + [("model.norm.weight", [h]), ("lm_head.weight", [v, h])]


def build_llama_3b(layers: int, dtype: str = "bfloat16") -> tuple[Path, Path]:
    """The checkpoint (bf16, or float32), written shard by shard from a 32 MiB pool of random values (never whole in
    memory), its tokenizer and config, and an imported rank-16 all-linear LoRA patch for it."""
    import torch
    from peft import LoraConfig
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    from portllm_engine.demo import train_bpe_tokenizer
    from portllm_engine.patches import import_peft

    name = f"llama-3b-shape-{layers}l" + ("" if dtype == "bfloat16" else f"-{dtype}")
    base, peft_dir, patch = CACHE / name, CACHE / f"{name}-peft", CACHE / f"{name}-patch"
    if (patch / "portllm.json").is_file():
        return base, patch
    base.mkdir(parents=True, exist_ok=True)
    train_bpe_tokenizer([f"word{i} token{i % 97} piece{i % 13}" for i in range(4000)], base, VOCAB, 1024)
    LlamaConfig(**{**LLAMA_3B, "num_hidden_layers": layers}, torch_dtype=dtype).save_pretrained(base)
    generator = torch.Generator().manual_seed(0)
    torch_dtype = getattr(torch, dtype)
    size_of, stored_as = torch_dtype.itemsize, {"bfloat16": "BF16", "float32": "F32"}[dtype]
    pool = (torch.randn(16 * 1024**2, generator=generator) * 0.02).to(torch_dtype).view(torch.uint8).numpy().tobytes()
    shards, size = [[]], 0
    for key, shape in llama_3b_tensors(layers):
        nbytes = size_of * math.prod(shape)
        if shards[-1] and size + nbytes > DISK_SHARD_BYTES:
            shards, size = shards + [[]], 0
        shards[-1].append((key, shape, nbytes))
        size += nbytes
    weight_map, total, cursor = {}, 0, 0
    for number, tensors in enumerate(shards, 1):
        file = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for key, shape, nbytes in tensors:
            header[key] = {"dtype": stored_as, "shape": shape, "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
            weight_map[key] = file
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        with open(base / file, "wb") as fh:
            fh.write(len(raw).to_bytes(8, "little") + raw)
            for key, shape, nbytes in tensors:
                while nbytes:  # each tensor starts elsewhere in the pool, so no two are equal
                    cursor = (cursor + size_of * 7919) % len(pool)
                    chunk = min(nbytes, len(pool) - cursor)
                    fh.write(memoryview(pool)[cursor : cursor + chunk])
                    nbytes -= chunk
        total += offset
    (base / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    factors = {}
    for key, shape in llama_3b_tensors(layers):
        module = key.removesuffix(".weight")
        if module.rsplit(".", 1)[-1] in LINEAR:
            out_features, in_features = shape
            factors[f"base_model.model.{module}.lora_A.weight"] = torch.randn(DISK_RANK, in_features, generator=generator) * 0.01
            factors[f"base_model.model.{module}.lora_B.weight"] = torch.randn(out_features, DISK_RANK, generator=generator) * 0.01
    peft_dir.mkdir(parents=True, exist_ok=True)
    LoraConfig(r=DISK_RANK, lora_alpha=DISK_ALPHA, target_modules=list(LINEAR), task_type="CAUSAL_LM").save_pretrained(peft_dir)
    save_file(factors, str(peft_dir / "adapter_model.safetensors"), metadata={"format": "pt"})
    import_peft(peft_dir, patch, base)
    return base, patch


# Merged blocks live for milliseconds, and the writer queue bounds how many are alive at once.
DISK_PROBE = ANON_PEAK + r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import torch  # the CLI imports it before the transplant starts, too
from portllm_engine.transplant import transplant_to_dir

baseline = status_kib("RssAnon:")
start_sampling()
started = time.perf_counter()
transplant_to_dir(sys.argv[2], sys.argv[3], sys.argv[4], device="cpu")
seconds = time.perf_counter() - started
peak[0] = max(peak[0], status_kib("RssAnon:"))
print(json.dumps({"seconds": seconds, "baseline_anon_mib": baseline / 1024, "peak_anon_mib": peak[0] / 1024}))
"""


def transplant_to_disk_vs_copy(layers: int, dtype: str = "bfloat16") -> None:
    """Part 4: `cp -r` of the base and the transplant to disk, interleaved, each starting with no dirty pages."""
    import shutil

    from portllm_engine.models import tensor_index, weight_files

    base, patch = build_llama_3b(layers, dtype)
    params = sum(math.prod(shape) for _, shape, _ in tensor_index(base).values())
    base_gib = sum(f.stat().st_size for f in weight_files(base)) / 1024**3
    target = CACHE / "to-disk-out"
    copies, runs = [], []
    for _ in range(ROUNDS):
        for kind in ("cp", "transplant"):
            shutil.rmtree(target, ignore_errors=True)
            subprocess.run(["sync"], check=True)
            started = time.perf_counter()
            if kind == "cp":
                subprocess.run(["cp", "-r", str(base), str(target)], check=True)
                copies.append(time.perf_counter() - started)
                continue
            child = subprocess.Popen([sys.executable, "-c", DISK_PROBE, str(REPO), str(patch), str(base), str(target)],
                                     stdout=subprocess.PIPE, text=True)
            output = child.stdout.read()
            _, status, usage = os.wait4(child.pid, 0)
            if status != 0:
                raise SystemExit(f"the transplant failed (status {status})")
            result = json.loads(output.strip().splitlines()[-1])
            runs.append({**result, "process_s": time.perf_counter() - started, "maxrss_mib": usage.ru_maxrss / 1024})
    check_one_merge(base, patch, target)
    shutil.rmtree(target, ignore_errors=True)
    print(f"(4) transplant to disk vs cp -r: Llama-3.2-3B shape, {layers} layers, {params / 1e9:.2f} B parameters, "
          f"{dtype}, {base_gib:.2f} GiB in {len(weight_files(base))} shards, LoRA r={DISK_RANK} on all linear layers; "
          f"{ROUNDS} rounds, interleaved, median")
    cp_s, merge_s = statistics.median(copies), statistics.median(r["seconds"] for r in runs)
    process_s = statistics.median(r["process_s"] for r in runs)
    print(f"{'measure':52} {'cp -r':>10} {'transplant':>10} {'ratio':>8}  target")
    print(f"{'    wall time, transplant_to_dir alone (s)':52} {cp_s:10.2f} {merge_s:10.2f} {merge_s / cp_s:8.2f}  <= 6")
    print(f"{'    wall time, whole process with imports (s)':52} {cp_s:10.2f} {process_s:10.2f} {process_s / cp_s:8.2f}")
    peak = max(r["peak_anon_mib"] for r in runs)
    baseline = max(r["baseline_anon_mib"] for r in runs)
    print(f"{'    peak anonymous memory, whole process (MiB)':52} {'':10} {peak:10.0f} {'':8}  <= 512")
    print(f"{'    of which the process once torch is imported (MiB)':52} {'':10} {baseline:10.0f}")
    print(f"{'    peak RSS incl. mapped files, ru_maxrss (MiB)':52} {'':10} {max(r['maxrss_mib'] for r in runs):10.0f}")
    each = ", ".join(f"{run['seconds']:.2f}" for run in runs)
    print(f"    all runs (s): cp -r {', '.join(f'{c:.2f}' for c in copies)}; transplant {each}")


def check_one_merge(base: Path, patch: Path, out: Path) -> None:
    """The largest adapted weight and an untouched one, against the in-memory merge."""
    import torch
    from safetensors import safe_open

    from portllm_engine.patches import adapter_weights_path, lora_modules
    from portllm_engine.transplant import merged_weight

    index = json.loads((base / "model.safetensors.index.json").read_text())["weight_map"]
    lora = lora_modules(patch)["model.layers.0.mlp.down_proj"]
    for key, adapted in (("model.layers.0.mlp.down_proj.weight", True), ("model.embed_tokens.weight", False)):
        with safe_open(str(base / index[key]), "pt") as before, safe_open(str(out / index[key]), "pt") as after:
            expected = before.get_tensor(key)
            if adapted:
                with safe_open(str(adapter_weights_path(patch)), "pt") as factors:
                    expected = merged_weight(expected, factors.get_tensor(lora.a_key), factors.get_tensor(lora.b_key), lora)
            if not torch.equal(after.get_tensor(key), expected):
                raise SystemExit(f"{key} differs from the in-memory merge")


def main() -> None:
    import warnings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--to-disk", action="store_true", help="run part 4 (transplant to disk vs cp -r) alone")
    parser.add_argument("--layers", type=int, default=LLAMA_3B["num_hidden_layers"], help="part 4's layers (28: the 3B shape)")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16",
                        help="part 4's weights (float32 weights are merged whole, by one addmm, between mapped files)")
    args = parser.parse_args()

    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    CACHE.mkdir(parents=True, exist_ok=True)
    if args.to_disk:
        transplant_to_disk_vs_copy(args.layers, args.dtype)
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
    transplant_to_disk_vs_copy(args.layers)


if __name__ == "__main__":
    main()
