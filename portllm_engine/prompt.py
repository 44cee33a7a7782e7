"""The one prompt: a conversation rendered into token ids, for training, scoring and answers alike.

(system prompt, turns, optionally the expected reply) → the prompt's ids and the reply's ids. The
`chat` format is what answers are served in: the tokenizer's chat template when it has one, else
a plain template (`Question: …\\nAnswer:`) repeated per turn. `raw` takes the last user turn as
written, for suites written as plain completions (lm-eval tasks compared with published numbers).
Training, both KPI kinds and both serving backends call `render`, so the text a card certifies is
by construction the text `ask` answers; a score's identity includes its format's `digest`.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from portllm_engine.errors import EngineError

CHAT, RAW = "chat", "raw"
FORMATS = (CHAT, RAW)
PLAIN_TEMPLATE = "Question: {question}\nAnswer:"
PLAIN_STOPS = ("\nQuestion:",)

Turn = dict[str, str]  # {"role": "user" | "assistant", "content": ...}, as TRL and chat templates write them


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


@dataclass(frozen=True)
class PromptFormat:
    kind: str = CHAT
    system_prompt: str = ""

    def __post_init__(self) -> None:
        if self.kind not in FORMATS:
            raise EngineError(f"prompt format must be one of {', '.join(FORMATS)}, got {self.kind!r}")

    def template(self, tokenizer) -> str:
        """What turns text into a prompt under this format (`raw` has none)."""
        if self.kind == RAW:
            return ""
        return tokenizer.chat_template if has_chat_template(tokenizer) else PLAIN_TEMPLATE

    def digest(self, tokenizer) -> str:
        """Everything of the format that can change a score: kind, template, system prompt."""
        system = self.system_prompt if self.kind == CHAT else ""
        payload = json.dumps([self.kind, self.template(tokenizer), system])
        return hashlib.sha256(payload.encode()).hexdigest()

    def describe(self, tokenizer) -> str:
        """For people: `chat template`, `plain template` or `raw`, and whether a system prompt is in it."""
        if self.kind == RAW:
            return "raw"
        name = "chat template" if has_chat_template(tokenizer) else "plain template"
        return f"{name} with the system prompt" if self.system_prompt.strip() else name


@dataclass(frozen=True)
class Rendered:
    text: str  # the prompt as text
    ids: list[int]  # the prompt's tokens: what an engine is given
    reply_ids: list[int]  # the expected reply's tokens, ending with end-of-turn (empty without a reply)
    stops: tuple[str, ...]  # text that ends an answer besides end-of-turn


def user_turn(question: str) -> list[Turn]:
    return [{"role": "user", "content": question}]


def render(tokenizer, turns: Sequence[Turn], fmt: PromptFormat = PromptFormat(), reply: str | None = None) -> Rendered:
    """The conversation's prompt ids, and (with `reply`) the reply's ids: training puts its loss on
    those, scoring sums their log-probabilities, answers continue from the prompt."""
    if not turns or turns[-1].get("role") != "user":
        raise EngineError("a conversation to answer must end with the user's turn")
    if fmt.kind == RAW:
        return _render_raw(tokenizer, turns[-1]["content"], reply)
    if has_chat_template(tokenizer):
        return _render_chat(tokenizer, turns, fmt.system_prompt, reply)
    return _render_plain(tokenizer, turns, fmt.system_prompt, reply)


def _ended(tokenizer, reply_ids: list[int]) -> list[int]:
    """A reply's tokens up to and including its end-of-turn (EOS), which is added when missing:
    a model that learns the reply learns to stop after it."""
    eot = tokenizer.eos_token_id
    if eot is None:
        return list(reply_ids)
    return list(reply_ids[: reply_ids.index(eot) + 1]) if eot in reply_ids else [*reply_ids, eot]


def _render_chat(tokenizer, turns, system_prompt: str, reply: str | None) -> Rendered:
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt.strip() else []) + list(turns)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # The template writes its special tokens itself.
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    reply_ids: list[int] = []
    if reply is not None:
        whole = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": reply}], tokenize=False)
        if not whole.startswith(text):
            raise EngineError("the chat template writes earlier turns differently once a reply follows; "
                              "train with the raw format or fix the template")
        # The reply is tokenised after the prompt, as an engine produces it, up to its end-of-turn.
        reply_ids = _ended(tokenizer, tokenizer(whole[len(text):], add_special_tokens=False)["input_ids"])
    return Rendered(text, ids, reply_ids, ())


def plain_text(turns: Sequence[Turn], system_prompt: str = "") -> str:
    """The plain template's text of a conversation: `Question: …\nAnswer:` per turn, replies after
    a space, the system prompt first. Needs no tokenizer (the demo world writes its corpus in it)."""
    parts = [f"{system_prompt.strip()}\n\n"] if system_prompt.strip() else []
    for turn in turns:
        content = turn["content"].strip()
        if turn["role"] == "user":
            parts.append(PLAIN_TEMPLATE.format(question=content))
        elif turn["role"] == "assistant":
            parts.append(f" {content}\n")
    return "".join(parts)


def _render_plain(tokenizer, turns, system_prompt: str, reply: str | None) -> Rendered:
    text = plain_text(turns, system_prompt)
    ids = list(tokenizer(text)["input_ids"])
    reply_ids = [] if reply is None else _ended(tokenizer, tokenizer(" " + reply.strip(), add_special_tokens=False)["input_ids"])
    return Rendered(text, ids, reply_ids, PLAIN_STOPS)


def _render_raw(tokenizer, prompt: str, completion: str | None) -> Rendered:
    ids = encode(tokenizer, prompt)
    # The completion's tokens as lm-eval splits them: the whole text, less the prompt's tokens.
    reply_ids = [] if completion is None else _ended(tokenizer, encode(tokenizer, prompt + completion)[len(ids):])
    return Rendered(prompt, ids, reply_ids, ())


def encode(tokenizer, text: str, add_bos: bool | None = None) -> list[int]:
    """Token ids of text as written, as lm-evaluation-harness gets them: the tokenizer's default
    special tokens, unless add_bos forces a BOS on (True) or all special tokens off (False). A text
    that already starts with the prefix token's text gets no special tokens (lm-eval's `tok_encode`)."""
    prefix = tokenizer.decode([prefix_token_id(tokenizer)])
    if prefix and text.startswith(prefix):
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if add_bos is None:
        return list(tokenizer(text)["input_ids"])
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    bos = tokenizer.bos_token_id
    if add_bos and bos is not None and (not ids or ids[0] != bos):
        ids = [bos] + ids
    return ids


def prefix_token_id(tokenizer) -> int:
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
