"""KPI suites (JSONL) and their evaluation.

`multiple_choice` items are scored by log-likelihood exactly as lm-evaluation-harness does
(`acc`, `acc_norm`), each distinct context computed once and a prefix all of them share once per
suite; `generate` items by greedy decoding, `exact_match`, `contains` or `number` (the last number
in the output equals the target's).

Questions are put to the model in a prompt format (`portllm_engine.prompt`): `chat`, as answers
are served (a multiple-choice context is the user's message and each choice starts the reply, as
lm-eval's --apply_chat_template --system_instruction does), or `raw`, the text as written.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

from portllm_engine.errors import SuiteError
from portllm_engine.generate import DEFAULT_MAX_NEW_TOKENS, _cache_keyword, context_length, prepare_prompt, stream_ids
from portllm_engine.prompt import FORMATS, RAW, PromptFormat, encode, prefix_token_id, render, user_turn

KINDS = ("multiple_choice", "generate")
MATCHES = ("exact", "contains", "number")
RAW_STOP = ["\n"]  # a raw completion's default stop; served formats end at end-of-turn, as answers do
RAW_MAX_NEW_TOKENS = 32
_MC_KEYS = {"kind", "context", "choices", "contexts", "continuation", "gold", "format"}
_GEN_KEYS = {"kind", "prompt", "target", "match", "stop", "max_new_tokens", "format"}

Progress = Callable[[float, str], None]

# Bump whenever a change to scoring can change a number: the evaluation ledger then stops reusing
# scores computed by the older scorer.
SCORER_VERSION = 2


def _validate(row: Any, line: int) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise SuiteError("each line must be a JSON object", line=line)
    if row.get("format", RAW) not in FORMATS:
        raise SuiteError(f"'format' must be one of {', '.join(FORMATS)}, got {row['format']!r}", line=line)
    kind = row.get("kind")
    if kind not in KINDS:
        raise SuiteError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}", line=line)
    if kind == "multiple_choice":
        if "contexts" in row:  # lm-eval's multiple-input form (WinoGrande): one continuation, a context per option
            options = row["contexts"]
            if not isinstance(row.get("continuation"), str) or "context" in row or "choices" in row:
                raise SuiteError("multiple_choice with 'contexts' needs a string 'continuation' (and no 'context' or 'choices')", line=line)
        else:
            options = row.get("choices")
            if not isinstance(row.get("context"), str):
                raise SuiteError("multiple_choice needs a string 'context' (or 'contexts' and a 'continuation')", line=line)
        name = "contexts" if "contexts" in row else "choices"
        if not isinstance(options, list) or len(options) < 2 or not all(isinstance(c, str) for c in options):
            raise SuiteError(f"multiple_choice needs '{name}': a list of at least two strings", line=line)
        gold = row.get("gold")
        if not isinstance(gold, int) or isinstance(gold, bool) or not 0 <= gold < len(options):
            raise SuiteError(f"'gold' must be an index into {name} (0..{len(options) - 1})", line=line)
    else:
        if not isinstance(row.get("prompt"), str) or not isinstance(row.get("target"), str):
            raise SuiteError("generate needs string 'prompt' and 'target'", line=line)
        row.setdefault("match", "exact")
        if row["match"] not in MATCHES:
            raise SuiteError(f"'match' must be one of {', '.join(MATCHES)}, got {row['match']!r}", line=line)
        if row["match"] == "number" and last_number(row["target"]) is None:
            raise SuiteError(f"'match': 'number' needs a number in 'target', got {row['target']!r}", line=line)
        stop = row.get("stop", [])
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise SuiteError("'stop' must be a list of strings", line=line)
        limit = row.get("max_new_tokens", RAW_MAX_NEW_TOKENS)
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 1024:
            raise SuiteError("'max_new_tokens' must be an integer from 1 to 1024", line=line)
    return row


def load_suite(path: str | Path) -> list[dict[str, Any]]:
    """Items of a JSONL suite; a bad line raises SuiteError naming it, an empty suite too."""
    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"suite {path} not found")
    try:
        # JSONL separates records by "\n" only: str.splitlines would also cut at U+2028 and other
        # separators that may stand raw inside a JSON string.
        lines = path.read_text(encoding="utf-8").split("\n")
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


# A sign, a currency sign and thousands separators may decorate a number: -$1,234.50
_NUMBER = re.compile(r"[-+]?\$?[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


def last_number(text: str) -> Decimal | None:
    """The last number written in text, as a value (so 1,000 == 1000.0), or None."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    written = found[-1].replace("$", "").replace(",", "")
    sign = "-" if written.count("-") % 2 else ""
    return Decimal(sign + written.lstrip("+-"))


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
    """Sum of log P(continuation | context) per request, as lm-evaluation-harness computes it.

    Each distinct context runs once, after the prefix all contexts share (an instruction, worked
    examples) has run once for the whole suite: a context's last position scores every
    continuation's first token, and longer continuations run on from its KV cache. A request
    longer than the model's context is cut from the left, so its window no longer starts with the
    shared context; it is scored alone over that window, as is every multi-token request of a model
    whose sliding window the suite reaches (its cache would have dropped the context's start).
    Identical requests are scored once, so they tie exactly.
    """
    distinct = list(dict.fromkeys((tuple(c), tuple(k)) for c, k in requests))
    scores = _distinct_loglikelihoods(model, [(list(c), list(k)) for c, k in distinct], batch_size, on_batch)
    if on_batch is not None:
        on_batch(len(requests) - len(distinct))
    score_of = dict(zip(distinct, scores))
    return [score_of[(tuple(c), tuple(k))] for c, k in requests]


