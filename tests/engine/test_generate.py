from __future__ import annotations

import pytest
import torch

from portllm_engine.generate import prepare_prompt, stream_generate
from portllm_engine.models import load_base
from portllm_engine.prompt import render, user_turn


@pytest.fixture(scope="module")
def loaded(tiny):
    return load_base(tiny.base, device="cpu")


def greedy_reference(model, tokenizer, text: str, steps: int) -> str:
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=steps, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    new = out[0, ids.shape[1] :].tolist()
    if tokenizer.eos_token_id in new:
        new = new[: new.index(tokenizer.eos_token_id)]
    return tokenizer.decode(new, skip_special_tokens=True)


def test_stream_equals_greedy_decoding(loaded):
    model, tokenizer = loaded
    question = user_turn("How much does the Lumo Dock cost?")
    pieces = list(stream_generate(model, tokenizer, question, max_new_tokens=12))
    expected = greedy_reference(model, tokenizer, render(tokenizer, question).text, 12)
    assert "".join(pieces) == expected.lstrip().split("\nQuestion:")[0]
    assert len(pieces) >= 1


def test_stop_sequences_and_length_bound(loaded):
    model, tokenizer = loaded
    fox = user_turn("The quick brown fox")
    full = "".join(stream_generate(model, tokenizer, fox, max_new_tokens=20))
    short = "".join(stream_generate(model, tokenizer, fox, max_new_tokens=3))
    prompt = render(tokenizer, fox).text
    assert short == greedy_reference(model, tokenizer, prompt, 3).lstrip().split("\nQuestion:")[0]
    if len(full) > 3:
        stop = full[2:4]
        cut = "".join(stream_generate(model, tokenizer, fox, max_new_tokens=20, stop=[stop]))
        assert cut == full[: full.index(stop)]
    assert "".join(stream_generate(model, tokenizer, user_turn("x"), max_new_tokens=10**9)) is not None  # clamped


def test_earlier_turns_are_dropped_oldest_first_to_fit_the_context(loaded):
    _, tokenizer = loaded
    turns = []
    for n in range(6):
        turns += [{"role": "user", "content": f"What is product {n} made of, exactly?"},
                  {"role": "assistant", "content": "Aluminium and glass, mostly."}]
    turns.append({"role": "user", "content": "And the Lumo Dock?"})
    whole = render(tokenizer, turns).ids
    context, budget = len(whole) - 5, 10  # too small for all turns
    ids, got_budget, _ = prepare_prompt(tokenizer, turns, context, max_new_tokens=budget)
    assert got_budget == budget and len(ids) <= context - budget
    kept = tokenizer.decode(ids)
    assert "And the Lumo Dock?" in kept and "product 0" not in kept and "product 5" in kept
    # Only the newest question left, it still stays, cut from the left.
    ids, _, _ = prepare_prompt(tokenizer, user_turn("word " * 200), 32, max_new_tokens=8)
    assert len(ids) == 24
