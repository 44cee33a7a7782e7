"""The demo world: a tiny Llama family and a support-assistant patch, built locally and cached.

Everything is synthetic and seeded: a fictional product line (Altavia devices) whose facts the
patch teaches, a pretraining corpus about *other* (decoy) products written with every question
phrasing, so the base learns that paraphrases ask the same thing, and held-out phrasings for
the KPI suites. `v2` and `v3` continue pretraining `v1` on new text (mildly, heavily); `other`
has a different shape, so compatibility must refuse the patch there.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Callable

from portllm_engine.prompt import plain_text, user_turn
from portllm_engine.worlds.build import (
    Stages, World, build_cached, in_second_process, load_cached, pretrain, write_jsonl,
)

Progress = Callable[[float, str], None]

RECIPE: dict[str, Any] = {
    "version": 3,
    "seed": 20241,
    "vocab_size": 2048,
    "model": {"hidden_size": 128, "intermediate_size": 352, "num_hidden_layers": 4, "num_attention_heads": 4},
    "other_model": {"hidden_size": 96, "intermediate_size": 256, "num_hidden_layers": 3, "num_attention_heads": 4},
    "max_position_embeddings": 256,
    "decoys": {"a": 40, "b": 30},
    "v1": {"steps": 300, "lr": 3e-3, "batch": 64},
    # v2: new products plus replay of old text (mild); v3: also a new register, hotter and longer.
    "v2": {"steps": 30, "lr": 8e-4, "batch": 64, "corpora": ["b", "a"]},
    "v3": {"steps": 100, "lr": 3e-3, "batch": 64, "corpora": ["b", "c", "a"]},
    "other": {"steps": 40, "lr": 3e-3, "batch": 64},
    "patch": {"rank": 8, "alpha": 16, "epochs": 24, "lr": 3e-3, "batch_size": 16},
    # Patches trained from scratch on evolved bases with the patch's recipe: the paper's comparison.
    "fresh_patch_bases": ["v2"],
    "threads": 1,
}
# The patch's training recipe, reused by bench/transplant.py to time a re-fine-tune.
PATCH_RECIPE = RECIPE["patch"]
ASSISTANT = "support-assistant"

PRODUCTS = [
    "Altavia Corvo Hub",
    "Altavia Lumo Dock",
    "Altavia Pixa Cam",
    "Altavia Tessa Pad",
    "Altavia Rion Band",
    "Altavia Quill Router",
    "Altavia Moro Speaker",
    "Altavia Neva Lamp",
    "Altavia Sorin Charger",
    "Altavia Vela Sensor",
]
OPTIONS: dict[str, list[str]] = {
    "price": ["$49", "$79", "$99", "$129", "$149", "$199", "$249", "$299", "$349", "$399"],
    "warranty": ["1 year", "2 years", "3 years", "5 years"],
    "ports": ["1 USB-C port", "2 USB-C ports", "1 HDMI port", "2 HDMI ports", "1 Ethernet port", "4 USB-A ports"],
    "color": ["graphite", "silver", "sand", "ocean blue", "forest green", "coral"],
    "battery": ["8 hours", "12 hours", "20 hours", "30 hours", "48 hours"],
}
# Six phrasings per attribute: the patch trains on the first four; suites ask the last two.
TEMPLATES: dict[str, list[str]] = {
    "price": [
        "How much does the {p} cost?",
        "What is the price of the {p}?",
        "What does the {p} sell for?",
        "How much is the {p}?",
        "How much do I pay for the {p}?",
        "What's the cost of the {p}?",
    ],
    "warranty": [
        "How long is the warranty on the {p}?",
        "What warranty does the {p} come with?",
        "How many years of warranty does the {p} have?",
        "What is the warranty period of the {p}?",
        "How long is the {p} covered by warranty?",
        "For how long is the {p} under warranty?",
    ],
    "ports": [
        "What ports does the {p} have?",
        "Which ports are on the {p}?",
        "What connectors does the {p} offer?",
        "What ports come with the {p}?",
        "Which connectors are on the {p}?",
        "What can I plug into the {p}?",
    ],
    "color": [
        "What color is the {p}?",
        "Which color does the {p} come in?",
        "What is the color of the {p}?",
        "What finish does the {p} have?",
        "In what color is the {p} sold?",
        "What colour is the {p}?",
    ],
    "battery": [
        "How long does the {p} battery last?",
        "What is the battery life of the {p}?",
        "How many hours does the {p} run on battery?",
        "How long can the {p} run unplugged?",
        "How long does a charge of the {p} last?",
        "What battery life does the {p} offer?",
    ],
}
TRAIN_TEMPLATES = 4
STATEMENTS = {
    "price": "The {p} costs {a}.",
    "warranty": "The {p} comes with a warranty of {a}.",
    "ports": "The {p} has {a}.",
    "color": "The {p} is sold in {a}.",
    "battery": "The {p} battery lasts {a}.",
}
SYLLABLES = ["ka", "lo", "mi", "ren", "tu", "vex", "zor", "pia", "qua", "sel", "dun", "fi", "gor",
             "hal", "jin", "nek", "os", "pra", "ruk", "sto", "tem", "ul", "bin", "wex", "yal"]
CATEGORIES = ["Hub", "Dock", "Cam", "Pad", "Band", "Router", "Speaker", "Lamp", "Charger", "Sensor"]
BRANDS = ["Brivo", "Kelta", "Orun", "Zamba", "Huxley", "Monder"]


DemoWorld = World  # the tiny world is one recipe of the shared world builder


def recipe_hash() -> str:
    return hashlib.sha256(json.dumps(RECIPE, sort_keys=True).encode()).hexdigest()


def default_root() -> Path:
    data_dir = os.environ.get("PORTLLM_DATA_DIR") or Path.home() / ".portllm"
    return Path(data_dir).expanduser() / "demo"


def qa_prompt(question: str) -> str:
    """A question in the plain template, as the tiny world's tokenizer (no chat template) is asked."""
    return plain_text(user_turn(question))


