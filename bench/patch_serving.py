"""Serving speed, measured side by side in one run on the demo world:

- decode tokens/s of the base alone, the base with the patch merged (what a transplant
  produces), and the base with the patch attached unmerged (PEFT adapter, PatchServer);
  target: merged >= 0.95x base (a merged patch costs nothing at inference);
- time to switch between two patches attached to one resident base (target < 50 ms);
- time to first token of a streamed answer (merged model, and through PatchServer).

The three models are measured in interleaved rounds (order rotated) so that load on the machine
hits them alike; ratios are paired per round, then the median is taken.
    python bench/patch_serving.py [--tokens 64] [--rounds 15] [--base v2] [--threads 1] [--device cuda]
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def decode_tokens_per_s(model, input_ids, tokens: int) -> float:
    import torch

    with torch.no_grad():
        started = time.perf_counter()
        out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=tokens,
                             min_new_tokens=tokens, do_sample=False, pad_token_id=0)
        elapsed = time.perf_counter() - started
    assert out.shape[1] - input_ids.shape[1] == tokens
    return tokens / elapsed


def first_token_s(chunks) -> float:
    """Prompt in, first piece of the answer out (an immediate end of answer counts the same)."""
    started = time.perf_counter()
    next(iter(chunks), None)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64, help="tokens decoded per measurement")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds per model")
    parser.add_argument("--base", default="v2", help="demo base version to serve on")
    parser.add_argument("--switches", type=int, default=50, help="patch switches to time")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch (fewer = less noise on a shared box)")
    args = parser.parse_args()

    import torch

    from portllm_engine.demo import build_demo_world
    from portllm_engine.generate import stream_generate
    from portllm_engine.prompt import render, user_turn
    from portllm_engine.models import load_base, pick_device
    from portllm_engine.transplant import PatchServer, merge_into
    from tests.fixtures.demo_world import demo_cache_dir

    device = args.device or pick_device()
    torch.set_num_threads(args.threads)
    world = build_demo_world(demo_cache_dir())
    base_dir = world.bases[args.base]
    question = world.questions[0] if world.questions else "What is the warranty of the product?"

    base, tokenizer = load_base(base_dir, device=device)
    merged = merge_into(load_base(base_dir, device=device)[0], world.patch)  # as a transplant builds it
    server = PatchServer(base_dir, device=device)
    scratch = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    try:
        # A second attached patch to switch to: a copy under another name costs the same to switch.
        second = scratch / "patch-b"
        shutil.copytree(world.patch, second)
        server.attach("a", world.patch)
        server.attach("b", second)

        input_ids = torch.tensor([render(tokenizer, user_turn(question)).ids], device=device)
        def attached():
            with server.use("a") as model:
                return decode_tokens_per_s(model, input_ids, args.tokens)

        measure = {
            "base alone": lambda: decode_tokens_per_s(base, input_ids, args.tokens),
            "merged patch": lambda: decode_tokens_per_s(merged, input_ids, args.tokens),
            "attached patch": attached,
        }
        rates: dict[str, list[float]] = {label: [] for label in measure}
        with server.use("a") as model:  # warm-up, not timed
            decode_tokens_per_s(model, input_ids, 4)
        decode_tokens_per_s(base, input_ids, 4)
        decode_tokens_per_s(merged, input_ids, 4)
        order = list(measure)
        for round_ in range(args.rounds):
            for label in order[round_ % 3:] + order[: round_ % 3]:  # rotate: no model always goes first
                rates[label].append(measure[label]())

        switches = []
        for i in range(args.switches):
            started = time.perf_counter()
            with server.use("b" if i % 2 else "a"):
                switches.append(time.perf_counter() - started)

        ttft_merged = [first_token_s(stream_generate(merged, tokenizer, user_turn(question), max_new_tokens=16)) for _ in range(args.rounds)]
        ttft_server = [first_token_s(server.generate("a", user_turn(question), max_new_tokens=16)) for _ in range(args.rounds)]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    med = {label: statistics.median(values) for label, values in rates.items()}
    # Ratios paired within each round, then the median: load from other processes shifts whole
    # rounds, and pairing cancels most of it.
    paired = {label: statistics.median(v / b for v, b in zip(values, rates["base alone"])) for label, values in rates.items()}
    print(f"device {device}, base {args.base}, {args.tokens} tokens x {args.rounds} interleaved rounds, "
          f"{args.threads} thread(s)")
    print(f"{'model':<16}{'tokens/s (median)':>18}{'vs base (paired)':>18}")
    for label in rates:
        print(f"{label:<16}{med[label]:>18.1f}{paired[label]:>17.2f}x")
    ratio = paired["merged patch"]
    switch_ms = statistics.median(switches) * 1000
    print(f"merged / base      {ratio:.2f}x   (target >= 0.95x: {'met' if ratio >= 0.95 else 'NOT met'})")
    print(f"switch a<->b       {switch_ms:.3f} ms median, {max(switches) * 1000:.3f} ms max over {args.switches}"
          f"   (target < 50 ms: {'met' if switch_ms < 50 else 'NOT met'})")
    print(f"first token        merged {statistics.median(ttft_merged) * 1000:.1f} ms, "
          f"attached (PatchServer) {statistics.median(ttft_server) * 1000:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
