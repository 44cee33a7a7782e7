"""Every major architecture, table-driven: tiny models built from configs, patches made by PEFT.

For each architecture an `origin` base (float32) gets PEFT LoRA patches; an `evolved` base (every
weight perturbed, deterministically) is saved sharded in float32 and bfloat16. The engine's merges
(in memory and streamed to disk) must give the logits of PEFT's own `merge_and_unload()` there.
"""
from __future__ import annotations

import copy
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from portllm_engine.prompt import user_turn
from portllm_engine.compat import check
from portllm_engine.errors import IncompatiblePatchError, PatchError
from portllm_engine.generate import stream_generate
from portllm_engine.kpi import evaluate, load_suite
from portllm_engine.models import load_base, safetensors_header, tensor_index
from portllm_engine.patches import ADAPTER_WEIGHTS, carried_copies, import_peft
from portllm_engine.transplant import PatchServer, merge_into, transplant, transplant_to_dir
from tests.engine.conftest import save_model

HIDDEN, LAYERS, SHARD = 32, 2, "40KB"
ARCHITECTURES = {
    # name: (config class, what makes it that architecture)
    "llama-gqa": ("LlamaConfig", {"num_attention_heads": 4, "num_key_value_heads": 2}),
    "mistral": ("MistralConfig", {"num_attention_heads": 4, "num_key_value_heads": 2, "sliding_window": 16}),
    "qwen2": ("Qwen2Config", {"num_attention_heads": 4, "num_key_value_heads": 2}),  # biases on q/k/v
    "gemma2": (
        "Gemma2Config",
        {
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 16,
            "query_pre_attn_scalar": 16,
            "sliding_window": 16,
            "attn_logit_softcapping": 5.0,
            "final_logit_softcapping": 3.0,
            "tie_word_embeddings": True,
        },
    ),
    "phi3": ("Phi3Config", {"num_attention_heads": 4, "num_key_value_heads": 4}),  # fused qkv_proj, gate_up_proj
}
PATCHES = {
    "all-linear": {"target_modules": "all-linear"},
    "rslora": {"target_modules": "all-linear", "use_rslora": True},
    "embeddings": {"target_modules": ["embed_tokens", "o_proj", "lm_head"]},
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# Tolerances against PEFT's merge_and_unload(), per dtype of the base:
# - float32: both form the delta scale·B·A and add it to W in float32, though not necessarily
#   with the same operations: weights within 1e-5 relative, logits within 1e-4 of the largest
#   |logit| (measured: identical logits on every architecture).
# - bfloat16: PEFT rounds the delta to bf16 and then rounds the sum again; the engine rounds the
#   float32 sum once. Weights therefore differ by at most one bf16 step (2**-7, relative) of the
#   operands |W| + |W + delta| (not of the result, which can cancel to 0). Logits of the two bf16
#   models within 8 % of the largest |logit| (measured: identical for LoRA on linear layers, up to
#   5 % with LoRA on embed_tokens/lm_head, where PEFT's extra rounding of the delta shows).
FLOAT32_WEIGHTS = {"rtol": 1e-5, "atol": 1e-6}
BFLOAT16_STEP = 2**-7
LOGIT_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 8e-2}  # times the largest |logit|
PROMPT = "Question: How much does the Lumo Dock cost?\nAnswer:"
SUITE_ROWS = [
    {"kind": "multiple_choice", "context": "The quick brown", "choices": [" fox", " dog"], "gold": 0},
    {"kind": "multiple_choice", "context": "Altavia makes", "choices": [" docks", " rivers", " lamps"], "gold": 0},
    {"kind": "generate", "prompt": "Question: What color is the Pixa Cam?\nAnswer:", "target": "ocean blue"},
]


@dataclass
class ArchWorld:
    origin: Path
    evolved: dict[torch.dtype, Path]
    peft: dict[str, Path] = field(default_factory=dict)  # plain PEFT folders, as PEFT saved them
    patches: dict[str, Path] = field(default_factory=dict)  # imported as PortLLM patches: PEFT loads them too


def build_model(arch: str, tokenizer, seed: int = 0, **overrides):
    import transformers

    config_class, specific = ARCHITECTURES[arch]
    settings = {
        "vocab_size": len(tokenizer),
        "hidden_size": HIDDEN,
        "intermediate_size": 2 * HIDDEN,
        "num_hidden_layers": LAYERS,
        "max_position_embeddings": 64,
        "tie_word_embeddings": False,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        **specific,
        **overrides,
    }
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(getattr(transformers, config_class)(**settings))
    with torch.no_grad():  # larger than the default init, so that outputs (and their differences) are clear
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.2)
    return model.eval()


