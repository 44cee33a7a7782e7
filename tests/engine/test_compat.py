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


def test_the_summary_of_a_base_of_another_shape_says_why_first_and_stays_short(tiny):
    """Issue 32: a base of another family fails every module; the refusal was hundreds of lines, the reason not first."""
    report = check(tiny.patch, tiny.other)
    summary = report.summary()
    assert summary.reason.startswith("the base's architecture is not the one the patch was trained on")
    assert "hidden_size 32 → 48" in summary.reason
    assert len(summary.lines) <= 3 and all("\n" not in line for line in summary.lines)
    shapes = next(line for line in summary.lines if "of another shape" in line)
    n = sum(e["code"] == "shape_mismatch" for e in report.errors)
    assert shapes.startswith(f"{n} modules of another shape") and shapes.endswith(f"and {n - 3} more")
    assert summary.elided == n - 3


def test_the_summary_ranks_kinds_of_problem_and_bounds_module_lists():
    from portllm_engine.compat_summary import summarise

    missing = [{"code": "missing_module", "message": f"the base has no module m{i}", "module": f"m{i}"}
               for i in range(215)]
    tokenizer = {"code": "tokenizer_mismatch", "message": "the base's tokenizer differs"}
    kind = {"code": "model_type_mismatch", "message": "…", "expected": "llama", "found": "gemma3_text"}
    summary = summarise([*missing, tokenizer, kind])
    assert summary.lines == (
        "the base's architecture is not the one the patch was trained on (patch → base): model_type llama → gemma3_text",
        "the base's tokenizer differs",
        "the base lacks 215 modules the patch adapts: m0, m1, m2 and 212 more",
    )
    assert summary.elided == 212
    assert summarise([]).lines == () and summarise([]).reason == ""
    assert summarise([tokenizer]).lines == ("the base's tokenizer differs",) and summarise([tokenizer]).elided == 0