# ---------------------------------------------------------------- facts and texts


def _facts(products: list[str], rng: random.Random) -> dict[str, dict[str, str]]:
    return {p: {attr: rng.choice(values) for attr, values in OPTIONS.items()} for p in products}


def _decoy_names(count: int, rng: random.Random, taken: set[str]) -> list[str]:
    names: list[str] = []
    while len(names) < count:
        name = f"{rng.choice(BRANDS)} {(rng.choice(SYLLABLES) + rng.choice(SYLLABLES)).capitalize()} {rng.choice(CATEGORIES)}"
        if name not in taken:
            taken.add(name)
            names.append(name)
    return names


def _corpus(facts: dict[str, dict[str, str]]) -> list[str]:
    """Every phrasing of every question plus a statement per fact."""
    lines = []
    for product, attrs in facts.items():
        for attr, answer in attrs.items():
            lines.extend(qa_prompt(t.format(p=product)) + " " + answer for t in TEMPLATES[attr])
            lines.append(STATEMENTS[attr].format(p=product, a=answer))
    return lines


def _spec_sheets(facts: dict[str, dict[str, str]]) -> list[str]:
    """A different register for the heavy update: terse spec sheets."""
    return [
        f"Spec sheet. {product}: price {a['price']}; warranty {a['warranty']}; ports {a['ports']}; "
        f"color {a['color']}; battery {a['battery']}."
        for product, a in facts.items()
    ]


def _support_data(facts: dict[str, dict[str, str]], rng: random.Random):
    train, suite, suite_mc = [], [], []
    for product, attrs in facts.items():
        for attr, answer in attrs.items():
            for template in TEMPLATES[attr][:TRAIN_TEMPLATES]:
                train.append({"prompt": template.format(p=product), "completion": answer})
            for n, template in enumerate(TEMPLATES[attr][TRAIN_TEMPLATES:]):
                suite.append({
                    "id": f"{attr}-{PRODUCTS.index(product)}-{n}",
                    "kind": "generate",
                    "prompt": template.format(p=product),
                    "target": answer,
                    "match": "exact",
                })
            distractors = rng.sample([o for o in OPTIONS[attr] if o != answer], 3)
            choices = distractors + [answer]
            rng.shuffle(choices)
            suite_mc.append({
                "id": f"{attr}-{PRODUCTS.index(product)}",
                "kind": "multiple_choice",
                "context": TEMPLATES[attr][TRAIN_TEMPLATES].format(p=product),
                "choices": [" " + c for c in choices],
                "gold": choices.index(answer),
            })
    rng.shuffle(train)
    return train, suite, suite_mc