def evolve(model, seed: int = 7):
    """A later version of the base: every tensor moved by 5 % of its spread, deterministically."""
    evolved = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in evolved.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05 * (param.std() if param.numel() > 1 else 1))
    return evolved


def make_peft_patch(model, out: Path, seed: int = 1, save_embedding_layers="auto", **lora) -> Path:
    """A PEFT LoRA with every factor random (PEFT's B = 0 default would merge to nothing).

    With LoRA on embeddings PEFT also saves whole copies of them by default (save_embedding_layers)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, task_type="CAUSAL_LM", **lora)
    peft_model = get_peft_model(copy.deepcopy(model), config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    peft_model.save_pretrained(out, safe_serialization=True, save_embedding_layers=save_embedding_layers)
    return out


@pytest.fixture(scope="module")
def world(tiny, tmp_path_factory):
    """world(arch) -> that architecture's ArchWorld, built on first use."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny.tokenizer)
    built: dict[str, ArchWorld] = {}

    def get(arch: str) -> ArchWorld:
        if arch not in built:
            root = tmp_path_factory.mktemp(arch)
            origin_model = build_model(arch, tokenizer)
            origin = save_model(origin_model, tiny.tokenizer, root / "origin")
            evolved_model = evolve(origin_model)
            evolved = {
                dtype: save_model(copy.deepcopy(evolved_model).to(dtype), tiny.tokenizer, root / f"evolved-{name}", max_shard_size=SHARD)
                for name, dtype in DTYPES.items()
            }
            found = ArchWorld(origin, evolved)
            for kind, lora in PATCHES.items():
                found.peft[kind] = make_peft_patch(origin_model, root / f"peft-{kind}", **lora)
                if not (ties(arch) and kind == "embeddings"):  # refused, see test_tied_embeddings_are_refused
                    import_peft(found.peft[kind], root / f"patch-{kind}", origin)
                    found.patches[kind] = root / f"patch-{kind}"
            built[arch] = found
        return built[arch]

    return get


def ties(arch: str) -> bool:
    return bool(ARCHITECTURES[arch][1].get("tie_word_embeddings"))


def peft_merged(base: Path, peft_dir: Path, dtype: torch.dtype):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    return PeftModel.from_pretrained(model, str(peft_dir)).merge_and_unload().eval()


def logits(model, tokenizer, text: str = PROMPT) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=tokenizer([text], return_tensors="pt")["input_ids"]).logits.float()


def streamed_weights(folder: Path) -> dict[str, torch.Tensor]:
    return {key: value for file in sorted(folder.glob("*.safetensors")) for key, value in load_file(str(file)).items()}


def assert_weights_agree(mine: dict, peft: dict, before: dict, keys, dtype: torch.dtype) -> None:
    for key in keys:
        ours, theirs = mine[key].float(), peft[key].float()
        if dtype == torch.float32:
            torch.testing.assert_close(ours, theirs, **FLOAT32_WEIGHTS, msg=key)
        else:
            bound = BFLOAT16_STEP * (before[key].float().abs() + theirs.abs())
            assert bool(((ours - theirs).abs() <= bound).all()), key


CASES = [
    pytest.param(arch, dtype, kind, id=f"{arch}-{dtype}-{kind}")
    for arch in ARCHITECTURES
    for dtype in DTYPES
    for kind in PATCHES
    if not (ties(arch) and kind == "embeddings")
]


@pytest.mark.parametrize(("arch", "dtype_name", "kind"), CASES)
def test_transplant_equals_peft_merge_and_unload(world, arch, dtype_name, kind, tmp_path):
    from transformers import AutoModelForCausalLM

    dtype, found = DTYPES[dtype_name], world(arch)
    base = found.evolved[dtype]
    assert len(list(base.glob("*.safetensors"))) > 1  # the base is read shard by shard
    expected = peft_merged(base, found.patches[kind], dtype)
    merged, tokenizer = transplant(found.patches[kind], base, device="cpu")
    out = transplant_to_dir(found.patches[kind], base, tmp_path / "streamed", device="cpu")

    in_memory = merged.state_dict()
    streamed = streamed_weights(out)
    assert set(streamed) == set(tensor_index(base))
    for key, tensor in streamed.items():
        assert tensor.dtype == dtype and torch.equal(tensor, in_memory[key]), key
    before = load_base(base, device="cpu")[0]
    assert_weights_agree(in_memory, expected.state_dict(), before.state_dict(), tensor_index(base), dtype)

    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    reference = logits(expected, tokenizer)
    assert not torch.allclose(reference, logits(before, tokenizer))  # the patch matters
    scale = float(reference.abs().max())
    torch.testing.assert_close(logits(merged, tokenizer), reference, rtol=0, atol=LOGIT_TOLERANCE[dtype] * scale)
    torch.testing.assert_close(logits(reloaded, tokenizer), logits(merged, tokenizer), rtol=0, atol=0)


