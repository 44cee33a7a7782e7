"""PortLLM's table on a demo world (`--model tiny`, the default, or `--model smollm2`, the real
SmolLM2-135M-Instruct): for each evolved base, what each way of getting a working patch gives and
costs, measured side by side in one run.

Per base (three drift levels: v2 by mild continued pretraining, v1 moved halfway to v3 by weight
interpolation, v3 by heavy continued pretraining), four rows:
  base alone            the evolved base, no patch;
  transplant            the v1 patch merged onto the base (PortLLM: no training);
  fresh patch           a patch trained from scratch on the base with the v1 patch's recipe;
  re-tune               the v1 patch fine-tuned on the base, warm-started, as the worker's fallback does.
KPI accuracy is the world's suite (Wilson 95 % interval), scored as runs score it: the patch
attached, in the assistant's prompt format. "kept" is the share of the fresh patch's gain over the
base alone that the transplant keeps. Wall time and peak memory are those of producing the patched
weights (merge, or training), each in its own process on one thread, peak anonymous memory above
that process's baseline after imports.

Run: python bench/paper.py [--model smollm2]   (reuses the world; builds the interpolated base under .cache/bench)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CACHE = REPO / ".cache" / "bench" / "paper"
MODELS = {  # the world builder and its patch recipe
    "tiny": ("portllm_engine.demo", "build_demo_world"),
    "smollm2": ("portllm_engine.worlds.smollm2", "build_world"),
}
HALFWAY = "v1→v3 ½"

# Producing a patch, in a process of its own: time and peak anonymous memory of the work only.
PRODUCE = r"""
import json, sys, threading, time
sys.path.insert(0, sys.argv[1])
spec = json.loads(sys.argv[2])

def rss_anon_kib():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1])

import torch, transformers, peft  # imports are the baseline, not the work
torch.set_num_threads(1)
from portllm_engine.patches import train_patch
from portllm_engine.transplant import transplant
baseline, peak = rss_anon_kib(), [0]
def sample():
    while True:
        peak[0] = max(peak[0], rss_anon_kib())
        time.sleep(0.005)
threading.Thread(target=sample, daemon=True).start()
started = time.perf_counter()
if spec["kind"] == "transplant":
    model, _ = transplant(spec["patch"], spec["base"], device="cpu")
else:
    train_patch(spec["base"], spec["data"], spec["out"], device="cpu", system_prompt=spec["system_prompt"], **spec["train"])
