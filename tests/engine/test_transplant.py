from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from portllm_engine.errors import IncompatiblePatchError, PatchError
from portllm_engine.models import load_base
from portllm_engine.patches import ADAPTER_WEIGHTS, lora_modules
from portllm_engine.transplant import PatchServer, merge_into, transplant

PREFIX = "base_model.model."


def hand_merge(base_dir, patch_dir, scale: float) -> dict[str, torch.Tensor]:
    """W + scale·B·A computed directly from the files, independent of the engine's code."""
    weights = load_file(str(base_dir / "model.safetensors"))
    adapter = load_file(str(patch_dir / ADAPTER_WEIGHTS))
    expected = {}
    for key in adapter:
        if ".lora_A." not in key:
            continue
        module = key[len(PREFIX) : key.index(".lora_A.")]
        a = adapter[key].double()
        b = adapter[key.replace(".lora_A.", ".lora_B.")].double()
        expected[module] = (weights[f"{module}.weight"].double() + scale * (b @ a)).float()
    return expected


@pytest.mark.parametrize(("fixture", "scale"), [("patch", 8 / 4), ("rslora_patch", 8 / math.sqrt(4))])
def test_merge_matches_hand_computation(tiny, fixture, scale):
    patch_dir = getattr(tiny, fixture)
    assert {m.scale for m in lora_modules(patch_dir).values()} == {scale}
    model, _ = load_base(tiny.base, device="cpu")
    merge_into(model, patch_dir)
    expected = hand_merge(tiny.base, patch_dir, scale)
    assert len(expected) == 2 * 7  # two layers × (q, k, v, o, gate, up, down)
    merged = dict(model.named_modules())
    for module, weight in expected.items():
        torch.testing.assert_close(merged[module].weight, weight, rtol=1e-5, atol=1e-5)
    assert not any("lora" in name for name, _ in model.named_modules())


def test_merge_keeps_base_dtype(tiny):
    model, _ = load_base(tiny.base, device="cpu", dtype=torch.bfloat16)
    merge_into(model, tiny.patch)
    expected = hand_merge(tiny.base, tiny.patch, 2.0)
    q = "model.layers.0.self_attn.q_proj"
    weight = dict(model.named_modules())[q].weight
    assert weight.dtype == torch.bfloat16
    # One rounding of the float32 sum into bf16 (not a bf16 product), so within bf16's resolution.
    torch.testing.assert_close(weight.float(), expected[q], rtol=1e-2, atol=1e-2)


def test_merged_and_attached_logits_agree(tiny):
    merged, tokenizer = transplant(tiny.patch, tiny.base, device="cpu")
    server = PatchServer(tiny.base, device="cpu")
    server.attach("support", tiny.patch)
    ids = tokenizer(["Question: How much does the Lumo Dock cost?"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = merged(input_ids=ids).logits
    torch.testing.assert_close(server.forward("support", ids), expected, rtol=1e-4, atol=1e-4)


def test_patch_server_switches_without_reloading_the_base(tiny):
    server = PatchServer(tiny.base, device="cpu")
    base_alone, _ = load_base(tiny.base, device="cpu")
    ids = server.tokenizer(["The quick brown fox"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        plain = base_alone(input_ids=ids).logits
    embedding = server.base.get_input_embeddings().weight
    server.attach("a", tiny.patch)
    server.attach("b", tiny.rslora_patch)
    first = server.forward("a", ids)
    second = server.forward("b", ids)
    torch.testing.assert_close(server.forward(None, ids), plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(server.forward("a", ids), first)
    assert not torch.allclose(first, second)
    assert server.model.get_input_embeddings().weight is embedding  # same resident tensors
    a_merged, _ = transplant(tiny.patch, tiny.base, device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(first, a_merged(input_ids=ids).logits, rtol=1e-4, atol=1e-4)
    server.detach("a")
    with pytest.raises(PatchError, match="no patch named a"):
        server.forward("a", ids)
    torch.testing.assert_close(server.forward("b", ids), second)


def test_patch_server_streams_answers(tiny):
    server = PatchServer(tiny.base, device="cpu")
    server.attach("support", tiny.patch)
    text = "".join(server.generate("support", "How much?", max_new_tokens=5))
    assert isinstance(text, str)


def test_transplant_saves_a_plain_safetensors_model(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    model, tokenizer = transplant(tiny.patch, tiny.base, out_dir=tmp_path / "merged", device="cpu")
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    assert not list((tmp_path / "merged").glob("*.bin"))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", use_safetensors=True)
    ids = tokenizer(["Altavia makes docks"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_transplant_refuses_an_incompatible_base(tiny):
    with pytest.raises(IncompatiblePatchError, match="does not fit") as caught:
        transplant(tiny.patch, tiny.other, device="cpu")
    assert any(e["code"] == "shape_mismatch" for e in caught.value.report["errors"])
    server = PatchServer(tiny.other, device="cpu")
    with pytest.raises(IncompatiblePatchError):
        server.attach("support", tiny.patch)