def _distinct_loglikelihoods(model, requests, batch_size, on_batch) -> list[float]:
    limit = context_length(model)
    scores = [0.0] * len(requests)
    sliding = _sliding_window_reached(model, requests)
    by_context: dict[tuple[int, ...], list[int]] = {}
    alone = []
    for index, (context_ids, continuation_ids) in enumerate(requests):
        if not continuation_ids:
            continue
        if len(context_ids) + len(continuation_ids) > limit + 1 or (sliding and len(continuation_ids) > 1):
            alone.append(index)
        else:
            by_context.setdefault(tuple(context_ids), []).append(index)
    _score_shared(model, requests, by_context, scores, batch_size, on_batch, share_prefix=not sliding)
    _score_alone(model, requests, alone, scores, batch_size, on_batch)
    if on_batch is not None:
        on_batch(sum(1 for _, continuation_ids in requests if not continuation_ids))
    return scores


# Below this many tokens an extra forward pass for the shared prefix costs more than it saves.
SHARED_PREFIX_MIN_TOKENS = 16


def _sliding_window_reached(model, requests) -> bool:
    """Whether a sliding-window model's cache would drop tokens of the longest request."""
    window = getattr(model.config, "sliding_window", None)
    return bool(window) and max((len(c) + len(k) for c, k in requests), default=0) >= window - 1


def _shared_prefix(contexts: list[tuple[int, ...]]) -> int:
    """Tokens every context starts with, leaving each at least its last token to run."""
    if len(contexts) < 2:
        return 0
    first, last = min(contexts), max(contexts)  # the sorted extremes share what all of them share
    shared = next((i for i, (a, b) in enumerate(zip(first, last)) if a != b), min(len(first), len(last)))
    shared = min(shared, min(len(c) for c in contexts) - 1)
    return shared if shared >= SHARED_PREFIX_MIN_TOKENS else 0


def _right_padded(rows: list[list[int]], device):
    import torch

    width = max(len(row) for row in rows)
    ids = torch.tensor([row + [0] * (width - len(row)) for row in rows], device=device)
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows], device=device)
    return ids, mask


def _repeated(cache, rows: int):
    """A fresh cache holding `rows` views of a one-row cache (running on appends to it in place)."""
    from transformers import DynamicCache

    return DynamicCache([(k.expand(rows, *k.shape[1:]), v.expand(rows, *v.shape[1:]), *rest) for k, v, *rest in cache])


def _score_shared(model, requests, by_context, scores, batch_size, on_batch, *, share_prefix: bool) -> None:
    """Contexts longest first, `batch_size` at a time, each run once after the shared prefix."""
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    keyword = _cache_keyword(model)
    contexts = sorted(by_context, key=lambda c: (-len(c), c))
    shared = _shared_prefix(contexts) if share_prefix else 0
    prefix_cache = None
    if shared:
        with torch.no_grad():
            prefix_ids = torch.tensor([contexts[0][:shared]], device=device)
            prefix_cache = getattr(model(input_ids=prefix_ids, use_cache=True, logits_to_keep=1), keyword)
    for start in range(0, len(contexts), batch_size):
        batch = contexts[start : start + batch_size]
        input_ids, mask = _right_padded([list(c[shared:]) for c in batch], device)
        lengths = mask.sum(dim=1)
        tails = [(row, index) for row, c in enumerate(batch) for index in by_context[c] if len(requests[index][1]) > 1]
        after_prefix = {}
        if prefix_cache is not None:
            positions = shared + torch.arange(input_ids.shape[1], device=device)
            after_prefix = {keyword: _repeated(prefix_cache, len(batch)),
                            "position_ids": positions.expand(len(batch), -1)}
        with torch.no_grad():
            # No attention mask: right padding never reaches a real position under the causal
            # mask, and without one attention takes its fused causal path. Logits at each
            # context's last position only: the lm_head and a softmax over the vocabulary at
            # every position are a large share of a small model's cost. The KV cache is kept
            # only when longer answers will run on from it, or when it starts from the prefix's.
            out = model(input_ids=input_ids, use_cache=bool(tails or after_prefix),
                        logits_to_keep=(lengths - 1)[:, None], **after_prefix)
        first = torch.log_softmax(out.logits[:, 0].float(), dim=-1)
        for row, context in enumerate(batch):
            for index in by_context[context]:
                scores[index] = float(first[row, requests[index][1][0]])
        if tails:  # the cache holds the prefix too: the mask and positions count it
            cache_mask = F.pad(mask, (shared, 0), value=1)
            _score_tails(model, requests, out, cache_mask, lengths + shared, tails, scores, batch_size)
        if on_batch is not None:
            on_batch(sum(len(by_context[c]) for c in batch))


