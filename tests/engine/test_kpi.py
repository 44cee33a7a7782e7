from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoTokenizer

from portllm_engine.errors import SuiteError
from portllm_engine.kpi import encode_pair, evaluate, load_suite, loglikelihoods, suite_digest, wilson_interval
from portllm_engine.models import load_base
from portllm_engine.prompt import CHAT, RAW, PromptFormat, render, user_turn

# lm-evaluation-harness without --apply_chat_template: the suite's text as written.
RAW_FORMAT = PromptFormat(RAW)


@pytest.fixture(scope="module")
def tokenizer(tiny):
    return AutoTokenizer.from_pretrained(tiny.tokenizer)


@pytest.fixture(scope="module")
def bigram(tiny):
    """The tiny Llama with every attention and MLP output zeroed: the residual stream is the
    current token's embedding, so next-token log-probs depend on the current token only and can
    be computed by hand from three matrices."""
    model, _ = load_base(tiny.base, device="cpu")
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embed = model.model.embed_tokens.weight.double()
        normed = embed / torch.sqrt(embed.pow(2).mean(-1, keepdim=True) + model.config.rms_norm_eps)
        logits = (normed * model.model.norm.weight.double()) @ model.lm_head.weight.double().T
    return model, torch.log_softmax(logits, dim=-1)  # table[current, next]


def hand_loglik(table, context_ids: list[int], continuation_ids: list[int]) -> float:
    tokens = context_ids + continuation_ids
    return sum(float(table[tokens[i - 1], tokens[i]]) for i in range(len(context_ids), len(tokens)))


def write_suite(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


# ------------------------------------------------------------------ suites


@pytest.mark.parametrize(
    ("rows", "line", "message"),
    [
        (['{"kind": "generate", "prompt": "a", "target": "b"}', "{not json"], 2, "not valid JSON"),
        ([{"kind": "essay", "prompt": "a"}], 1, "kind must be one of"),
        ([{"kind": "multiple_choice", "context": "a", "choices": ["x"], "gold": 0}], 1, "at least two"),
        ([{"kind": "multiple_choice", "context": "a", "choices": ["x", "y"], "gold": 2}], 1, "index into choices"),
        ([{"kind": "multiple_choice", "context": "a", "choices": ["x", "y"], "gold": True}], 1, "index into choices"),
        ([{"kind": "generate", "prompt": "a"}], 1, "'prompt' and 'target'"),
        ([{"kind": "generate", "prompt": "a", "target": "b", "match": "fuzzy"}], 1, "'match' must be"),
        (["[1, 2]"], 1, "JSON object"),
    ],
)
def test_bad_suite_lines_name_the_line(tmp_path, rows, line, message):
    path = write_suite(tmp_path / "suite.jsonl", rows)
    with pytest.raises(SuiteError, match=message) as caught:
        load_suite(path)
    assert caught.value.line == line
    assert f"line {line}" in str(caught.value) and "\n" not in str(caught.value)


def test_empty_and_missing_suites(tmp_path):
    with pytest.raises(SuiteError, match="no items"):
        load_suite(write_suite(tmp_path / "empty.jsonl", ["", "  "]))
    with pytest.raises(SuiteError, match="not found"):
        load_suite(tmp_path / "missing.jsonl")


def test_suite_keeps_extra_keys_and_digest(tmp_path):
    path = write_suite(tmp_path / "s.jsonl", [{"id": "q1", "kind": "generate", "prompt": "a", "target": "b"}])
    items = load_suite(path)
    assert items[0]["id"] == "q1" and items[0]["match"] == "exact"
    assert len(suite_digest(path)) == 64


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [(0, 10, 0.0, 0.277535), (10, 10, 0.722465, 1.0), (5, 10, 0.236593, 0.763407), (46, 50, 0.811615, 0.968445)],
)
def test_wilson_interval(k, n, low, high):
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=1e-3) and hi == pytest.approx(high, abs=1e-3)


# ------------------------------------------------------------------ lm-evaluation-harness encoding


def test_trailing_whitespace_moves_to_the_continuation(tokenizer):
    context_ids, continuation_ids = encode_pair(tokenizer, "Answer: ", "blue")
    assert context_ids == tokenizer("Answer:")["input_ids"]  # BOS included: the tokenizer's default
    assert context_ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(continuation_ids) == " blue"
    whole = tokenizer("Answer: blue")["input_ids"]
    assert continuation_ids == whole[len(context_ids) :]


