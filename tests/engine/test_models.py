from __future__ import annotations

import pickle
import shutil

import pytest
import torch
from safetensors.torch import load_file

from portllm_engine.errors import ModelNotFoundError, UnsafeCheckpointError
from portllm_engine.models import (
    architecture_signature,
    fingerprint,
    load_base,
    resolve_model_dir,
    tokenizer_fingerprint,
)


def test_fingerprint_is_stable_and_tracks_weights(tiny):
    assert fingerprint(tiny.base) == fingerprint(tiny.base)
    assert fingerprint(tiny.base) != fingerprint(tiny.drifted)
    assert len(fingerprint(tiny.base)) == 64


def test_signature_comes_from_headers_and_matches_the_weights(tiny, monkeypatch):
    import safetensors

    def no_tensor_reads(*args, **kwargs):
        raise AssertionError("the signature must not read tensors")

    monkeypatch.setattr(safetensors, "safe_open", no_tensor_reads)
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
