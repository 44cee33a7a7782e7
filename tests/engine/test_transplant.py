from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from portllm_engine.prompt import user_turn
from portllm_engine.errors import EngineError, IncompatiblePatchError, PatchError
from portllm_engine.models import INDEX_FILE, load_base
from portllm_engine.patches import ADAPTER_WEIGHTS, lora_modules
from portllm_engine.transplant import PatchServer, merge_into, transplant, transplant_to_dir
from tests.engine.conftest import save_model

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
    text = "".join(server.generate("support", user_turn("How much?"), max_new_tokens=5))
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


def merged_files(folder) -> dict[str, torch.Tensor]:
    return {key: value for file in sorted(folder.glob("*.safetensors")) for key, value in load_file(str(file)).items()}


def tensor_bytes(file) -> tuple[bytes, dict[str, bytes]]:
    """A safetensors file's header as stored, and each tensor's bytes, read with the format's spec alone."""
    data = file.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    header.pop("__metadata__", None)
    start = 8 + length
    return data[:start], {key: data[start + info["data_offsets"][0] : start + info["data_offsets"][1]] for key, info in header.items()}


def assert_streamed_like_in_memory(tiny, base, out, in_memory, dtype) -> None:
    """Same files, index and headers as the base; adapted weights torch.equal to the in-memory merge;
    every other tensor the base's bytes."""
    adapted = {f"{name}.weight" for name in lora_modules(tiny.patch)}
    assert sorted(p.name for p in out.glob("*.safetensors")) == sorted(p.name for p in base.glob("*.safetensors"))
    assert (out / INDEX_FILE).is_file() == (base / INDEX_FILE).is_file()
    if (base / INDEX_FILE).is_file():
        assert (out / INDEX_FILE).read_bytes() == (base / INDEX_FILE).read_bytes()
    streamed = merged_files(out)
    assert streamed.keys() == in_memory.keys()
    for key, tensor in in_memory.items():
        assert tensor.dtype == dtype and torch.equal(streamed[key], tensor), key
    for file in base.glob("*.safetensors"):
        (base_header, base_tensors), (out_header, out_tensors) = tensor_bytes(file), tensor_bytes(out / file.name)
        assert out_header == base_header
        for key, raw in base_tensors.items():
            assert (out_tensors[key] != raw) if key in adapted else (out_tensors[key] == raw), key
    assert adapted <= streamed.keys()


def assert_fused_merge(tiny, merged) -> None:
    weights = load_file(str(tiny.base / "model.safetensors"))
    adapter = load_file(str(tiny.patch / ADAPTER_WEIGHTS))
    for name, lora in lora_modules(tiny.patch).items():
        expected = torch.addmm(weights[f"{name}.weight"], adapter[lora.b_key], adapter[lora.a_key], alpha=lora.scale)
        assert torch.equal(merged[f"{name}.weight"], expected), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block_rows", [3, None], ids=["3-row-blocks", "whole-tensors"])
def test_streamed_transplant_is_identical_to_the_in_memory_merge(tiny, tmp_path, monkeypatch, dtype, block_rows):
    from portllm_engine import transplant as engine

    if block_rows is not None:  # widest adapted row: 64 columns; the last block of each weight is a remainder
        monkeypatch.setattr(engine, "MERGE_BLOCK_BYTES", 4 * 64 * block_rows)
    model, _ = load_base(tiny.base, device="cpu", dtype=dtype)
    sharded = save_model(model, tiny.tokenizer, tmp_path / "base", max_shard_size="40KB")
    assert len(list(sharded.glob("*.safetensors"))) > 2
    in_memory, _ = transplant(tiny.patch, sharded, device="cpu")
    if dtype == torch.float32:  # the landed merge, one torch.addmm per weight: no bit of its output moves
        assert_fused_merge(tiny, in_memory.state_dict())
    seen = []
    out = transplant_to_dir(tiny.patch, sharded, tmp_path / "streamed", progress=lambda f, step: seen.append(f), device="cpu")
    assert_streamed_like_in_memory(tiny, sharded, out, in_memory.state_dict(), dtype)
    assert seen[-1] == 1.0 and seen == sorted(seen)
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (sharded / name).read_bytes(), name
    assert not list(tmp_path.glob(".*partial*"))