def test_continuation_is_the_tail_of_the_joint_encoding(tokenizer):
    context, continuation = "The quick brown", " fox jumps"
    context_ids, continuation_ids = encode_pair(tokenizer, context, continuation)
    whole = tokenizer(context + continuation)["input_ids"]
    assert context_ids + continuation_ids == whole


def test_empty_context_uses_the_prefix_token(tokenizer):
    context_ids, continuation_ids = encode_pair(tokenizer, "", "The quick brown fox")
    assert context_ids == [tokenizer.bos_token_id]
    assert continuation_ids == tokenizer("The quick brown fox", add_special_tokens=False)["input_ids"]


def test_add_bos_override(tokenizer):
    assert encode_pair(tokenizer, "Answer:", " blue", add_bos=False)[0] == tokenizer("Answer:", add_special_tokens=False)["input_ids"]
    assert encode_pair(tokenizer, "Answer:", " blue", add_bos=True)[0][0] == tokenizer.bos_token_id


# ------------------------------------------------------------------ scoring, by hand


def test_loglikelihood_is_the_hand_sum(bigram, tokenizer):
    model, table = bigram
    for context, continuation in [("Question: What color", " is the Pixa Cam?"), ("", "The quick brown fox")]:
        context_ids, continuation_ids = encode_pair(tokenizer, context, continuation)
        (score,) = loglikelihoods(model, [(context_ids, continuation_ids)])
        assert score == pytest.approx(hand_loglik(table, context_ids, continuation_ids), abs=1e-4)


def test_acc_and_acc_norm_by_hand(bigram, tokenizer):
    model, table = bigram
    context = "Question: What color is the Pixa Cam?\nAnswer:"
    candidates = [" blue", " ocean blue", " $249", " the lazy dog", " a warranty", " docks", " fox", " Altavia makes docks"]
    scored = {c: hand_loglik(table, *encode_pair(tokenizer, context, c)) for c in candidates}
    # Find two choices on which acc (sum) and acc_norm (sum / characters) disagree.
    pair = next(
        (a, b)
        for a in candidates
        for b in candidates
        if scored[a] > scored[b] and scored[a] / len(a) < scored[b] / len(b)
    )
    item = {"id": "color", "kind": "multiple_choice", "context": context, "choices": list(pair), "gold": 1}
    result = evaluate(model, tokenizer, [item], fmt=RAW_FORMAT)
    row = result.items[0]
    assert row["id"] == "color"
    assert row["loglikelihoods"] == pytest.approx([scored[pair[0]], scored[pair[1]]], abs=1e-4)
    assert (row["pred"], row["pred_norm"]) == (0, 1)
    assert result.metrics == {"acc": 0.0, "acc_norm": 1.0}
    assert result.accuracy == 0.0 and result.n == 1
    assert result.ci95 == pytest.approx(wilson_interval(0, 1))


def test_inputs_are_cut_from_the_left(tiny, tokenizer):
    model, _ = load_base(tiny.base, device="cpu")
    limit = model.config.max_position_embeddings
    context = " ".join(["The quick brown fox jumps over the lazy dog."] * 12)
    context_ids, continuation_ids = encode_pair(tokenizer, context, " Altavia makes docks")
    assert len(context_ids) + len(continuation_ids) > limit + 1
    (score,) = loglikelihoods(model, [(context_ids, continuation_ids)])
    window = (context_ids + continuation_ids)[-(limit + 1) :]
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=torch.tensor([window[:-1]])).logits[0].double(), -1)
    n = len(continuation_ids)
    expected = sum(float(logprobs[len(window) - 1 - n + i, t]) for i, t in enumerate(continuation_ids))
    assert score == pytest.approx(expected, abs=1e-3)