def test_the_tiny_models_have_their_architectures_features(world):
    def shape(arch: str, key: str) -> list[int]:
        return tensor_index(world(arch).origin)[key][1]

    head = HIDDEN // 4
    assert shape("llama-gqa", "model.layers.0.self_attn.k_proj.weight") == [2 * head, HIDDEN]  # 2 kv heads of 4
    assert "model.layers.0.self_attn.q_proj.bias" in tensor_index(world("qwen2").origin)
    assert shape("phi3", "model.layers.0.self_attn.qkv_proj.weight") == [3 * HIDDEN, HIDDEN]
    assert shape("phi3", "model.layers.0.mlp.gate_up_proj.weight") == [4 * HIDDEN, HIDDEN]
    gemma = json.loads((world("gemma2").origin / "config.json").read_text())
    assert gemma["tie_word_embeddings"] and gemma["final_logit_softcapping"] == 3.0
    assert "lm_head.weight" not in tensor_index(world("gemma2").origin)
    assert json.loads((world("mistral").origin / "config.json").read_text())["sliding_window"] == 16


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_compat_accepts_the_evolved_base_and_refuses_other_shapes(world, arch, tiny, tmp_path):
    from transformers import AutoTokenizer

    found, tokenizer = world(arch), AutoTokenizer.from_pretrained(tiny.tokenizer)
    for dtype in DTYPES.values():
        report = check(found.patches["all-linear"], found.evolved[dtype])
        assert report.compatible, report.errors
    wider = save_model(build_model(arch, tokenizer, vocab_size=len(tokenizer) + 16), tiny.tokenizer, tmp_path / "vocab")
    assert "vocab_mismatch" in {e["code"] for e in check(found.patches["all-linear"], wider).errors}
    bigger = save_model(build_model(arch, tokenizer, hidden_size=48, intermediate_size=96), tiny.tokenizer, tmp_path / "hidden")
    codes = {e["code"] for e in check(found.patches["all-linear"], bigger).errors}
    assert {"architecture_mismatch", "shape_mismatch"} <= codes


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> list[dict]:
    path = tmp_path_factory.mktemp("suite") / "suite.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in SUITE_ROWS))
    return load_suite(path)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_kpi_eval_and_answers_with_the_patch(world, arch, suite):
    """The candidate is scored by the KPI eval, and the serve path answers with the patch attached."""
    from transformers import AutoTokenizer

    found = world(arch)
    base, patch = found.evolved[torch.float32], found.patches["all-linear"]
    candidate, tokenizer = transplant(patch, base, device="cpu")
    alone = evaluate(load_base(base, device="cpu")[0], tokenizer, suite)
    scored = evaluate(candidate, tokenizer, suite)
    reference = evaluate(peft_merged(base, patch, torch.float32), AutoTokenizer.from_pretrained(base), suite)
    assert scored.n == len(suite)
    for mine, theirs, before in zip(scored.items[:2], reference.items[:2], alone.items[:2]):
        assert mine["loglikelihoods"] == pytest.approx(theirs["loglikelihoods"], abs=1e-3)
        assert mine["loglikelihoods"] != pytest.approx(before["loglikelihoods"], abs=1e-3)
    assert scored.items[2]["output"] == reference.items[2]["output"]

    server = PatchServer(base, device="cpu")
    server.attach("support", patch)
    answer = "".join(server.generate("support", user_turn(PROMPT), max_new_tokens=6))
    assert answer == "".join(stream_generate(candidate, tokenizer, user_turn(PROMPT), max_new_tokens=6))
    assert answer.strip()


