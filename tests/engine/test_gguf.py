"""GGUF in: the shipped SmolLM2 file becomes a plain safetensors folder that answers like the model.

The real-model tests need the `real` extra; without it they skip with the reason, and fail where
PORTLLM_TEST_REQUIRE_REAL=1 (CI).
"""
from __future__ import annotations

import json
import os

import pytest

from portllm_engine import gguf
from portllm_engine.errors import EngineError, ModelNotFoundError
from tests.fixtures.demo_world import real_extra_missing


def require_real() -> None:
    missing = real_extra_missing()
    if missing is not None:
        if os.environ.get("PORTLLM_TEST_REQUIRE_REAL") == "1":
            pytest.fail(missing)
        pytest.skip(missing)


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    require_real()
    out = tmp_path_factory.mktemp("gguf") / "smollm2"
    record = gguf.import_gguf(gguf.smollm2_gguf(), out)
    return out, record


def test_smollm2_imports_into_a_plain_safetensors_folder(smollm2):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, record = smollm2
    assert record == json.loads((out / gguf.SOURCE_RECORD).read_text())
    assert record["sha256"] == gguf.PINNED_SHA256[gguf.SMOLLM2_FILE]
    assert record["file_type"] == "MOSTLY_Q4_1" and record["tensor_types"]["Q4_1"] > 0
    assert record["architecture"] == "llama"
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == gguf.STORED_DTYPE
    assert not list(out.glob("*.gguf")) and not list(out.glob("*.bin"))

    model = AutoModelForCausalLM.from_pretrained(out, use_safetensors=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out_ids = model.generate(**ids, max_new_tokens=16, do_sample=False)
    answer = tokenizer.decode(out_ids[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer


def test_a_shipped_file_whose_content_differs_from_its_pin_is_refused(tmp_path):
    fake = tmp_path / gguf.SMOLLM2_FILE
    fake.write_bytes(b"GGUF" + bytes(64))
    with pytest.raises(EngineError, match="not the SmolLM2-135M-Instruct.Q4_1.gguf that PortLLM pins"):
        gguf.import_gguf(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_folder_must_hold_exactly_one_gguf(tmp_path):
    with pytest.raises(EngineError, match="holds no .gguf file"):
        gguf.find_gguf(tmp_path)
    for name in ("a.gguf", "b.gguf"):
        (tmp_path / name).write_bytes(b"GGUF")
    with pytest.raises(EngineError, match="holds 2 .gguf files"):
        gguf.find_gguf(tmp_path)
    assert gguf.find_gguf(tmp_path / "a.gguf") == tmp_path / "a.gguf"
    with pytest.raises(ModelNotFoundError, match="not found"):
        gguf.find_gguf(tmp_path / "missing")


def test_a_missing_extra_names_the_install_command(monkeypatch):
    monkeypatch.setattr(gguf, "_package_dir", lambda module: None)
    with pytest.raises(ModelNotFoundError, match=r"pip install -e '\.\[real\]'"):
        gguf.smollm2_gguf()
