"""Our KPI scoring vs lm-evaluation-harness, side by side on the same model and suites.

A Llama of ~135 M parameters (12 layers, hidden 768, a Llama-2-sized vocabulary of 32 k) (random weights, built locally with a BPE tokenizer trained here) and
three generated suites: yes/no questions (one-token answers), 4-choice questions with
multi-token answers, and the yes/no questions after one shared instruction with two worked
examples (a team's suite, or an lm-eval task with a description and fixed few-shot examples).
For each suite: both wall times, the ratio, and both scores (acc and acc_norm must be identical;
the largest per-choice log-likelihood difference is printed too).

It also times the model body alone (no lm_head) once over every distinct context, in the same
batches: the least work of any exact scorer that runs each context in full, so lm-eval's time over
it bounds what such a scorer can gain. On one-token answers lm-eval already runs each context once;
all that is left to gain there is its lm_head and softmax at every position.

lm-eval runs through its HF backend on the same saved model: `HFLM(pretrained=model,
tokenizer=…)` and `loglikelihood` on the requests a multiple-choice task builds (the context
and " " + choice), so its time is the scoring alone, without dataset loading. acc and acc_norm
are then computed as its `process_results` does (argmax, and argmax over log-likelihood per
character of the choice). Each side runs in its own process after a small warm-up.

Run (needs the bench extra):  pip install -e '.[bench]'  then  python bench/eval.py [--items 150]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CACHE = REPO / ".cache" / "bench"
SHAPE = {"hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 12, "num_attention_heads": 12}
VOCAB = 32000
MAX_POSITIONS = 1024
LETTERS = "abcdefghijklmnopqrstuvwxyz"
COMMON = (
    "the a of and to in is was for on that with as by at from it this be are or an which has "
    "question answer yes no true false device ships warranty dock camera lamp hub blue red green"
).split()


def words(rng: random.Random, count: int) -> list[str]:
    # Made-up words of random letters: enough distinct pieces for BPE to fill a 32 k vocabulary.
    made_up = lambda: "".join(rng.choices(LETTERS, k=rng.randint(2, 8)))  # noqa: E731
    return [rng.choice(COMMON) if rng.random() < 0.45 else made_up() for _ in range(count)]


def build_model() -> Path:
    """A random-weight Llama (float32, safetensors) with a byte-level BPE tokenizer, cached."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from portllm_engine.demo import train_bpe_tokenizer

    out = CACHE / "eval-llama"
    if (out / "model.safetensors").is_file():
        return out
    rng = random.Random(0)
    corpus = [" ".join(words(rng, 40)) + "\nQuestion: is it? Answer: yes no" for _ in range(20000)]
    train_bpe_tokenizer(corpus, out, VOCAB, MAX_POSITIONS)
    tokenizer = AutoTokenizer.from_pretrained(out)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), max_position_embeddings=MAX_POSITIONS, num_key_value_heads=SHAPE["num_attention_heads"],
        tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **SHAPE,
    )
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    return out


def suites(n: int) -> dict[str, list[dict]]:
    """Seeded suites in our format; the context ends with lm-eval's " " delimiter."""
    rng = random.Random(1)
    yes_no, four = [], []
    for _ in range(n):
        passage = " ".join(words(rng, rng.randint(30, 70)))
        question = " ".join(words(rng, rng.randint(4, 9)))
        yes_no.append({
            "kind": "multiple_choice", "context": f"{passage}\nQuestion: {question}?\nAnswer: ",
            "choices": ["no", "yes"], "gold": rng.randrange(2),
        })
        choices = [" ".join(words(rng, rng.randint(2, 7))) for _ in range(4)]
        four.append({
            "kind": "multiple_choice", "context": f"{passage}\nQuestion: {question}?\nAnswer: ",
            "choices": choices, "gold": rng.randrange(4),
        })
    header = instruction_header()
    with_header = [{**item, "context": header + item["context"]} for item in yes_no]
    return {
        "yes/no, one-token answers": yes_no,
        "4 choices, multi-token answers": four,
        "yes/no after a shared instruction and 2 examples": with_header,
    }


def instruction_header() -> str:
    """An instruction and two worked examples, the same before every item (own seed: the other
    suites stay as they were)."""
    rng = random.Random(2)
    examples = [
        f"{' '.join(words(rng, 50))}\nQuestion: {' '.join(words(rng, 6))}?\nAnswer: {rng.choice(['yes', 'no'])}\n\n" for _ in range(2)
    ]
    return "Read the passage and answer the question with yes or no.\n\n" + "".join(examples)


def lm_eval_scores(lm, items: list[dict]) -> tuple[float, list[list[float]], list[int], list[int]]:
    """lm-eval's loglikelihood on the requests its multiple-choice task would build."""
    import numpy as np
    from lm_eval.api.instance import Instance

    requests = []
    for i, item in enumerate(items):
        context = item["context"].removesuffix(" ")  # lm-eval adds the delimiter to the choice
        for j, choice in enumerate(item["choices"]):
            requests.append(Instance("loglikelihood", doc=item, arguments=(context, " " + choice), idx=j, metadata=("bench", i, 1)))
    started = time.perf_counter()
    results = lm.loglikelihood(requests, disable_tqdm=True)
    elapsed = time.perf_counter() - started
    lls, offset = [], 0
    for item in items:
        lls.append([ll for ll, _ in results[offset : offset + len(item["choices"])]])
        offset += len(item["choices"])
    preds = [int(np.argmax(own)) for own in lls]
    preds_norm = [int(np.argmax(np.array(own) / np.array([float(len(c)) for c in item["choices"]]))) for own, item in zip(lls, items)]
    return elapsed, lls, preds, preds_norm