def test_generate_items_exact_and_contains_by_hand(bigram, tokenizer):
    model, table = bigram
    prompt = "Question: How much does the Lumo Dock cost?\nAnswer:"
    ids = tokenizer(prompt)["input_ids"]
    eos = tokenizer.eos_token_id
    greedy, current = [], ids[-1]
    for _ in range(4):  # the bigram model's greedy chain, by hand
        current = int(table[current].argmax())
        if current == eos:
            break
        greedy.append(current)
    text = tokenizer.decode(greedy, skip_special_tokens=True)
    assert text.strip(), "the hand chain should produce text"
    first = tokenizer.decode(greedy[:1], skip_special_tokens=True)
    items = [
        {"kind": "generate", "prompt": prompt, "target": text.strip(), "match": "exact", "max_new_tokens": 4, "stop": []},
        {"kind": "generate", "prompt": prompt, "target": first.strip(), "match": "contains", "max_new_tokens": 4, "stop": []},
        {"kind": "generate", "prompt": prompt, "target": "certainly not this", "match": "contains", "max_new_tokens": 4},
    ]
    result = evaluate(model, tokenizer, items, fmt=RAW_FORMAT)
    assert result.items[0]["output"] == text
    assert [r["correct"] for r in result.items] == [True, True, False]
    assert result.metrics["exact_match"] == pytest.approx(1 / 3)
    assert result.metrics["contains"] == pytest.approx(2 / 3)
    assert result.accuracy == pytest.approx(2 / 3)


# ------------------------------------------------------------------ batching


def test_batch_size_does_not_change_results(tiny, tokenizer):
    model, _ = load_base(tiny.base, device="cpu")
    items = []
    for i, context in enumerate(["Question: What color is the Pixa Cam?\nAnswer:", "The quick brown", "", "Altavia makes "]):
        items.append({"kind": "multiple_choice", "context": context, "choices": [" fox", " ocean blue", "docks and hubs"], "gold": i % 3})
    for prompt in ["Question: How much does the Lumo Dock cost?\nAnswer:", "The quick", "A patch carries domain", "Every device"]:
        items.append({"kind": "generate", "prompt": prompt, "target": "fox", "match": "contains", "max_new_tokens": 6})
    one = evaluate(model, tokenizer, items, fmt=RAW_FORMAT, batch_size=1)
    many = evaluate(model, tokenizer, items, fmt=RAW_FORMAT, batch_size=16)
    assert one.accuracy == many.accuracy and one.metrics == many.metrics
    for a, b in zip(one.items, many.items):
        if a["kind"] == "multiple_choice":
            assert a["loglikelihoods"] == pytest.approx(b["loglikelihoods"], abs=1e-4)
            assert (a["pred"], a["pred_norm"]) == (b["pred"], b["pred_norm"])
        else:
            assert a["output"] == b["output"]
    assert math.isfinite(one.duration_s)


# ------------------------------------------------------------------ shared contexts vs one request at a time


def reference_loglikelihood(model, context_ids: list[int], continuation_ids: list[int]) -> float:
    """lm-evaluation-harness's computation, one request alone: the last max_length + 1 tokens,
    the final one dropped as input, the continuation's log-probs summed."""
    limit = model.config.max_position_embeddings
    window = (context_ids + continuation_ids)[-(limit + 1) :][:-1]
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=torch.tensor([window])).logits[0].float(), dim=-1)
    n = len(continuation_ids)
    return sum(float(logprobs[len(window) - n + i, token]) for i, token in enumerate(continuation_ids))


WORDS = "The quick brown fox jumps over the lazy dog . Altavia makes docks hubs cameras and lamps".split()


def random_items(seed: int, count: int, tokenizer) -> list[dict]:
    """Multiple-choice items from a seeded generator: shared, empty, over-long and whitespace-ended
    contexts, one-token and multi-token choices, contexts cut inside a word (the tokenization
    changes at the boundary) and duplicate choices (ties)."""
    import random

    rng = random.Random(seed)
    one_token = [s for s in (" ", ".", " .", "a", " a", "T", "\n", "e") if len(tokenizer(s, add_special_tokens=False)["input_ids"]) == 1]
    shared = [" ".join(rng.choices(WORDS, k=rng.randint(2, 9))) for _ in range(3)]
    items = []
    for _ in range(count):
        shape = rng.random()
        if shape < 0.15:
            context = ""
        elif shape < 0.3:
            context = " ".join(rng.choices(WORDS, k=rng.randint(40, 70)))  # beyond the 64-token window
        elif shape < 0.55:
            context = rng.choice(shared)
        else:
            context = " ".join(rng.choices(WORDS, k=rng.randint(1, 12)))
        head = ""
        if context and rng.random() < 0.25:  # cut inside a word: "The qu" + "ick"
            word = rng.choice([w for w in WORDS if len(w) > 3])
            context, head = context + " " + word[:2], word[2:]
        else:
            context += rng.choice(["", " ", "  ", "\n"])
        if rng.random() < 0.3:
            choices = rng.sample(one_token, 2)
        else:
            choices = [head + " " * (rng.random() < 0.7) + " ".join(rng.choices(WORDS, k=rng.randint(1, 4))) for _ in range(rng.randint(2, 4))]
        if rng.random() < 0.1:
            choices.append(choices[0])  # an exact tie: the first one wins
        items.append({"kind": "multiple_choice", "context": context, "choices": choices, "gold": rng.randrange(len(choices))})
    return items


