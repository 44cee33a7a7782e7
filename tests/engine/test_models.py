from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from portllm_engine.errors import EngineError, ModelNotFoundError, UnsafeCheckpointError
from portllm_engine.models import (
    INDEX_FILE,
    architecture_signature,
    fingerprint,
    load_base,
    resolve_model_dir,
    safetensors_header,
    tensor_index,
    tokenizer_fingerprint,
)
from portllm_engine.patches import sha256_file


def test_fingerprint_is_stable_and_tracks_weights(tiny):
    assert fingerprint(tiny.base) == fingerprint(tiny.base)
    assert fingerprint(tiny.base) != fingerprint(tiny.drifted)
    assert len(fingerprint(tiny.base)) == 64


class HeaderOnly:
    """A safe_open handle that fails on any tensor read, to prove a function reads headers only."""

    def __init__(self, real):
        self.real = real

    def __enter__(self):
        self.handle = self.real.__enter__()
        return self

    def __exit__(self, *exc):
        return self.real.__exit__(*exc)

    def keys(self):
        return self.handle.keys()

    def get_slice(self, name):
        part = self.handle.get_slice(name)
        return type("Shape", (), {"get_shape": part.get_shape, "get_dtype": part.get_dtype})()


def test_signature_comes_from_headers_and_matches_the_weights(tiny, monkeypatch):
    import safetensors

    real_open = safetensors.safe_open
    monkeypatch.setattr(safetensors, "safe_open", lambda *args, **kwargs: HeaderOnly(real_open(*args, **kwargs)))
    signature = architecture_signature(tiny.base)
    monkeypatch.undo()
    weights = load_file(str(tiny.base / "model.safetensors"))
    assert signature["model_type"] == "llama"
    assert (signature["hidden_size"], signature["num_layers"]) == (32, 2)
    assert signature["modules"]["model.layers.0.self_attn.q_proj"] == list(weights["model.layers.0.self_attn.q_proj.weight"].shape)
    assert signature["modules"]["lm_head"] == [signature["vocab_size"], 32]
    assert "model.norm" not in signature["modules"]  # 1-D norms are not matrices
    assert architecture_signature(tiny.drifted)["digest"] == signature["digest"]  # same shapes
    assert architecture_signature(tiny.other)["digest"] != signature["digest"]


def reference_header(path) -> dict:
    """The safetensors format read by hand: 8-byte little-endian length, then JSON."""
    raw = path.read_bytes()
    header = json.loads(raw[8 : 8 + struct.unpack("<Q", raw[:8])[0]])
    header.pop("__metadata__", None)
    return {name: {"dtype": info["dtype"], "shape": info["shape"]} for name, info in header.items()}


def test_fingerprints_keep_their_stored_values(tiny, tmp_path):
    """Fingerprints and digests are stored in databases: they must equal this plain computation."""
    from transformers import AutoModelForCausalLM

    sharded = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(tiny.base).save_pretrained(sharded, max_shard_size="40KB")
    shards = sorted(sharded.glob("*.safetensors"))
    assert len(shards) > 2
    for root in (tiny.base, sharded):
        reference = hashlib.sha256()
        for path in [root / "config.json", *sorted(root.glob("*.safetensors"))]:
            reference.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
        assert fingerprint(root) == reference.hexdigest()
    assert sha256_file(shards[0]) == hashlib.sha256(shards[0].read_bytes()).hexdigest()
    for shard in shards:
        assert safetensors_header(shard) == reference_header(shard)
    assert architecture_signature(sharded)["modules"] == architecture_signature(tiny.base)["modules"]