def test_tied_embeddings_are_refused_with_what_to_do(world, tmp_path):
    """Gemma 2 shares one matrix between embed_tokens and lm_head: a merge would move both."""
    found = world("gemma2")
    base = found.evolved[torch.float32]
    origin_model, _ = load_base(found.origin, device="cpu")
    adapter = make_peft_patch(origin_model, tmp_path / "adapter", save_embedding_layers=False, **PATCHES["embeddings"])
    report = check(adapter, base)
    tied = [e for e in report.errors if e["code"] == "tied_embeddings"]
    assert {e["module"] for e in tied} == {"model.embed_tokens", "lm_head"}
    assert all("retrain the patch without embed_tokens and lm_head" in e["message"] for e in tied)
    with pytest.raises(IncompatiblePatchError, match="adapts embeddings this base ties to its output layer.*retrain it"):
        transplant_to_dir(adapter, base, tmp_path / "out", device="cpu")
    model, _ = load_base(base, device="cpu")
    with pytest.raises(PatchError, match="tie_word_embeddings"):
        merge_into(model, adapter)
    with pytest.raises(IncompatiblePatchError):
        PatchServer(base, device="cpu").attach("support", adapter)


def test_carried_embedding_copies_are_dropped_at_import_when_they_equal_the_origin(world, tmp_path):
    """PEFT saves whole embed_tokens / lm_head copies with an embedding LoRA; loaded onto a new base
    they would put the old matrices back. Import keeps the factors alone, once the copies are shown
    to be the origin's; a folder still carrying them is refused with what to do."""
    found = world("llama-gqa")
    carried = carried_copies(safetensors_header(found.peft["embeddings"] / ADAPTER_WEIGHTS))
    assert set(carried) == {"model.embed_tokens", "lm_head"}
    imported = load_file(str(found.patches["embeddings"] / ADAPTER_WEIGHTS))
    original = load_file(str(found.peft["embeddings"] / ADAPTER_WEIGHTS))
    assert imported.keys() == original.keys() - set(carried.values())
    assert all(torch.equal(tensor, original[key]) for key, tensor in imported.items())
    report = check(found.peft["embeddings"], found.evolved[torch.float32])
    assert [e["code"] for e in report.errors] == ["patch_unreadable"]
    assert "save_embedding_layers=False" in report.errors[0]["message"]
    with pytest.raises(PatchError, match="differs from evolved-float32's"):
        import_peft(found.peft["embeddings"], tmp_path / "imported", found.evolved[torch.float32])


@pytest.mark.parametrize(
    ("lora", "needle"),
    [({"use_dora": True}, "use_dora=False"), ({"modules_to_save": ["lm_head"]}, "instead of modules_to_save")],
    ids=["dora", "modules_to_save"],
)
def test_what_a_merge_cannot_carry_is_refused_with_what_to_do(world, tmp_path, lora, needle):
    from portllm_engine.patches import ADAPTER_CONFIG

    found = world("llama-gqa")
    origin_model, _ = load_base(found.origin, device="cpu")
    adapter = make_peft_patch(origin_model, tmp_path / "adapter", target_modules=["q_proj", "v_proj"], **lora)
    report = check(adapter, found.evolved[torch.float32])
    assert [e["code"] for e in report.errors] == ["unsupported_adapter"]
    assert needle in report.errors[0]["message"]
    with pytest.raises(PatchError, match="retrain"):
        import_peft(adapter, tmp_path / "imported", found.origin)
    with pytest.raises(IncompatiblePatchError, match="retrain"):
        transplant_to_dir(adapter, found.evolved[torch.float32], tmp_path / "out", device="cpu")
    # A config that hides the switch does not get the adapter merged wrong: its extra tensors give it away.
    config = json.loads((adapter / ADAPTER_CONFIG).read_text())
    config.pop(next(iter(lora)))
    (adapter / ADAPTER_CONFIG).write_text(json.dumps(config))
    assert not check(adapter, found.evolved[torch.float32]).compatible


def test_a_patch_whose_base_tokenizer_changed_is_refused(world, tmp_path):
    found = world("llama-gqa")
    base = Path(shutil.copytree(found.evolved[torch.float32], tmp_path / "retokenized"))
    spec = json.loads((base / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    first, second = list(vocab)[100:102]
    vocab[first], vocab[second] = vocab[second], vocab[first]  # same size, two ids swapped
    (base / "tokenizer.json").write_text(json.dumps(spec))
    report = check(found.patches["all-linear"], base)
    assert [e["code"] for e in report.errors] == ["tokenizer_mismatch"]
    assert "retrain or re-tune the patch on this base" in report.errors[0]["message"]
    with pytest.raises(IncompatiblePatchError, match="tokenizer"):
        transplant_to_dir(found.patches["all-linear"], base, tmp_path / "out", device="cpu")