@pytest.mark.parametrize("seed,batch_size", [(1, 4), (2, 16)])
def test_shared_context_scoring_equals_one_request_at_a_time(tiny, tokenizer, seed, batch_size):
    model, _ = load_base(tiny.base, device="cpu")
    items = random_items(seed, 40, tokenizer)
    result = evaluate(model, tokenizer, items, fmt=RAW_FORMAT, batch_size=batch_size)
    boundary_changes = one_token = truncated = 0
    for item, row in zip(items, result.items):
        expected = []
        for choice in item["choices"]:
            context_ids, continuation_ids = encode_pair(tokenizer, item["context"], choice)
            expected.append(reference_loglikelihood(model, context_ids, continuation_ids))
            whole = tokenizer(item["context"] + choice)["input_ids"]
            boundary_changes += bool(item["context"]) and whole[: len(context_ids)] != context_ids
            one_token += len(continuation_ids) == 1
            truncated += len(context_ids) + len(continuation_ids) > model.config.max_position_embeddings + 1
        assert row["loglikelihoods"] == pytest.approx(expected, abs=2e-4)
        normalised = [s / len(c) for s, c in zip(expected, item["choices"])]
        assert row["pred"] == max(range(len(expected)), key=lambda i: (expected[i], -i))
        assert row["pred_norm"] == max(range(len(normalised)), key=lambda i: (normalised[i], -i))
    assert min(boundary_changes, one_token, truncated) > 0, "the generator should cover every case"
    assert any(item["context"] == "" for item in items)


def test_ties_go_to_the_first_choice(tiny, tokenizer):
    model, _ = load_base(tiny.base, device="cpu")
    item = {"kind": "multiple_choice", "context": "The quick", "choices": [" fox", " fox jumps", " fox"], "gold": 2}
    row = evaluate(model, tokenizer, [item], fmt=RAW_FORMAT).items[0]
    assert row["loglikelihoods"][0] == row["loglikelihoods"][2]
    assert row["pred"] in (0, 1) and row["acc"] == 0.0


def test_multiple_input_items_score_one_continuation_after_each_context(tiny, tokenizer):
    """WinoGrande's form in lm-eval: the options fill the blank in the context, the rest of the
    sentence is the continuation scored after each."""
    model, _ = load_base(tiny.base, device="cpu")
    item = {"kind": "multiple_choice", "contexts": ["The fox jumps over the", "The dog jumps over the"], "continuation": " lazy dog.", "gold": 1}
    row = evaluate(model, tokenizer, [item], fmt=RAW_FORMAT).items[0]
    expected = [reference_loglikelihood(model, *encode_pair(tokenizer, c, " lazy dog.")) for c in item["contexts"]]
    assert row["loglikelihoods"] == pytest.approx(expected, abs=2e-4)
    assert row["pred"] == row["pred_norm"] == (0 if expected[0] >= expected[1] else 1)


HEADER = "Question: How much does the Lumo Dock cost?\n"


