"""Greedy generation: prompt templating, token streaming, stop sequences, bounded length."""
from __future__ import annotations

import inspect
from typing import Iterator

MAX_NEW_TOKENS_LIMIT = 1024
PLAIN_TEMPLATE = "Question: {question}\nAnswer:"
PLAIN_STOPS = ("\nQuestion:",)


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def format_prompt(tokenizer, question: str, system_prompt: str | None = None) -> str:
    """The tokenizer's chat template when it has one, else `Question: …\\nAnswer:` (system prompt first)."""
    if has_chat_template(tokenizer):
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        messages.append({"role": "user", "content": question})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prefix = f"{system_prompt.strip()}\n\n" if system_prompt and system_prompt.strip() else ""
    return prefix + PLAIN_TEMPLATE.format(question=question.strip())


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
    question: str,
    context: int,
    *,
    system_prompt: str | None = None,
    max_new_tokens: int = 128,
    stop: list[str] | None = None,
) -> tuple[list[int], int, list[str]]:
    """(prompt token ids, new-token budget, stop sequences) of an answer: every engine that
    answers (ours, or a vLLM server given the ids) starts from exactly these."""
    chat = has_chat_template(tokenizer)
    text = format_prompt(tokenizer, question, system_prompt)
    stops = [s for s in (stop or []) if s] + ([] if chat else list(PLAIN_STOPS))
    # Chat templates already write their special tokens; the plain template relies on the defaults.
    ids = tokenizer(text, add_special_tokens=not chat)["input_ids"]
    budget = max(1, min(int(max_new_tokens), MAX_NEW_TOKENS_LIMIT, context - 1))
    return ids[-(context - budget) :], budget, stops


def stream_generate(
    model,
    tokenizer,
    prompt: str,
    *,
    system_prompt: str | None = None,
    max_new_tokens: int = 128,
    stop: list[str] | None = None,
) -> Iterator[str]:
    """Yield the answer to `prompt` piece by piece (greedy, KV-cached), ending at EOS or a stop."""
    import torch
    from transformers import DynamicCache

    ids, budget, stops = prepare_prompt(tokenizer, prompt, context_length(model), system_prompt=system_prompt,
                                        max_new_tokens=max_new_tokens, stop=stop)
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


def greedy_batch(
    model, tokenizer, prompt_ids: list[list[int]], *, max_new_tokens: int = 32
) -> list[str]:
    """Greedy continuations of already-tokenised prompts, left-padded into one batch."""
    import torch

    device = next(model.parameters()).device
    width = max(len(ids) for ids in prompt_ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in prompt_ids], device=device)
    mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompt_ids], device=device)
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=sorted(eos_ids(model, tokenizer)) or None,
        )
    stop_ids = eos_ids(model, tokenizer)
    texts = []
    for row in out.tolist():
        new = row[width:]
        end = next((i for i, token in enumerate(new) if token in stop_ids), len(new))
        texts.append(tokenizer.decode(new[:end], skip_special_tokens=True))
    return texts
