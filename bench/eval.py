"""Our KPI scoring vs lm-evaluation-harness, side by side on the same model and suites.

A Llama of ~135 M parameters (12 layers, hidden 768, a Llama-2-sized vocabulary of 32 k) (random weights, built locally with a BPE tokenizer trained here) and
two generated suites: yes/no questions (one-token answers) and 4-choice questions with
multi-token answers. For each suite: both wall times, the ratio, and both scores (acc and
acc_norm must be identical; the largest per-choice log-likelihood difference is printed too).

lm-eval runs through its HF backend on the same model object: `HFLM(pretrained=model,
tokenizer=…)` and `loglikelihood` on the requests a multiple-choice task builds (the context
and " " + choice), so its time is the scoring alone, without dataset loading. acc and acc_norm
are then computed as its `process_results` does (argmax, and argmax over log-likelihood per
character of the choice).

Run (needs the bench extra):  pip install -e '.[bench]'  then  python bench/eval.py [--items 150]
"""
from __future__ import annotations

import argparse
import os
import random
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
    return {"yes/no, one-token answers": yes_no, "4 choices, multi-token answers": four}


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=150, help="items per suite (100–200 is the target range)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--slice", type=int, default=16, help="items per alternating slice")
    args = parser.parse_args()

    import torch
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from portllm_engine.kpi import evaluate

    hf_logging.set_verbosity_error()
    path = build_model()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=args.batch_size)
    print(f"model: Llama {params:.0f} M parameters, vocab {len(tokenizer)}, {torch.get_num_threads()} CPU threads, batch size {args.batch_size}")
    warm = suites(4)["4 choices, multi-token answers"]  # first calls pay one-off costs on both sides
    evaluate(model, tokenizer, warm, batch_size=args.batch_size)
    lm_eval_scores(lm, warm)

    identical = True
    for name, items in suites(args.items).items():
        # Alternating slices, each side first in turn: load from other processes on a shared
        # machine then falls on both sides alike instead of on whichever ran second.
        ours_s = theirs_s = 0.0
        rows, lls, preds, preds_norm = [], [], [], []
        for k, start in enumerate(range(0, len(items), args.slice)):
            part = items[start : start + args.slice]
            for side in (("ours", "lm-eval") if k % 2 == 0 else ("lm-eval", "ours")):
                if side == "ours":
                    result = evaluate(model, tokenizer, part, batch_size=args.batch_size)
                    ours_s += result.duration_s
                    rows += result.items
                else:
                    elapsed, own_lls, own_preds, own_norm = lm_eval_scores(lm, part)
                    theirs_s += elapsed
                    lls, preds, preds_norm = lls + own_lls, preds + own_preds, preds_norm + own_norm
        acc = {side: sum(p == item["gold"] for p, item in zip(predicted, items)) / len(items)
               for side, predicted in (("ours", [r["pred"] for r in rows]), ("lm-eval", preds))}
        acc_norm = {side: sum(p == item["gold"] for p, item in zip(predicted, items)) / len(items)
                    for side, predicted in (("ours", [r["pred_norm"] for r in rows]), ("lm-eval", preds_norm))}
        same = [r["pred"] for r in rows] == preds and [r["pred_norm"] for r in rows] == preds_norm
        identical &= same
        drift = max(abs(a - b) for row, own in zip(rows, lls) for a, b in zip(row["loglikelihoods"], own))
        print(
            f"\n{name} ({len(items)} items, {token_counts(tokenizer, items)})\n"
            f"  ours     {ours_s:7.1f} s   acc {acc['ours']:.3f}  acc_norm {acc_norm['ours']:.3f}\n"
            f"  lm-eval  {theirs_s:7.1f} s   acc {acc['lm-eval']:.3f}  acc_norm {acc_norm['lm-eval']:.3f}\n"
            f"  ratio    {theirs_s / ours_s:7.2f}x faster; per-item predictions identical: {same}; "
            f"largest log-likelihood difference {drift:.1e}",
            flush=True,
        )
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