@pytest.mark.parametrize("batch_size", [3, 16])
def test_a_prefix_every_context_shares_runs_once(tiny, tokenizer, batch_size):
    """An instruction heading every item runs through the model once for the whole suite, and the
    scores stay those of each request alone (one-token and multi-token answers, shorter and longer
    contexts)."""
    import random

    model, _ = load_base(tiny.base, device="cpu")
    rng = random.Random(7)
    items = [
        {"kind": "multiple_choice", "context": HEADER + " ".join(rng.choices(WORDS, k=rng.randint(1, 3))),
         "choices": [" yes", " no", " lazy dog jumps"], "gold": 0}
        for _ in range(7)
    ]
    requests = [encode_pair(tokenizer, item["context"], choice) for item in items for choice in item["choices"]]
    header_tokens = len(encode_pair(tokenizer, HEADER.rstrip(), " x")[0])
    assert header_tokens >= 16 and all(len(c) + len(k) <= 64 for c, k in requests)
    shapes = []
    hook = model.register_forward_pre_hook(lambda _, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    try:
        row_of = evaluate(model, tokenizer, items, fmt=RAW_FORMAT, batch_size=batch_size).items
    finally:
        hook.remove()
    expected = [reference_loglikelihood(model, c, k) for c, k in requests]
    assert [ll for row in row_of for ll in row["loglikelihoods"]] == pytest.approx(expected, abs=2e-4)
    assert shapes[0][0] == 1 and shapes[0][1] >= header_tokens - 1  # the prefix, once, alone
    assert all(width < header_tokens for _, width in shapes[1:])  # then only what follows it


@pytest.mark.parametrize(("arch", "window"), [
    ("LlamaConfig", None), ("Qwen2Config", None), ("Phi3Config", None), ("MistralConfig", 64),  # the prefix runs once
    ("MistralConfig", 4), ("Gemma2Config", 4),  # the window is reached: multi-token requests run alone
])
def test_each_architecture_scores_shared_prefixes_and_sliding_windows_exactly(arch, window):
    """Requests behind a 20-token shared prefix, one-token and multi-token, in padded batches, equal
    each request scored alone. A sliding-window cache keeps only the window's last tokens: a padded
    batch continued from it would attend to padding instead of the context, so when a suite reaches
    the window its multi-token requests are scored each alone."""
    import random

    import transformers

    config = getattr(transformers, arch)(
        vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, max_position_embeddings=64, pad_token_id=0,
        **({"sliding_window": window} if window else {}),
    )
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.3)
    rng = random.Random(3)
    prefix = [rng.randrange(1, 50) for _ in range(20)]
    requests = []
    for _ in range(9):
        context = prefix + [rng.randrange(1, 50) for _ in range(rng.randint(1, 12))]
        requests += [(context, [rng.randrange(1, 50)]), (context, [rng.randrange(1, 50) for _ in range(rng.randint(2, 5))])]
    expected = [reference_loglikelihood(model, c, k) for c, k in requests]
    assert loglikelihoods(model, requests, batch_size=4) == pytest.approx(expected, abs=1e-4)


def test_a_context_starting_with_the_bos_text_gets_no_second_bos(tokenizer):
    bos = tokenizer.bos_token
    context_ids, _ = encode_pair(tokenizer, bos + "Answer:", " blue")
    assert context_ids == tokenizer(bos + "Answer:", add_special_tokens=False)["input_ids"]
    assert context_ids.count(tokenizer.bos_token_id) == 1


# ------------------------------------------------------------------ numbers and JSONL lines


@pytest.mark.parametrize(
    ("output", "target", "same"),
    [
        ("So she pays $1,234.50 in total.", "1234.5", True),
        ("The answer is 72", "#### 72", True),
        ("3 apples, then 5, so 8.", "8", True),
        ("It drops to -3 degrees", "-3", True),
        ("-$5 each", "-5", True),
        ("+7", "7", True),
        ("7 and then 70", "7", False),
        ("no number here", "0", False),
        ("1,000 people", "1000", True),
    ],
)
def test_last_number(output, target, same):
    from portllm_engine.kpi import last_number

    assert (last_number(output) is not None and last_number(output) == last_number(target)) is same


def test_number_match_needs_a_number_in_the_target(tmp_path):
    path = write_suite(tmp_path / "s.jsonl", [{"kind": "generate", "prompt": "a", "target": "none", "match": "number"}])
    with pytest.raises(SuiteError, match="needs a number in 'target'"):
        load_suite(path)


def test_jsonl_lines_split_on_newline_only(tmp_path):
    """U+2028 and U+0085 may stand raw inside a JSON string; they are not line ends in JSONL."""
    path = tmp_path / "s.jsonl"
    rows = [{"kind": "generate", "prompt": "first\u2028second\x85third\x1c", "target": "x"}, {"kind": "generate", "prompt": "b", "target": "y"}]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\r\n", encoding="utf-8")
    items = load_suite(path)
    assert [item["prompt"] for item in items] == [rows[0]["prompt"], "b"]


def test_number_items_score_the_last_number_of_the_output(tiny, tokenizer):
    model, _ = load_base(tiny.base, device="cpu")
    item = {"kind": "generate", "prompt": "The quick", "target": "1,000", "match": "number", "max_new_tokens": 4}
    result = evaluate(model, tokenizer, [item, {**item, "match": "exact"}], fmt=RAW_FORMAT)
    from portllm_engine.kpi import last_number

    output = result.items[0]["output"]
    assert result.items[0]["correct"] is (last_number(output) == 1000)
    assert result.metrics["number"] == result.items[0]["number"] * 1.0
    assert set(result.metrics) == {"exact_match", "contains", "number"}


