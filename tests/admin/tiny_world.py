"""A tiny world an operator could bring: two related Llama bases, an unrelated one, a PEFT adapter
trained "elsewhere", and the bad inputs the CLI must refuse. Seconds to build on a CPU."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

WORDS = (
    "the a an is of to and what which color price costs cost widget gadget gizmo blue red green "
    "ten twenty thirty dollars yes no answer question product support help"
).split()
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]

# Facts the suite asks about; the answers are single words so exact match stays meaningful.
FACTS = [
    ("what color is the widget", "blue"),
    ("what color is the gadget", "red"),
    ("what color is the gizmo", "green"),
    ("what is the price of the widget", "ten"),
    ("what is the price of the gadget", "twenty"),
    ("what is the price of the gizmo", "thirty"),
    ("is the widget a product", "yes"),
    ("is the gizmo a question", "no"),
]


@dataclass(frozen=True)
class TinyWorld:
    v1: Path
    v2: Path
    other: Path
    pickled: Path
    remote_code: Path
    adapter: Path  # a plain PEFT LoRA folder trained on v1
    adapter_other: Path  # a PEFT LoRA for `other`: its shapes do not fit v1
    adapter_pickled: Path  # a PEFT LoRA saved as adapter_model.bin
    suite: Path
    bad_suite: Path  # malformed JSON on line 7
    train_data: Path


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(SPECIALS + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )


def _llama(hidden: int, seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(SPECIALS) + len(WORDS),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    return LlamaForCausalLM(config)


def _save_base(model, tokenizer, out: Path) -> Path:
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def _lora(model, out: Path, *, seed: int, safe: bool = True) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    # Random A and B so the adapter changes the model (PEFT's default B = 0 would be a no-op).
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(out, safe_serialization=safe)
    peft_model.unload()  # leave the base model as it was for the next caller
    return out


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def build_tiny_world(root: Path) -> TinyWorld:
    import torch

    root.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer()

    base = _llama(hidden=16, seed=0)
    v1 = _save_base(base, tokenizer, root / "tiny-v1")
    adapter = _lora(base, root / "adapter-v1", seed=1)
    adapter_pickled = _lora(base, root / "adapter-pickled", seed=1, safe=False)

    # v2: "continued pretraining" stood in by a small, seeded nudge of every weight.
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for param in base.parameters():
            param.add_(0.02 * torch.randn(param.shape, generator=generator))
    v2 = _save_base(base, tokenizer, root / "tiny-v2")

    other_model = _llama(hidden=24, seed=3)
    other = _save_base(other_model, tokenizer, root / "tiny-other")
    adapter_other = _lora(other_model, root / "adapter-other", seed=4)

    pickled = root / "tiny-pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((v1 / "config.json").read_text())
    torch.save({"w": torch.zeros(2)}, pickled / "pytorch_model.bin")

    remote_code = _save_base(_llama(hidden=16, seed=5), tokenizer, root / "tiny-remote-code")
    config = json.loads((remote_code / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_tiny.TinyForCausalLM"}
    (remote_code / "config.json").write_text(json.dumps(config))

    suite_rows = [{"kind": "generate", "prompt": q, "target": a, "match": "exact"} for q, a in FACTS]
    suite = _write_jsonl(root / "suite.jsonl", suite_rows)
    bad_suite = root / "bad-suite.jsonl"
    lines = [json.dumps(row) for row in suite_rows]
    lines[6] = '{"kind": "generate", "prompt": "what color is'  # line 7: cut off mid-object
    bad_suite.write_text("\n".join(lines) + "\n")
    train_data = _write_jsonl(root / "train.jsonl", [{"prompt": q, "completion": a} for q, a in FACTS])

    return TinyWorld(
        v1=v1,
        v2=v2,
        other=other,
        pickled=pickled,
        remote_code=remote_code,
        adapter=adapter,
        adapter_other=adapter_other,
        adapter_pickled=adapter_pickled,
        suite=suite,
        bad_suite=bad_suite,
        train_data=train_data,
    )


def new_version_of(model: Path, out: Path) -> Path:
    """A copy of `model` that fingerprints as new weights (its config.json gains a key): a stand-in
    for a retrained base, since the same weights under a new label release nothing."""
    import shutil

    shutil.copytree(model, out)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "portllm_test_version": out.name}))
    return out
