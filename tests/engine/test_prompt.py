"""The one prompt function: chat template or plain template, turns, the reply's span, the format's identity."""
from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from portllm_engine.errors import EngineError
from portllm_engine.prompt import CHAT, RAW, PromptFormat, render, user_turn

TEMPLATE = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% if m.role == 'assistant' %}{{ eos_token }}{% endif %}"
            "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")


@pytest.fixture(scope="module")
def plain(tiny):
    return AutoTokenizer.from_pretrained(tiny.tokenizer)


@pytest.fixture(scope="module")
def chatty(tiny):
    tokenizer = AutoTokenizer.from_pretrained(tiny.tokenizer)
    tokenizer.chat_template = TEMPLATE
    return tokenizer


def test_plain_template_without_a_chat_template(plain):
    assert render(plain, user_turn(" How much? ")).text == "Question: How much?\nAnswer:"
    system = PromptFormat(CHAT, "Be brief.")
    assert render(plain, user_turn("How much?"), system).text == "Be brief.\n\nQuestion: How much?\nAnswer:"
    turns = [*user_turn("How much?"), {"role": "assistant", "content": "$249"}, *user_turn("And the Pro?")]
    assert render(plain, turns).text == "Question: How much?\nAnswer: $249\nQuestion: And the Pro?\nAnswer:"
    assert render(plain, user_turn("x")).stops == ("\nQuestion:",)


def test_chat_template_with_system_prompt_and_turns(chatty):
    fmt = PromptFormat(CHAT, "Be brief.")
    turns = [*user_turn("Hi"), {"role": "assistant", "content": "Hello"}, *user_turn("Price?")]
    rendered = render(chatty, turns, fmt)
    assert rendered.text == f"<system>Be brief.<user>Hi<assistant>Hello{chatty.eos_token}<user>Price?<assistant>"
    assert rendered.ids == chatty(rendered.text, add_special_tokens=False)["input_ids"]
    assert rendered.stops == ()


def test_the_reply_span_is_the_reply_and_its_end_of_turn(plain, chatty):
    for tokenizer in (plain, chatty):
        rendered = render(tokenizer, user_turn("How much?"), PromptFormat(CHAT, "Be brief."), reply="$249")
        assert rendered.reply_ids[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(rendered.reply_ids, skip_special_tokens=True).strip() == "$249"
        # The prompt's ids are exactly what an answer is generated from.
        assert rendered.ids == render(tokenizer, user_turn("How much?"), PromptFormat(CHAT, "Be brief.")).ids
    assert render(chatty, user_turn("How much?"), reply="$249").reply_ids.count(chatty.eos_token_id) == 1


def test_raw_takes_the_text_as_written(chatty):
    rendered = render(chatty, user_turn("Question: 2+2?\nAnswer:"), PromptFormat(RAW, "ignored"), reply=" 4")
    assert rendered.text == "Question: 2+2?\nAnswer:"
    assert rendered.ids + rendered.reply_ids[:-1] == chatty("Question: 2+2?\nAnswer: 4")["input_ids"]


def test_the_formats_identity_names_kind_template_and_system_prompt(plain, chatty):
    digests = {
        PromptFormat(CHAT).digest(plain), PromptFormat(CHAT, "Be brief.").digest(plain),
        PromptFormat(CHAT).digest(chatty), PromptFormat(RAW).digest(chatty),
    }
    assert len(digests) == 4
    assert PromptFormat(RAW, "anything").digest(plain) == PromptFormat(RAW).digest(chatty)  # raw has no template
    assert PromptFormat(CHAT, "Be brief.").describe(chatty) == "chat template with the system prompt"
    assert PromptFormat(CHAT).describe(plain) == "plain template"


def test_bad_input_is_refused(plain):
    with pytest.raises(EngineError, match="prompt format must be one of chat, raw"):
        PromptFormat("chatml")
    with pytest.raises(EngineError, match="must end with the user's turn"):
        render(plain, [{"role": "assistant", "content": "hi"}])


def test_the_ledgers_raw_digest_is_the_engines():
    from registry.models import RAW_PROMPT_DIGEST

    assert PromptFormat(RAW).digest(None) == RAW_PROMPT_DIGEST