wall = time.perf_counter() - started
peak[0] = max(peak[0], rss_anon_kib())
print(json.dumps({"wall_s": wall, "peak_mib": (peak[0] - baseline) / 1024}))
"""


def produce(spec: dict) -> dict:
    done = subprocess.run([sys.executable, "-c", PRODUCE, str(REPO), json.dumps(spec, default=str)],
                          check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(done.stdout.strip().splitlines()[-1])


def halfway_base(world) -> Path:
    """v1 moved halfway to v3, tensor by tensor: a base whose drift lies between v2's and v3's."""
    import shutil

    from safetensors.torch import load_file, save_file

    out = CACHE / f"{world.root.name}-v1-v3-half"
    if (out / "config.json").is_file():
        return out
    staging = Path(tempfile.mkdtemp(dir=CACHE))
    shutil.copytree(world.bases["v1"], staging, dirs_exist_ok=True)
    for weights in world.bases["v1"].glob("*.safetensors"):
        v1, v3 = load_file(weights), load_file(world.bases["v3"] / weights.name)
        save_file({k: (v1[k].float() + 0.5 * (v3[k].float() - v1[k].float())).to(v1[k].dtype).contiguous()
                   for k in v1}, staging / weights.name, metadata={"format": "pt"})
    os.rename(staging, out)
    return out


def score(patch: Path | None, base: Path, items, system_prompt: str) -> tuple[float, tuple[float, float]]:
    from portllm_engine.kpi import evaluate
    from portllm_engine.prompt import PromptFormat
    from portllm_engine.transplant import PatchServer

    server = PatchServer(base, device="cpu")  # as a run scores it: the patch attached
    if patch is not None:
        server.attach("patch", patch)
    with server.use("patch" if patch is not None else None) as model:
        result = evaluate(model, server.tokenizer, items, fmt=PromptFormat(system_prompt=system_prompt))
    return result.accuracy, tuple(result.ci95)


def main() -> None:
    import torch
    from transformers.utils import logging as hf_logging

    import argparse
    import importlib

    from portllm_core.settings import Settings
    from portllm_engine.drift import measure_drift
    from portllm_engine.kpi import load_suite
    from portllm_engine.patches import read_manifest

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    torch.set_num_threads(1)
    CACHE.mkdir(parents=True, exist_ok=True)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny")
    model = parser.parse_args().model
    module = importlib.import_module(MODELS[model][0])
    build, recipe = getattr(module, MODELS[model][1]), module.RECIPE
    root = Path(os.environ.get("PORTLLM_DEMO_CACHE") or REPO / ".cache" / "demo-world") if model == "tiny" else None
    world = build(root)
    items = load_suite(world.suite)
    modules = list(read_manifest(world.patch).target_modules)
    bases = {"v2": world.bases["v2"], HALFWAY: halfway_base(world), "v3": world.bases["v3"]}
    # The worker's re-tune (workers/steps.py): the v1 patch warm-started, PORTLLM_RETUNE_EPOCHS epochs.
    retune = {"epochs": Settings().retune_epochs, "seed": recipe["seed"], "init_from": str(world.patch)}
    fresh = {**module.PATCH_RECIPE, "seed": recipe["seed"]}

    print(f"{model} world {world.root}; suite {len(items)} items; one CPU thread per process")
    print(f"fresh patch: {fresh['epochs']} epochs from scratch (the v1 patch's recipe); "
          f"re-tune: {retune['epochs']} epochs warm-started from the v1 patch")
    header = f"{'base':10} {'drift':>6}  {'patch':22} {'accuracy':>8} {'95% CI':>13} {'wall s':>8} {'peak MiB':>9}"
    print(header)
    print("-" * len(header))
    for name, base in bases.items():
        drift = measure_drift(world.bases["v1"], base, modules).overall
        rows = [("base alone", None, None)]
        with tempfile.TemporaryDirectory(dir=CACHE) as scratch:
            cost = produce({"kind": "transplant", "patch": world.patch, "base": base})
            rows.append(("v1 patch transplanted", world.patch, cost))
            for label, train in (("fresh patch", fresh), ("re-tune", retune)):
                out = Path(scratch) / label.replace(" ", "-")
                rows.append((label, out, produce({"kind": "train", "base": base, "data": world.train_data,
                                                  "out": out, "train": train, "system_prompt": world.system_prompt})))
            costs, accuracies = {}, {}
            for i, (label, patch, cost) in enumerate(rows):
                accuracy, (low, high) = score(patch, base, items, world.system_prompt)
                accuracies[label] = accuracy
                wall = "–" if cost is None else f"{cost['wall_s']:.2f}"
                peak = "–" if cost is None else f"{cost['peak_mib']:.1f}"
                print(f"{name if i == 0 else '':10} {f'{drift:.3f}' if i == 0 else '':>6}  {label:22} "
                      f"{accuracy * 100:7.1f}% {f'{low * 100:.0f}–{high * 100:.0f}%':>13} {wall:>8} {peak:>9}")
                costs[label] = cost
        transplant_cost = costs["v1 patch transplanted"]
        gain = accuracies["fresh patch"] - accuracies["base alone"]
        kept = (accuracies["v1 patch transplanted"] - accuracies["base alone"]) / gain if gain > 0 else float("nan")
        print(f"{'':18}  the transplant keeps {kept:.0%} of the fresh patch's gain; fresh / transplant: {costs['fresh patch']['wall_s'] / transplant_cost['wall_s']:.0f}x time, "
              f"{costs['fresh patch']['peak_mib'] / transplant_cost['peak_mib']:.1f}x memory; "
              f"re-tune / transplant: {costs['re-tune']['wall_s'] / transplant_cost['wall_s']:.0f}x time, "
              f"{costs['re-tune']['peak_mib'] / transplant_cost['peak_mib']:.1f}x memory")


if __name__ == "__main__":
    main()
