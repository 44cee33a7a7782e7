from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from portllm_engine.compat import check
from portllm_engine.demo import train_bpe_tokenizer
from portllm_engine.patches import ADAPTER_CONFIG, ADAPTER_WEIGHTS, MANIFEST
from tests.engine.conftest import edit_json


def codes(report) -> set[str]:
    return {issue["code"] for issue in report.errors}


def test_patch_fits_its_own_base_and_a_drifted_one(tiny):
    for base in (tiny.base, tiny.drifted):
        report = check(tiny.patch, base)
        assert report.compatible, report.errors
        assert report.to_dict() == {"compatible": True, "errors": [], "warnings": []}


def test_plain_peft_folder_is_checked_with_unknowns_reported(tiny):
    report = check(tiny.peft_only, tiny.base)
    assert report.compatible
    (warning,) = report.warnings
    assert warning["code"] == "no_manifest" and "weights_sha256" in warning["unknown"]
    assert codes(check(tiny.peft_only, tiny.other)) == {"shape_mismatch"}


def test_model_type_mismatch(tiny, copy_dir):
    base = copy_dir(tiny.base)
    edit_json(base / "config.json", model_type="mistral")
    assert "model_type_mismatch" in codes(check(tiny.patch, base))


def test_missing_module(tiny, copy_dir):
    base = copy_dir(tiny.base)
    weights = load_file(str(base / "model.safetensors"))
    weights["model.layers.1.mlp.renamed_proj.weight"] = weights.pop("model.layers.1.mlp.up_proj.weight")
    save_file(weights, str(base / "model.safetensors"))
    report = check(tiny.patch, base)
    assert codes(report) == {"missing_module"}
    assert report.errors[0]["module"] == "model.layers.1.mlp.up_proj"


def test_shape_mismatch_on_a_different_shape(tiny):
    report = check(tiny.patch, tiny.other)
    assert not report.compatible
    assert {"shape_mismatch", "architecture_mismatch"} <= codes(report)
    shape = next(e for e in report.errors if e["code"] == "shape_mismatch")
    assert shape["expected"] != shape["found"]


def test_tokenizer_mismatch(tiny, copy_dir):
    base = copy_dir(tiny.base)
    train_bpe_tokenizer(["completely different text about rivers and mountains"] * 30, base, 320, 64)
    assert codes(check(tiny.patch, base)) == {"tokenizer_mismatch"}


def test_vocab_mismatch(tiny, copy_dir):
    base = copy_dir(tiny.base)
    edit_json(base / "config.json", vocab_size=999)
    assert "vocab_mismatch" in codes(check(tiny.patch, base))


def test_weights_digest_mismatch(tiny, copy_dir):
    patch = copy_dir(tiny.patch)
    weights = load_file(str(patch / ADAPTER_WEIGHTS))
    key = next(iter(weights))
    weights[key] = weights[key] + 1.0  # same shapes, different numbers: tampering or corruption
    save_file(weights, str(patch / ADAPTER_WEIGHTS))
    report = check(patch, tiny.base)
    assert codes(report) == {"digest_mismatch"}


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"use_dora": True}, "use_dora"),
        ({"peft_type": "IA3"}, "IA3"),
        ({"peft_type": "PREFIX_TUNING"}, "PREFIX_TUNING"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ],
)
def test_unsupported_adapter_kinds(tiny, copy_dir, changes, needle):
    patch = copy_dir(tiny.patch)
    edit_json(patch / ADAPTER_CONFIG, **changes)
    report = check(patch, tiny.base)
    assert codes(report) == {"unsupported_adapter"}
    assert needle in report.errors[0]["message"]


def test_pickled_adapter_is_refused(tiny, copy_dir):
    patch = copy_dir(tiny.peft_only)
    weights = load_file(str(patch / ADAPTER_WEIGHTS))
    (patch / ADAPTER_WEIGHTS).unlink()
    torch.save(weights, patch / "adapter_model.bin")
    assert codes(check(patch, tiny.base)) == {"unsafe_checkpoint"}


def test_bad_input_is_reported_not_raised(tiny, tmp_path, copy_dir):
    assert codes(check(tmp_path / "nope", tiny.base)) == {"patch_unreadable"}
    assert codes(check(tiny.patch, tmp_path / "nope")) == {"base_unreadable"}
    broken = copy_dir(tiny.patch)
    (broken / MANIFEST).write_text("{not json")
    assert codes(check(broken, tiny.base)) == {"patch_unreadable"}
    garbage = copy_dir(tiny.patch, "garbage")
    (garbage / ADAPTER_WEIGHTS).write_bytes(b"\x00" * 3)
    assert codes(check(garbage, tiny.base)) <= {"patch_unreadable", "digest_mismatch"}
    report = check(tiny.patch, tiny.base / "config.json")
    assert codes(report) == {"base_unreadable"}
    json.dumps(report.to_dict())  # errors are plain data