def _score_tails(model, requests, context_out, context_mask, lengths, tails, scores, batch_size) -> None:
    """Continuations past their first token, run from their context's KV cache, longest first."""
    import torch
    from transformers import DynamicCache

    device = context_mask.device
    keyword = _cache_keyword(model)
    cache = getattr(context_out, keyword)
    tails = sorted(tails, key=lambda t: -len(requests[t[1]][1]))
    for start in range(0, len(tails), batch_size):
        chunk = tails[start : start + batch_size]
        rows = torch.tensor([row for row, _ in chunk], device=device)
        # A fresh cache per chunk: running on from it appends to it in place.
        layers = [(kv[0].index_select(0, rows), kv[1].index_select(0, rows), *kv[2:]) for kv in cache]
        steps = [requests[index][1][:-1] for _, index in chunk]
        input_ids, step_mask = _right_padded(steps, device)
        # The cache is right-padded too: its padding is masked and positions continue each context.
        mask = torch.cat([context_mask.index_select(0, rows), step_mask], dim=1)
        positions = lengths.index_select(0, rows)[:, None] + torch.arange(input_ids.shape[1], device=device)
        with torch.no_grad():
            out = model(
                input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                **{keyword: DynamicCache(layers)},
            )
        logprobs = torch.log_softmax(out.logits.float(), dim=-1)
        for r, (_, index) in enumerate(chunk):
            targets = torch.tensor(requests[index][1][1:], device=device)
            scores[index] += float(logprobs[r, torch.arange(len(targets), device=device), targets].sum())


def _score_alone(model, requests, indices, scores, batch_size, on_batch) -> None:
    """Requests scored each over its own window (cut from the left to the context length), as lm-eval."""
    import torch

    limit = context_length(model)
    device = next(model.parameters()).device
    prepared = []
    for index in indices:
        context_ids, continuation_ids = requests[index]
        whole = (context_ids + continuation_ids)[-(limit + 1) :]
        prepared.append((index, whole[:-1], continuation_ids[-limit:]))
    prepared.sort(key=lambda r: -len(r[1]))
    for start in range(0, len(prepared), batch_size):
        batch = prepared[start : start + batch_size]
        input_ids, _ = _right_padded([inp for _, inp, _ in batch], device)
        with torch.no_grad():  # no attention mask, as above
            logprobs = torch.log_softmax(model(input_ids=input_ids).logits.float(), dim=-1)
        for row, (index, inp, continuation) in enumerate(batch):
            positions = torch.arange(len(inp) - len(continuation), len(inp), device=device)
            scores[index] = float(logprobs[row, positions, torch.tensor(continuation, device=device)].sum())
        if on_batch is not None:
            on_batch(len(batch))


def _item_format(item: dict[str, Any], fmt: PromptFormat) -> PromptFormat:
    """A suite item may insist on a format (`raw` for text written as a plain completion)."""
    kind = item.get("format")
    return fmt if kind in (None, fmt.kind) else PromptFormat(kind, fmt.system_prompt)


def _context(tokenizer, context: str, fmt: PromptFormat) -> str:
    """A multiple-choice context as lm-eval renders it: as written, or (--apply_chat_template,
    --system_instruction) as the user's message, each choice then starting the reply."""
    return context if fmt.kind == RAW else render(tokenizer, user_turn(context), fmt).text


def _pairs(item: dict[str, Any], tokenizer, fmt: PromptFormat) -> list[tuple[str, str]]:
    """The (context, continuation) an item's options are scored on, in option order."""
    fmt = _item_format(item, fmt)
    if "contexts" in item:
        return [(_context(tokenizer, context, fmt), item["continuation"]) for context in item["contexts"]]
    return [(_context(tokenizer, item["context"], fmt), choice) for choice in item["choices"]]