def test_a_float32_weight_is_merged_by_one_addmm_at_any_block_size(tiny, tmp_path, monkeypatch):
    """MKL's addmm rounds a rank-1 product by blocks of rows differently from the whole weight: the
    streamed merge still gives the landed merge's bits."""
    from portllm_engine import transplant as engine
    from portllm_engine.patches import import_peft
    from transformers import AutoTokenizer

    from tests.engine.conftest import llama, make_lora

    monkeypatch.setattr(engine, "MERGE_BLOCK_BYTES", 4 * 256 * 3)
    base = save_model(llama(AutoTokenizer.from_pretrained(tiny.tokenizer), hidden=128), tiny.tokenizer, tmp_path / "base")
    patch = tmp_path / "patch"
    import_peft(make_lora(base, tmp_path / "peft", rank=1, alpha=0.37), patch, base)
    weights, adapter = load_file(str(base / "model.safetensors")), load_file(str(patch / ADAPTER_WEIGHTS))
    out = merged_files(transplant_to_dir(patch, base, tmp_path / "streamed", device="cpu"))
    for name, lora in lora_modules(patch).items():
        a, b, weight = adapter[lora.a_key], adapter[lora.b_key], weights[f"{name}.weight"]
        assert torch.equal(out[f"{name}.weight"], torch.addmm(weight, b, a, alpha=lora.scale)), name


def test_streamed_transplant_of_a_single_file_base_is_one_file(tiny, tmp_path):
    in_memory, _ = transplant(tiny.patch, tiny.base, device="cpu")
    out = transplant_to_dir(tiny.patch, tiny.base, tmp_path / "merged", device="cpu")
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model.safetensors"]
    assert not (out / INDEX_FILE).exists()
    assert_streamed_like_in_memory(tiny, tiny.base, out, in_memory.state_dict(), torch.float32)


def test_streamed_transplant_leaves_nothing_behind_when_refused(tiny, tmp_path):
    with pytest.raises(IncompatiblePatchError, match="does not fit"):
        transplant_to_dir(tiny.patch, tiny.other, tmp_path / "merged", device="cpu")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("keep me")
    with pytest.raises(EngineError, match="not an empty folder"):
        transplant_to_dir(tiny.patch, tiny.base, tmp_path / "taken", device="cpu")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["notes.txt"]


def test_a_half_written_base_is_named_and_nothing_is_written(tiny, tmp_path):
    base = save_model(load_base(tiny.base, device="cpu")[0], tiny.tokenizer, tmp_path / "base", max_shard_size="40KB")
    shard = sorted(base.glob("*.safetensors"))[1]
    with open(shard, "r+b") as fh:
        fh.truncate(shard.stat().st_size - 1000)
    with pytest.raises(EngineError, match=f"{shard.name} is damaged \\(1000 bytes short of what its header describes\\)"):
        transplant_to_dir(tiny.patch, base, tmp_path / "merged", device="cpu")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]


def test_a_base_that_shrinks_during_the_transplant_leaves_no_output(tiny, tmp_path, monkeypatch):
    """A file cut short after its header was read: the copy or the merge ends early, the staging
    folder goes, and the final name never appears."""
    from portllm_engine import transplant as engine

    base = save_model(load_base(tiny.base, device="cpu")[0], tiny.tokenizer, tmp_path / "base", max_shard_size="40KB")
    read = engine._SafetensorsLayout.read

    def read_then_truncate(path):
        layout = read(path)
        with open(path, "r+b") as fh:
            fh.truncate(layout.data_start + 100)
        return layout

    monkeypatch.setattr(engine._SafetensorsLayout, "read", staticmethod(read_then_truncate))
    monkeypatch.setattr(engine, "_require_compatible", lambda patch, base: None)  # it would see the damage first
    with pytest.raises(EngineError, match="ended early .*: was it modified during the transplant"):
        transplant_to_dir(tiny.patch, base, tmp_path / "merged", device="cpu")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]