def test_a_fingerprint_reads_the_weights_once_until_they_change(tiny, copy_dir, monkeypatch):
    folder = copy_dir(tiny.base)
    reads = []
    real_digest = hashlib.file_digest
    monkeypatch.setattr(hashlib, "file_digest", lambda fh, digest: reads.append(fh.name) or real_digest(fh, digest))
    first = fingerprint(folder)
    assert fingerprint(folder) == first and len(reads) == 2  # config.json and model.safetensors, once
    weights = load_file(str(folder / "model.safetensors"))
    weights["lm_head.weight"] = weights["lm_head.weight"] * 2
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    assert fingerprint(folder) != first and len(reads) == 4


def test_a_sharded_checkpoint_is_read_through_its_index(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    sharded = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(tiny.base).save_pretrained(sharded, max_shard_size="40KB")
    (sharded / "stray.safetensors").write_bytes((tiny.base / "model.safetensors").read_bytes())
    assert "stray.safetensors" not in {file.name for file, _, _ in tensor_index(sharded).values()}
    first = json.loads((sharded / INDEX_FILE).read_text())["weight_map"]["lm_head.weight"]
    (sharded / first).unlink()
    with pytest.raises(ModelNotFoundError, match=f"names missing shards \\({first}\\): the download is incomplete"):
        tensor_index(sharded)


def test_a_file_that_is_not_safetensors_is_refused(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    with pytest.raises(EngineError, match="not a safetensors file"):
        safetensors_header(bad)


def test_tokenizer_fingerprint(tiny):
    assert tokenizer_fingerprint(tiny.base) == tokenizer_fingerprint(tiny.other)  # same tokenizer files


def test_pickled_checkpoint_is_refused_without_unpickling(tiny, tmp_path, monkeypatch):
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copyfile(tiny.base / "config.json", folder / "config.json")
    for item in tiny.tokenizer.iterdir():
        shutil.copyfile(item, folder / item.name)
    torch.save(load_file(str(tiny.base / "model.safetensors")), folder / "pytorch_model.bin")

    def refuse(*args, **kwargs):
        raise AssertionError("a pickle was opened")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    with pytest.raises(UnsafeCheckpointError, match="pytorch_model.bin"):
        load_base(folder, device="cpu")
    with pytest.raises(UnsafeCheckpointError):
        fingerprint(folder)
    with pytest.raises(UnsafeCheckpointError):
        architecture_signature(folder)


def test_unknown_models(tmp_path):
    with pytest.raises(ModelNotFoundError, match="not found"):
        resolve_model_dir(tmp_path / "missing")
    with pytest.raises(ModelNotFoundError, match="not in the local HF cache"):
        resolve_model_dir("portllm-test/surely-not-cached")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="config.json"):
        load_base(tmp_path / "empty", device="cpu")


def test_load_base_never_runs_remote_code(tiny, copy_dir):
    folder = copy_dir(tiny.base)
    from tests.engine.conftest import edit_json

    edit_json(folder / "config.json", model_type="evil_custom", auto_map={"AutoModelForCausalLM": "evil.Model"})
    (folder / "evil.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(Exception) as caught:
        load_base(folder, device="cpu")
    assert "remote code ran" not in str(caught.value)


def test_signature_changes_name_what_differs_and_bound_the_modules():
    from portllm_engine.models import signature_changes

    before = {"model_type": "llama", "hidden_size": 32, "num_layers": 2, "vocab_size": 320,
              "modules": {f"m{i}": [32, 32] for i in range(6)}}
    assert signature_changes(before, dict(before)) == []
    after = {**before, "model_type": "gemma3_text", "hidden_size": 48,
             "modules": {**{f"m{i}": [48, 48] for i in range(5)}, "extra": [1, 1]}}
    assert signature_changes(before, after) == [
        "model_type llama → gemma3_text", "hidden_size 32 → 48",
        "5 weight matrices of another shape: m0, m1, m2 and 2 more", "1 weight matrix missing: m5",
        "1 weight matrix new: extra",
    ]
    # A signature recorded without module shapes (or none at all) is compared on what it has.
    assert signature_changes({"hidden_size": 32}, after) == ["hidden_size 32 → 48"]
    assert signature_changes({}, after) == []