def _generate_prompt(tokenizer, item: dict[str, Any], fmt: PromptFormat, limit: int, add_bos: bool | None):
    """(prompt ids, budget, stops) of a generate item: in a served format exactly what `ask` is
    given (`prepare_prompt`), raw as lm-eval encodes it."""
    fmt = _item_format(item, fmt)
    if fmt.kind != RAW:
        return prepare_prompt(tokenizer, user_turn(item["prompt"]), limit, fmt=fmt,
                              max_new_tokens=item.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS), stop=item.get("stop"))
    budget = min(item.get("max_new_tokens", RAW_MAX_NEW_TOKENS), limit - 1)
    return encode(tokenizer, item["prompt"], add_bos)[-(limit - budget):], budget, item.get("stop", RAW_STOP)


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))  # first index wins ties, as numpy


def _extras(item: dict[str, Any], known: set[str]) -> dict[str, Any]:
    return {key: value for key, value in item.items() if key not in known}


def _generate_result(index: int, item: dict[str, Any], output: str) -> dict[str, Any]:
    target = item["target"].strip()
    scores = {
        "exact_match": output.strip() == target,
        "contains": target in output,
        "number": last_number(output) is not None and last_number(output) == last_number(target),
    }
    return {
        **_extras(item, _GEN_KEYS),
        "index": index,
        "kind": "generate",
        "target": item["target"],
        "match": item["match"],
        "output": output,
        **{name: float(hit) for name, hit in scores.items()},
        "correct": scores["exact_match" if item["match"] == "exact" else item["match"]],
    }


def group_counts(rows: list[dict[str, Any]]) -> dict[str, tuple[int, int]]:
    """(correct, n) per item `group` (a suite's questions may come in groups: its domain, general knowledge…)."""
    counts: dict[str, tuple[int, int]] = {}
    for row in rows:
        if isinstance(row.get("group"), str):
            k, n = counts.get(row["group"], (0, 0))
            counts[row["group"]] = (k + bool(row["correct"]), n + 1)
    return counts


def evaluate(
    model,
    tokenizer,
    items: list[dict[str, Any]],
    *,
    fmt: PromptFormat = PromptFormat(),
    batch_size: int = 16,
    add_bos: bool | None = None,
    progress: Progress | None = None,
) -> EvalResult:
    """Score a suite in prompt format `fmt`: n, accuracy with its Wilson 95 % interval, metrics per
    kind, per-item results. Generated items decode one by one along the serving path, so each
    output is the answer `ask` gives to the same question."""
    started = time.perf_counter()
    if not items:
        raise SuiteError("the suite has no items")
    batch_size = max(1, int(batch_size))
    model.eval()
    mc = [(i, item) for i, item in enumerate(items) if item["kind"] == "multiple_choice"]
    gen = [(i, item) for i, item in enumerate(items) if item["kind"] == "generate"]
    pairs = [_pairs(item, tokenizer, fmt) for _, item in mc]
    total_work = sum(len(own) for own in pairs) + len(gen)
    done = 0

    def advance(count: int, what: str) -> None:
        nonlocal done
        done += count
        if progress is not None:
            progress(done / total_work, what)

    results: list[dict[str, Any] | None] = [None] * len(items)
    if mc:
        requests = [encode_pair(tokenizer, context, continuation, add_bos) for own in pairs for context, continuation in own]
        scores = loglikelihoods(model, requests, batch_size=batch_size, on_batch=lambda k: advance(k, "multiple_choice"))
        offset = 0
        for (i, item), own_pairs in zip(mc, pairs):
            own = scores[offset : offset + len(own_pairs)]
            offset += len(own_pairs)
            normalised = [s / len(c) if len(c) else s for s, (_, c) in zip(own, own_pairs)]
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
    limit = context_length(model)
    for i, item in gen:
        output = "".join(stream_ids(model, tokenizer, *_generate_prompt(tokenizer, item, fmt, limit, add_bos)))
        results[i] = _generate_result(i, item, output)
        advance(1, "generate")
    rows = [r for r in results if r is not None]
    correct = sum(1 for r in rows if r["correct"])
    metrics: dict[str, float] = {}
    if mc:
        metrics["acc"] = sum(results[i]["acc"] for i, _ in mc) / len(mc)
        metrics["acc_norm"] = sum(results[i]["acc_norm"] for i, _ in mc) / len(mc)
    if gen:
        numeric = any(item["match"] == "number" for _, item in gen)  # text suites need no number metric
        for name in ("exact_match", "contains") + (("number",) if numeric else ()):
            metrics[name] = sum(results[i][name] for i, _ in gen) / len(gen)
    groups = group_counts(rows)
    if len(groups) > 1:
        metrics["groups"] = {name: {"correct": k, "n": n} for name, (k, n) in groups.items()}
    return EvalResult(
        n=len(rows),
        accuracy=correct / len(rows),
        ci95=wilson_interval(correct, len(rows)),
        metrics=metrics,
        items=rows,
        duration_s=time.perf_counter() - started,
    )
