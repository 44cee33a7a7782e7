"""Greedy generation: token streaming, stop sequences, bounded length (prompts come from `prompt.render`)."""
from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence

from portllm_engine.prompt import PromptFormat, Turn, render

MAX_NEW_TOKENS_LIMIT = 1024
DEFAULT_MAX_NEW_TOKENS = 128  # an answer's budget, served and scored alike


def eos_ids(model, tokenizer) -> set[int]:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    return ids


def _cache_keyword(model) -> str:
    """transformers 5.2x calls the KV cache argument `cache`; earlier versions `past_key_values`."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def context_length(model) -> int:
    return int(getattr(model.config, "max_position_embeddings", 2048) or 2048)


def cut_at_stop(text: str, stops: list[str] | tuple[str, ...]) -> tuple[str, bool]:
    """Text up to the earliest stop sequence, and whether one was found."""
    hits = [text.find(s) for s in stops if s and s in text]
    return (text[: min(hits)], True) if hits else (text, False)


def _held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters could still turn into a stop sequence."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


def prepare_prompt(
    tokenizer,
    turns: Sequence[Turn],
    context: int,
    *,
    fmt: PromptFormat = PromptFormat(),
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    stop: list[str] | None = None,
) -> tuple[list[int], int, list[str]]:
    """(prompt token ids, new-token budget, stop sequences) of an answer: every engine that
    answers (ours, or a vLLM server given the ids) starts from exactly these. Earlier turns are
    dropped oldest first until prompt and budget fit the context; the newest question stays."""
    budget = max(1, min(int(max_new_tokens), MAX_NEW_TOKENS_LIMIT, context - 1))
    turns = list(turns)
    rendered = render(tokenizer, turns, fmt)
    while len(rendered.ids) > context - budget and len(turns) > 1:
        turns = turns[2:] if len(turns) > 2 else turns[-1:]  # a user turn and the reply to it
        rendered = render(tokenizer, turns, fmt)
    stops = [s for s in (stop or []) if s] + list(rendered.stops)
    return rendered.ids[-(context - budget) :], budget, stops


def stream_generate(
    model,
    tokenizer,
    turns: Sequence[Turn],
    *,
    fmt: PromptFormat = PromptFormat(),
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    stop: list[str] | None = None,
) -> Iterator[str]:
    """Yield the answer to the conversation piece by piece (greedy, KV-cached), ending at EOS or a stop."""
    ids, budget, stops = prepare_prompt(tokenizer, turns, context_length(model), fmt=fmt,
                                        max_new_tokens=max_new_tokens, stop=stop)
    yield from stream_ids(model, tokenizer, ids, budget, stops)


def stream_ids(model, tokenizer, ids: list[int], budget: int, stops: list[str]) -> Iterator[str]:
    """Greedy decoding from prompt ids, streamed as text: answers and generated KPI items both."""
    import torch
    from transformers import DynamicCache

    stop_ids = eos_ids(model, tokenizer)
    device = next(model.parameters()).device
    step_input = torch.tensor([ids], device=device)
    cache = {_cache_keyword(model): DynamicCache()}  # filled in place by each forward
    generated: list[int] = []
    emitted = 0
    with torch.no_grad():
        for _ in range(budget):
            out = model(input_ids=step_input, use_cache=True, **cache)
            token = int(out.logits[0, -1].argmax())
            if token in stop_ids:
                break
            generated.append(token)
            # Answers usually start with a space after "Answer:"; readers should not see it.
            decoded = tokenizer.decode(generated, skip_special_tokens=True).lstrip()
            decoded, stopped = cut_at_stop(decoded, stops)
            if stopped:
                if len(decoded) > emitted:
                    yield decoded[emitted:]
                return
            ready = len(decoded) - _held_back(decoded, stops)
            if decoded[:ready].endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
                ready -= 1
            if ready > emitted:
                yield decoded[emitted:ready]
                emitted = ready
            step_input = torch.tensor([[token]], device=device)
    decoded = cut_at_stop(tokenizer.decode(generated, skip_special_tokens=True).lstrip(), stops)[0]
    if len(decoded) > emitted:
        yield decoded[emitted:]
