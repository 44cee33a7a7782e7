"""KPI suites (JSONL) and their evaluation.

`multiple_choice` items are scored by log-likelihood exactly as lm-evaluation-harness does
(`acc`, `acc_norm`); `generate` items by greedy decoding, `exact_match` or `contains`.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from portllm_engine.errors import SuiteError
from portllm_engine.generate import context_length, cut_at_stop, greedy_batch

KINDS = ("multiple_choice", "generate")
MATCHES = ("exact", "contains")
DEFAULT_STOP = ["\n"]
DEFAULT_MAX_NEW_TOKENS = 32
_MC_KEYS = {"kind", "context", "choices", "gold"}
_GEN_KEYS = {"kind", "prompt", "target", "match", "stop", "max_new_tokens"}

Progress = Callable[[float, str], None]


def _validate(row: Any, line: int) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise SuiteError("each line must be a JSON object", line=line)
    kind = row.get("kind")
    if kind not in KINDS:
        raise SuiteError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}", line=line)
    if kind == "multiple_choice":
        if not isinstance(row.get("context"), str):
            raise SuiteError("multiple_choice needs a string 'context'", line=line)
        choices = row.get("choices")
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise SuiteError("multiple_choice needs 'choices': a list of at least two strings", line=line)
        gold = row.get("gold")
        if not isinstance(gold, int) or isinstance(gold, bool) or not 0 <= gold < len(choices):
            raise SuiteError(f"'gold' must be an index into choices (0..{len(choices) - 1})", line=line)
    else:
        if not isinstance(row.get("prompt"), str) or not isinstance(row.get("target"), str):
            raise SuiteError("generate needs string 'prompt' and 'target'", line=line)
        row.setdefault("match", "exact")
        if row["match"] not in MATCHES:
            raise SuiteError(f"'match' must be one of {', '.join(MATCHES)}, got {row['match']!r}", line=line)
        stop = row.get("stop", DEFAULT_STOP)
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise SuiteError("'stop' must be a list of strings", line=line)
        limit = row.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 1024:
            raise SuiteError("'max_new_tokens' must be an integer from 1 to 1024", line=line)
    return row


def load_suite(path: str | Path) -> list[dict[str, Any]]:
    """Items of a JSONL suite; a bad line raises SuiteError naming it, an empty suite too."""
    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"suite {path} not found")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SuiteError(f"cannot read suite {path}: {exc}") from None
    items = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise SuiteError(f"not valid JSON ({exc.msg})", line=number, path=str(path)) from None
        try:
            items.append(_validate(row, number))
        except SuiteError as exc:
            raise SuiteError(exc.message, line=number, path=str(path)) from None
    if not items:
        raise SuiteError(f"suite {path} has no items")
    return items


def suite_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials (sound at 0 %, 100 % and small n)."""
    if n <= 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass
class EvalResult:
    n: int
    accuracy: float
    ci95: tuple[float, float]
    metrics: dict[str, float]
    items: list[dict[str, Any]] = field(default_factory=list)
    duration_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "accuracy": self.accuracy,
            "ci95": list(self.ci95),
            "metrics": dict(self.metrics),
            "items": list(self.items),
            "duration_s": self.duration_s,
        }


def encode(tokenizer, text: str, add_bos: bool | None = None) -> list[int]:
    """Token ids as lm-evaluation-harness gets them: the tokenizer's default special tokens,
    unless add_bos forces a BOS on (True) or all special tokens off (False)."""
    if add_bos is None:
        return list(tokenizer(text)["input_ids"])
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    bos = tokenizer.bos_token_id
    if add_bos and bos is not None and (not ids or ids[0] != bos):
        ids = [bos] + ids
    return ids


def prefix_token_id(tokenizer) -> int:
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def encode_pair(tokenizer, context: str, continuation: str, add_bos: bool | None = None) -> tuple[list[int], list[int]]:
    """lm-evaluation-harness's context/continuation split, to the letter."""
    if context == "":
        # The prefix token (BOS, else EOS) stands in for the context; never doubled.
        prefix = prefix_token_id(tokenizer)
        continuation_ids = list(tokenizer(continuation, add_special_tokens=False)["input_ids"])
        if continuation_ids and continuation_ids[0] == prefix:
            return continuation_ids[:1], continuation_ids[1:]
        return [prefix], continuation_ids
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:  # trailing whitespace belongs to the continuation
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = encode(tokenizer, context + continuation, add_bos)
    context_ids = encode(tokenizer, context, add_bos)
    return context_ids, whole[len(context_ids) :]


