from __future__ import annotations

import pytest
import torch

from portllm_engine.generate import format_prompt, stream_generate
from portllm_engine.models import load_base


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


def test_plain_template_without_chat_template(loaded):
    _, tokenizer = loaded
    assert format_prompt(tokenizer, " How much? ") == "Question: How much?\nAnswer:"
    assert format_prompt(tokenizer, "How much?", "Be brief.") == "Be brief.\n\nQuestion: How much?\nAnswer:"


def test_chat_template_when_the_tokenizer_has_one(loaded):
    _, tokenizer = loaded
    chatty = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    chatty.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    assert format_prompt(chatty, "Hi", "Be brief.") == "<system>Be brief.<user>Hi<assistant>"


def test_stream_equals_greedy_decoding(loaded):
    model, tokenizer = loaded
    pieces = list(stream_generate(model, tokenizer, "How much does the Lumo Dock cost?", max_new_tokens=12))
    expected = greedy_reference(model, tokenizer, format_prompt(tokenizer, "How much does the Lumo Dock cost?"), 12)
    assert "".join(pieces) == expected.lstrip().split("\nQuestion:")[0]
    assert len(pieces) >= 1


def test_stop_sequences_and_length_bound(loaded):
    model, tokenizer = loaded
    full = "".join(stream_generate(model, tokenizer, "The quick brown fox", max_new_tokens=20))
    short = "".join(stream_generate(model, tokenizer, "The quick brown fox", max_new_tokens=3))
    prompt = format_prompt(tokenizer, "The quick brown fox")
    assert short == greedy_reference(model, tokenizer, prompt, 3).lstrip().split("\nQuestion:")[0]
    if len(full) > 3:
        stop = full[2:4]
        cut = "".join(stream_generate(model, tokenizer, "The quick brown fox", max_new_tokens=20, stop=[stop]))
        assert cut == full[: full.index(stop)]
    assert "".join(stream_generate(model, tokenizer, "x", max_new_tokens=10**9)) is not None  # clamped, not an error
