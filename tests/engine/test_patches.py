from __future__ import annotations

import json

import pytest

from portllm_engine.errors import EngineError, PatchError
from portllm_engine.models import architecture_signature, fingerprint, tokenizer_fingerprint
from portllm_engine.prompt import PromptFormat, user_turn
from portllm_engine.patches import (
    ADAPTER_WEIGHTS,
    MANIFEST,
    PatchManifest,
    encode_example,
    read_examples,
    export_patch,
    read_manifest,
    sha256_file,
    train_patch,
    verify_weights,
)


def test_imported_manifest_describes_origin(tiny):
    manifest = read_manifest(tiny.patch)
    assert manifest.format_version == 1
    assert manifest.origin_fingerprint == fingerprint(tiny.base)
    assert manifest.origin_signature == architecture_signature(tiny.base)
    assert manifest.tokenizer_fingerprint == tokenizer_fingerprint(tiny.base)
    assert (manifest.rank, manifest.alpha, manifest.use_rslora) == (4, 8.0, False)
    assert len(manifest.target_modules) == 14
    assert manifest.weights_sha256 == sha256_file(tiny.patch / ADAPTER_WEIGHTS)
    assert PatchManifest.from_dict(json.loads(json.dumps(manifest.to_dict()))) == manifest
    assert read_manifest(tiny.peft_only) is None


def test_completion_only_loss_mask(tiny):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny.tokenizer)
    ids, labels = encode_example(tokenizer, (user_turn("How much?"), "$249", None), PromptFormat(), 64)
    prompt_len = len(tokenizer("Question: How much?\nAnswer:")["input_ids"])  # the plain template: no chat template
    assert labels[:prompt_len] == [-100] * prompt_len
    assert labels[prompt_len:] == ids[prompt_len:] and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids[prompt_len:-1]) == " $249"


def test_training_data_in_trls_two_formats(tiny, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny.tokenizer)
    rows = [
        {"prompt": "How much?", "completion": "$249"},
        {"messages": [{"role": "user", "content": "How much?"}, {"role": "assistant", "content": "$249"}]},
        {"prompt": [{"role": "user", "content": "How much?"}], "completion": [{"role": "assistant", "content": "$249"}]},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "How much?"},
                      {"role": "assistant", "content": "$249"}]},
    ]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    encoded = [encode_example(tokenizer, example, PromptFormat(system_prompt="Say it."), 64)
               for example in read_examples(data)]
    assert encoded[0] == encoded[1] == encoded[2]
    assert tokenizer.decode(encoded[0][0]).count("Say it.") == 1  # the assistant's system prompt where the data has none
    assert "Be brief." in tokenizer.decode(encoded[3][0]) and "Say it." not in tokenizer.decode(encoded[3][0])
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "no reply"}]}) + "\n")
    with pytest.raises(EngineError, match=r"line 1: needs .*messages.*\(TRL's formats\)"):
        read_examples(data)


def test_train_patch_writes_a_peft_folder_with_manifest(tiny, tmp_path):
    data = tmp_path / "train.jsonl"
    rows = [{"prompt": "Question: How much does the Lumo Dock cost?\nAnswer:", "completion": " $249"}] * 4
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    seen = []
    manifest = train_patch(
        tiny.base, data, tmp_path / "patch", rank=2, alpha=4, epochs=2, lr=1e-2, seed=3, device="cpu",
        batch_size=2, progress=lambda f, s: seen.append(f),
    )
    assert seen[-1] == pytest.approx(1.0) and len(seen) == 4
    assert manifest.rank == 2 and manifest.provenance["steps"] == 4
    assert manifest.provenance["dataset_sha256"] == sha256_file(data)
    assert read_manifest(tmp_path / "patch") == manifest
    again = train_patch(tiny.base, data, tmp_path / "again", rank=2, alpha=4, epochs=2, lr=1e-2, seed=3, device="cpu", batch_size=2)
    assert again.weights_sha256 == manifest.weights_sha256  # seeded: same data, same patch
    retuned = train_patch(tiny.base, data, tmp_path / "retuned", epochs=1, init_from=tmp_path / "patch", device="cpu")
    assert retuned.provenance["kind"] == "retune" and retuned.rank == 2


def test_training_and_attaching_print_no_checkpointing_deprecation(tiny, tmp_path):
    """PEFT probes transformers' deprecated `is_gradient_checkpointing`; its FutureWarning used to
    print while the demo world was built."""
    import warnings

    from portllm_engine.transplant import PatchServer

    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"prompt": "Question: How much?\nAnswer:", "completion": " $249"}) + "\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_patch(tiny.base, data, tmp_path / "patch", rank=2, epochs=1, device="cpu")
        train_patch(tiny.base, data, tmp_path / "retuned", epochs=1, init_from=tmp_path / "patch", device="cpu")
        server = PatchServer(tiny.base, device="cpu")
        server.attach("a", tiny.patch)
        server.attach("b", tmp_path / "patch")
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]


def test_bad_training_data_names_the_line(tiny, tmp_path):
    from portllm_engine.errors import EngineError

    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": 3}\n')
    with pytest.raises(EngineError, match="line 2"):
        train_patch(tiny.base, data, tmp_path / "patch", device="cpu")


def test_export_verifies_and_copies(tiny, tmp_path, copy_dir):
    out = export_patch(tiny.patch, tmp_path / "exported")
    assert {p.name for p in out.iterdir()} == {"adapter_config.json", ADAPTER_WEIGHTS, MANIFEST}
    tampered = copy_dir(tiny.patch, "tampered")
    manifest = json.loads((tampered / MANIFEST).read_text())
    manifest["weights_sha256"] = "0" * 64
    (tampered / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(PatchError, match="do not match"):
        verify_weights(tampered)
    with pytest.raises(PatchError):
        export_patch(tampered, tmp_path / "nope")