def loglikelihoods(
    model, requests: list[tuple[list[int], list[int]]], *, batch_size: int = 16, on_batch: Callable[[int], None] | None = None
) -> list[float]:
    """Sum of log P(continuation | context) per request; inputs cut from the left to the context length."""
    import torch

    limit = context_length(model)
    device = next(model.parameters()).device
    scores = [0.0] * len(requests)
    prepared = []
    for index, (context_ids, continuation_ids) in enumerate(requests):
        whole = (context_ids + continuation_ids)[-(limit + 1) :]
        prepared.append((index, whole[:-1], continuation_ids[-limit:]))
    # Longest first keeps padding small; right padding leaves real positions untouched (causal mask).
    prepared.sort(key=lambda r: -len(r[1]))
    for start in range(0, len(prepared), batch_size):
        batch = prepared[start : start + batch_size]
        width = max(len(inp) for _, inp, _ in batch)
        input_ids = torch.tensor([inp + [0] * (width - len(inp)) for _, inp, _ in batch], device=device)
        mask = torch.tensor([[1] * len(inp) + [0] * (width - len(inp)) for _, inp, _ in batch], device=device)
        with torch.no_grad():
            logprobs = torch.log_softmax(model(input_ids=input_ids, attention_mask=mask).logits.float(), dim=-1)
        for row, (index, inp, continuation) in enumerate(batch):
            if not continuation:
                continue
            positions = torch.arange(len(inp) - len(continuation), len(inp), device=device)
            targets = torch.tensor(continuation, device=device)
            scores[index] = float(logprobs[row, positions, targets].sum())
        if on_batch is not None:
            on_batch(len(batch))
    return scores


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))  # first index wins ties, as numpy


def _extras(item: dict[str, Any], known: set[str]) -> dict[str, Any]:
    return {key: value for key, value in item.items() if key not in known}


def evaluate(
    model,
    tokenizer,
    items: list[dict[str, Any]],
    *,
    batch_size: int = 16,
    add_bos: bool | None = None,
    progress: Progress | None = None,
) -> EvalResult:
    """Score a suite: n, accuracy with its Wilson 95 % interval, metrics per kind, per-item results."""
    started = time.perf_counter()
    if not items:
        raise SuiteError("the suite has no items")
    batch_size = max(1, int(batch_size))
    model.eval()
    mc = [(i, item) for i, item in enumerate(items) if item["kind"] == "multiple_choice"]
    gen = [(i, item) for i, item in enumerate(items) if item["kind"] == "generate"]
    total_work = sum(len(item["choices"]) for _, item in mc) + len(gen)
    done = 0

    def advance(count: int, what: str) -> None:
        nonlocal done
        done += count
        if progress is not None:
            progress(done / total_work, what)

    results: list[dict[str, Any] | None] = [None] * len(items)
    if mc:
        requests, owners = [], []
        for i, item in mc:
            for choice in item["choices"]:
                requests.append(encode_pair(tokenizer, item["context"], choice, add_bos))
                owners.append(i)
        scores = loglikelihoods(model, requests, batch_size=batch_size, on_batch=lambda k: advance(k, "multiple_choice"))
        offset = 0
        for i, item in mc:
            own = scores[offset : offset + len(item["choices"])]
            offset += len(item["choices"])
            normalised = [s / len(c) if len(c) else s for s, c in zip(own, item["choices"])]
            pred, pred_norm = _argmax(own), _argmax(normalised)
            results[i] = {
                **_extras(item, _MC_KEYS),
                "index": i,
                "kind": "multiple_choice",
                "gold": item["gold"],
                "loglikelihoods": own,
                "pred": pred,
                "pred_norm": pred_norm,
                "acc": float(pred == item["gold"]),
                "acc_norm": float(pred_norm == item["gold"]),
                "correct": pred == item["gold"],
            }
    if gen:
        limit = context_length(model)
        for start in range(0, len(gen), batch_size):
            chunk = gen[start : start + batch_size]
            max_new = max(item.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS) for _, item in chunk)
            prompts = [encode(tokenizer, item["prompt"], add_bos)[-max(1, limit - max_new) :] for _, item in chunk]
            outputs = greedy_batch(model, tokenizer, prompts, max_new_tokens=max_new)
            for (i, item), output in zip(chunk, outputs):
                output = cut_at_stop(output, item.get("stop", DEFAULT_STOP))[0]
                target = item["target"].strip()
                exact = output.strip() == target
                contains = target in output
                results[i] = {
                    **_extras(item, _GEN_KEYS),
                    "index": i,
                    "kind": "generate",
                    "target": item["target"],
                    "match": item["match"],
                    "output": output,
                    "exact_match": float(exact),
                    "contains": float(contains),
                    "correct": exact if item["match"] == "exact" else contains,
                }
            advance(len(chunk), "generate")
    rows = [r for r in results if r is not None]
    correct = sum(1 for r in rows if r["correct"])
    metrics: dict[str, float] = {}
    if mc:
        metrics["acc"] = sum(results[i]["acc"] for i, _ in mc) / len(mc)
        metrics["acc_norm"] = sum(results[i]["acc_norm"] for i, _ in mc) / len(mc)
    if gen:
        metrics["exact_match"] = sum(results[i]["exact_match"] for i, _ in gen) / len(gen)
        metrics["contains"] = sum(results[i]["contains"] for i, _ in gen) / len(gen)
    return EvalResult(
        n=len(rows),
        accuracy=correct / len(rows),
        ci95=wilson_interval(correct, len(rows)),
        metrics=metrics,
        items=rows,
        duration_s=time.perf_counter() - started,
    )