# ------------------------------------------------------------------ the served (chat) format


CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}{{ eos_token }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


@pytest.fixture
def chatty(tiny):
    tokenizer = AutoTokenizer.from_pretrained(tiny.tokenizer)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def lm_eval_chat_request(tokenizer, system: str, context: str, choice: str) -> tuple[list[int], list[int]]:
    """lm-eval 0.4.x with --apply_chat_template --system_instruction, written out independently:
    the chat-rendered context with the generation prompt, the choice with no target delimiter,
    trailing whitespace of the context moved to the continuation, tokens by `tok_encode`."""
    ctx = tokenizer.apply_chat_template([{"role": "system", "content": system}, {"role": "user", "content": context}],
                                        tokenize=False, add_generation_prompt=True)
    cont = choice
    spaces = len(ctx) - len(ctx.rstrip())
    if spaces:
        ctx, cont = ctx[:-spaces], ctx[-spaces:] + cont

    def tok_encode(text):
        bos_text = tokenizer.decode([tokenizer.bos_token_id])
        return tokenizer.encode(text, add_special_tokens=not text.startswith(bos_text))

    whole, context_ids = tok_encode(ctx + cont), tok_encode(ctx)
    return context_ids, whole[len(context_ids):]


def test_multiple_choice_in_the_chat_format_equals_lm_eval_with_apply_chat_template(tiny, chatty):
    model, _ = load_base(tiny.base, device="cpu")
    system = "Answer with the color only."
    items = [{"kind": "multiple_choice", "context": "What color is the Pixa Cam?", "choices": ["ocean blue", "sand", " fox"],
              "gold": 0},
             {"kind": "multiple_choice", "context": "How much does the Lumo Dock cost? ", "choices": ["$249", "$99"], "gold": 1}]
    result = evaluate(model, chatty, items, fmt=PromptFormat(CHAT, system))
    for item, row in zip(items, result.items):
        expected = [reference_loglikelihood(model, *lm_eval_chat_request(chatty, system, item["context"], c))
                    for c in item["choices"]]
        assert row["loglikelihoods"] == pytest.approx(expected, abs=2e-4)
    # Another format is another score: raw reads the same items as plain completions.
    raw = evaluate(model, chatty, items, fmt=RAW_FORMAT)
    assert raw.items[0]["loglikelihoods"] != pytest.approx(result.items[0]["loglikelihoods"], abs=1e-3)


def test_a_generated_item_is_scored_on_the_answer_ask_gives(tiny, chatty):
    from portllm_engine.generate import stream_generate

    model, _ = load_base(tiny.base, device="cpu")
    fmt = PromptFormat(CHAT, "Be brief.")
    questions = ["How much does the Lumo Dock cost?", "What color is the Pixa Cam?", "The quick brown"]
    items = [{"kind": "generate", "prompt": q, "target": "x", "match": "contains"} for q in questions]
    for tokenizer in (chatty, AutoTokenizer.from_pretrained(tiny.tokenizer)):  # chat template, plain template
        result = evaluate(model, tokenizer, items, fmt=fmt)
        asked = ["".join(stream_generate(model, tokenizer, user_turn(q), fmt=fmt)) for q in questions]
        assert [row["output"] for row in result.items] == asked
        assert any(asked)


def test_an_item_may_insist_on_the_raw_format(tiny, chatty):
    model, _ = load_base(tiny.base, device="cpu")
    item = {"kind": "multiple_choice", "context": "Question: What color?\nAnswer:", "choices": [" blue", " red"], "gold": 0}
    as_chat = evaluate(model, chatty, [item], fmt=PromptFormat(CHAT)).items[0]["loglikelihoods"]
    insisted = evaluate(model, chatty, [{**item, "format": "raw"}], fmt=PromptFormat(CHAT)).items[0]["loglikelihoods"]
    assert insisted == pytest.approx(evaluate(model, chatty, [item], fmt=RAW_FORMAT).items[0]["loglikelihoods"])
    assert insisted != pytest.approx(as_chat, abs=1e-3)
    with pytest.raises(SuiteError, match="'format' must be one of chat, raw"):
        from portllm_engine.kpi import _validate

        _validate({**item, "format": "chatml"}, 1)