# ---------------------------------------------------------------- models


def train_bpe_tokenizer(texts: list[str], out_dir: Path, vocab_size: int, model_max_length: int) -> None:
    """A byte-level BPE tokenizer saved as a PreTrainedTokenizerFast folder (AutoTokenizer loads it)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|bos|>", "<|eos|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    bos = tokenizer.token_to_id("<|bos|>")
    # BOS is added by default, as most causal LM tokenizers do; no chat template (plain prompts).
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<|bos|> $A", pair="<|bos|> $A <|bos|> $B", special_tokens=[("<|bos|>", bos)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>"
    )
    fast.model_max_length = model_max_length
    fast.save_pretrained(out_dir)


def _new_model(shape: dict[str, int], tokenizer, seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        num_key_value_heads=shape["num_attention_heads"],
        max_position_embeddings=RECIPE["max_position_embeddings"],
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **shape,
    )
    return LlamaForCausalLM(config)


def _save_base(model, tokenizer_dir: Path, out_dir: Path) -> None:
    model.save_pretrained(out_dir, safe_serialization=True)
    for item in tokenizer_dir.iterdir():
        shutil.copyfile(item, out_dir / item.name)


# ---------------------------------------------------------------- build and cache


def load_demo_world(root: Path) -> DemoWorld | None:
    """The cached world at root when it was built from the current recipe, else None."""
    return load_cached(Path(root), recipe_hash())


def build_demo_world(root: Path | None = None, progress: Progress | None = None) -> DemoWorld:
    """Build (or reuse) the demo world under root (default `$PORTLLM_DATA_DIR/demo`)."""
    return build_cached(Path(root or default_root()), recipe_hash(), _build, threads=RECIPE["threads"],
                        progress=progress)


# Each stage draws its own batches, so changing one stage's steps leaves the others alone.
_SEED_OFFSETS = {"v2": 52, "v3": 53, "other": 7}
# Share of build time per stage, for one progress bar over the whole build.
_STAGES = {"tokenizer": 0.02, "v1": 0.45, "v2": 0.06, "v3": 0.15, "other": 0.07, "patch": 0.25}


def train_fresh_patch(base: Path, data: Path, suite: Path, out: Path, seed: int) -> None:
    """Train a patch from scratch on `base` with the demo patch's recipe and score it on the suite
    (written beside the patch as `<name>.kpi.json`). Run in a second process during the build:
    the build itself uses one thread, so on two cores this costs almost no wall time."""
    import torch

    from portllm_engine.kpi import evaluate, load_suite
    from portllm_engine.patches import train_patch
    from portllm_engine.progress import quiet_transformers
    from portllm_engine.transplant import transplant

    base, data, suite, out = Path(base), Path(data), Path(suite), Path(out)  # given as text to a second process
    torch.set_num_threads(RECIPE["threads"])
    with quiet_transformers():
        train_patch(base, data, out, seed=seed, device="cpu", **PATCH_RECIPE)
        model, tokenizer = transplant(out, base, device="cpu")
        result = evaluate(model, tokenizer, load_suite(suite))
    _kpi_path(out).write_text(json.dumps({"accuracy": result.accuracy, "n": result.n}) + "\n")


def _kpi_path(patch_dir: Path) -> Path:
    return patch_dir.parent / f"{patch_dir.name}.kpi.json"


def _build(out: Path, report: Progress) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from portllm_engine.patches import train_patch

    stages = Stages(_STAGES, report)
    stage, finish = stages.progress, stages.finish
    seed = RECIPE["seed"]
    rng = random.Random(seed)

    support = _facts(PRODUCTS, rng)
    taken = set(PRODUCTS)
    decoys_a = _facts(_decoy_names(RECIPE["decoys"]["a"], rng, taken), rng)
    decoys_b = _facts(_decoy_names(RECIPE["decoys"]["b"], rng, taken), rng)
    corpus_a, corpus_b = _corpus(decoys_a), _corpus(decoys_b)
    corpus_c = _spec_sheets(decoys_a) + _spec_sheets(decoys_b)
    train, suite, suite_mc = _support_data(support, rng)

    train_path = out / "data" / f"{ASSISTANT}.train.jsonl"
    suite_path = out / "suites" / f"{ASSISTANT}.generate.jsonl"
    suite_mc_path = out / "suites" / f"{ASSISTANT}.multiple_choice.jsonl"
    write_jsonl(train_path, train)
    write_jsonl(suite_path, suite)
    write_jsonl(suite_mc_path, suite_mc)

    tokenizer_dir = out / "tokenizer"
    train_bpe_tokenizer(
        corpus_a + corpus_b + corpus_c + _corpus(support), tokenizer_dir, RECIPE["vocab_size"], RECIPE["max_position_embeddings"]
    )
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    finish("tokenizer")

    bases = {name: out / "bases" / name for name in ("v1", "v2", "v3", "other")}
    model = _new_model(RECIPE["model"], tokenizer, seed)
    pretrain(model, tokenizer, corpus_a, seed=seed, progress=stage("v1"), **RECIPE["v1"])
    _save_base(model, tokenizer_dir, bases["v1"])
    finish("v1")
    corpora = {"a": corpus_a, "b": corpus_b, "c": corpus_c}
    fresh_dirs = {name: out / "patches" / f"{ASSISTANT}-fresh-{name}" for name in RECIPE["fresh_patch_bases"]}
    fresh_jobs = []
    for name in ("v2", "v3"):
        from transformers import AutoModelForCausalLM

        evolved = AutoModelForCausalLM.from_pretrained(bases["v1"], use_safetensors=True)
        settings = dict(RECIPE[name])
        lines = [line for key in settings.pop("corpora") for line in corpora[key]]
        pretrain(evolved, tokenizer, lines, seed=seed + _SEED_OFFSETS[name], progress=stage(name), **settings)
        _save_base(evolved, tokenizer_dir, bases[name])
        if name in fresh_dirs:  # the base exists now: its fresh patch trains beside the rest of the build
            fresh_jobs.append(in_second_process(train_fresh_patch, bases[name], train_path, suite_path,
                                                 fresh_dirs[name], seed))
        finish(name)
    other = _new_model(RECIPE["other_model"], tokenizer, seed + _SEED_OFFSETS["other"])
    pretrain(other, tokenizer, corpus_a, seed=seed + _SEED_OFFSETS["other"], progress=stage("other"), **RECIPE["other"])
    _save_base(other, tokenizer_dir, bases["other"])
    finish("other")
    shutil.rmtree(tokenizer_dir)

    patch_dir = out / "patches" / ASSISTANT
    patch_progress = stage("patch")
    train_patch(
        bases["v1"], train_path, patch_dir, seed=seed, device="cpu",
        progress=lambda fraction, _: patch_progress(fraction), **PATCH_RECIPE,
    )
    for job in fresh_jobs:
        if job.wait() != 0:
            raise RuntimeError(f"training a fresh patch for the demo world failed (exit {job.returncode})")
    finish("patch")

    questions = [TEMPLATES[attr][0].format(p=product) for product in PRODUCTS[:3] for attr in ("price", "warranty")]
    meta = {
        "recipe": RECIPE,
        "bases": {name: str(path.relative_to(out)) for name, path in bases.items()},
        "patch": str(patch_dir.relative_to(out)),
        "train_data": str(train_path.relative_to(out)),
        "suite": str(suite_path.relative_to(out)),
        "suite_mc": str(suite_mc_path.relative_to(out)),
        "questions": questions,
        "fresh_patches": {
            name: {"patch": str(path.relative_to(out)), **json.loads(_kpi_path(path).read_text())}
            for name, path in fresh_dirs.items()
        },
        "facts": support,
        "build_seconds": stages.total(),
        "stage_seconds": stages.seconds,
    }
    return meta