def token_counts(tokenizer, items: list[dict]) -> str:
    from portllm_engine.kpi import encode_pair

    pairs = [encode_pair(tokenizer, item["context"], choice) for item in items for choice in item["choices"]]
    context = sum(len(c) for c, _ in pairs) / len(pairs)
    answer = sum(len(a) for _, a in pairs) / len(pairs)
    return f"contexts {context:.0f} tokens, answers {answer:.1f} tokens on average"


def measure(side: str, suite: str, items_count: int, batch_size: int) -> dict:
    """One side on one suite, in this process: seconds, predictions and log-likelihoods."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from portllm_engine.kpi import evaluate
    from portllm_engine.prompt import RAW, PromptFormat

    hf_logging.set_verbosity_error()
    path = build_model()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    items, warm = suites(items_count)[suite], suites(4)[suite]  # the warm-up pays one-off costs
    if side == "ours":
        # lm-eval without --apply_chat_template scores the text as written.
        evaluate(model, tokenizer, warm, fmt=PromptFormat(RAW), batch_size=batch_size)
        result = evaluate(model, tokenizer, items, fmt=PromptFormat(RAW), batch_size=batch_size)
        return {
            "seconds": result.duration_s,
            "body_seconds": body_seconds(model, tokenizer, items, batch_size),
            "lls": [row["loglikelihoods"] for row in result.items],
            "preds": [row["pred"] for row in result.items],
            "preds_norm": [row["pred_norm"] for row in result.items],
        }
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    lm_eval_scores(lm, warm)
    seconds, lls, preds, preds_norm = lm_eval_scores(lm, items)
    return {"seconds": seconds, "lls": lls, "preds": preds, "preds_norm": preds_norm}


def body_seconds(model, tokenizer, items: list[dict], batch_size: int) -> float:
    """The transformer body without the lm_head, once over every distinct context, longest first."""
    import torch

    from portllm_engine.kpi import encode_pair

    distinct = {tuple(encode_pair(tokenizer, item["context"], choice)[0]) for item in items for choice in item["choices"]}
    contexts = sorted(distinct, key=len, reverse=True)
    body = model.get_decoder()
    started = time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(contexts), batch_size):
            batch = contexts[start : start + batch_size]
            body(input_ids=torch.tensor([list(c) + [0] * (len(batch[0]) - len(c)) for c in batch]), use_cache=False)
    return time.perf_counter() - started


def run_side(side: str, suite: str, args) -> dict:
    """Each side in a fresh process: in one process, lm-eval's full-vocabulary logits left the
    allocator in a state that slowed our small KV-cache forwards by half or more."""
    command = [sys.executable, __file__, "--side", side, "--suite", suite, "--items", str(args.items), "--batch-size", str(args.batch_size)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{side} on {suite} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def accuracy(preds: list[int], items: list[dict]) -> float:
    return sum(p == item["gold"] for p, item in zip(preds, items)) / len(items)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=150, help="items per suite (100–200 is the target range)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--side", choices=["ours", "lm-eval"], help=argparse.SUPPRESS)  # a child process
    parser.add_argument("--suite", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print(json.dumps(measure(args.side, args.suite, args.items, args.batch_size)))
        return 0

    import torch
    from transformers import AutoConfig, AutoTokenizer

    path = build_model()
    tokenizer = AutoTokenizer.from_pretrained(path)
    config = AutoConfig.from_pretrained(path)
    params = (path / "model.safetensors").stat().st_size / 4 / 1e6  # float32 weights
    print(f"model: Llama {params:.0f} M parameters, {config.num_hidden_layers} layers, hidden {config.hidden_size}, vocab {len(tokenizer)}; "
          f"{torch.get_num_threads()} CPU threads, batch size {args.batch_size}", flush=True)
    identical = True
    for k, (suite, items) in enumerate(suites(args.items).items()):
        # Each side first in turn, so a slower stretch of a shared machine does not always hit the same one.
        order = ("ours", "lm-eval") if k % 2 == 0 else ("lm-eval", "ours")
        runs = {side: run_side(side, suite, args) for side in order}
        ours, theirs = runs["ours"], runs["lm-eval"]
        same = ours["preds"] == theirs["preds"] and ours["preds_norm"] == theirs["preds_norm"]
        identical &= same
        drift = max(abs(a - b) for mine, own in zip(ours["lls"], theirs["lls"]) for a, b in zip(mine, own))
        print(
            f"\n{suite} ({len(items)} items, {token_counts(tokenizer, items)})\n"
            f"  ours     {ours['seconds']:7.1f} s   acc {accuracy(ours['preds'], items):.3f}  acc_norm {accuracy(ours['preds_norm'], items):.3f}\n"
            f"  lm-eval  {theirs['seconds']:7.1f} s   acc {accuracy(theirs['preds'], items):.3f}  acc_norm {accuracy(theirs['preds_norm'], items):.3f}\n"
            f"  ratio    {theirs['seconds'] / ours['seconds']:7.2f}x faster; per-item predictions identical: {same}; "
            f"largest log-likelihood difference {drift:.1e}\n"
            f"  body     {ours['body_seconds']:7.1f} s   the model body alone (no lm_head) once over each distinct context: "
            f"ours takes {ours['seconds'] / ours['body_seconds']:.2f}x of it, lm-eval {theirs['seconds'] / ours['body_seconds']:.2f}x",
            flush=True,
        )
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
