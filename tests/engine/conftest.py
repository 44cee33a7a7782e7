"""Tiny random Llama models, tokenizer and LoRA patches for the engine's fast tests."""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

TEXTS = [
    "Question: How much does the Lumo Dock cost?\nAnswer: $249",
    "Question: What color is the Pixa Cam?\nAnswer: ocean blue",
    "The quick brown fox jumps over the lazy dog.",
    "Altavia makes docks, hubs, cameras and lamps. Every device ships with a warranty.",
    "A patch carries domain knowledge from one base model to the next.",
] * 20


@dataclass
class TinyWorld:
    tokenizer: Path
    base: Path  # random Llama
    drifted: Path  # same shapes, q_proj of layer 0 scaled by 1.1
    other: Path  # different hidden size
    patch: Path  # PortLLM patch (imported PEFT LoRA with random, non-zero factors)
    peft_only: Path  # the same LoRA as a plain PEFT folder (no manifest)
    rslora_patch: Path


def llama(tokenizer, hidden: int = 32, layers: int = 2, seed: int = 0, max_positions: int = 64):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # larger weights than the default init, so outputs differ clearly
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.2)
    return model.eval()


def save_model(model, tokenizer_dir: Path, out: Path, **save_options) -> Path:
    model.save_pretrained(out, safe_serialization=True, **save_options)
    for item in tokenizer_dir.iterdir():
        shutil.copyfile(item, out / item.name)
    return out


def make_lora(base_dir: Path, out: Path, *, rank: int = 4, alpha: float = 8, use_rslora: bool = False, seed: int = 1) -> Path:
    """A plain PEFT LoRA folder with random A and B (PEFT's default B = 0 would merge to nothing)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    torch.manual_seed(seed)
    config = LoraConfig(
        r=rank, lora_alpha=alpha, target_modules="all-linear", init_lora_weights=False, use_rslora=use_rslora,
        task_type="CAUSAL_LM",
    )
    get_peft_model(model, config).save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> TinyWorld:
    import torch
    from transformers import AutoTokenizer

    from portllm_engine.demo import train_bpe_tokenizer
    from portllm_engine.patches import import_peft

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("tiny")
    train_bpe_tokenizer(TEXTS, root / "tokenizer", vocab_size=320, model_max_length=64)
    tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
    base = save_model(llama(tokenizer), root / "tokenizer", root / "base")
    drifted_model = llama(tokenizer)
    with torch.no_grad():
        drifted_model.model.layers[0].self_attn.q_proj.weight.mul_(1.1)
    drifted = save_model(drifted_model, root / "tokenizer", root / "drifted")
    other = save_model(llama(tokenizer, hidden=48, seed=3), root / "tokenizer", root / "other")
    peft_only = make_lora(base, root / "peft-lora")
    patch = root / "patch"
    import_peft(peft_only, patch, base)
    rslora_peft = make_lora(base, root / "peft-rslora", rank=4, alpha=8, use_rslora=True, seed=2)
    rslora_patch = root / "rslora-patch"
    import_peft(rslora_peft, rslora_patch, base)
    return TinyWorld(root / "tokenizer", base, drifted, other, patch, peft_only, rslora_patch)


@pytest.fixture
def copy_dir(tmp_path):
    """copy_dir(src) -> an editable copy of a model or patch folder."""

    def copy(src: Path, name: str | None = None) -> Path:
        return Path(shutil.copytree(src, tmp_path / (name or src.name)))

    return copy


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))
