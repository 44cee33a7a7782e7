from __future__ import annotations

import hashlib

import pytest

from registry import artifacts
from registry.artifacts import ArtifactError, ArtifactStore


def _patch_dir(root, weights=b"weights"):
    root.mkdir(parents=True)
    (root / "adapter_config.json").write_text('{"r": 8}')
    (root / "adapter_model.safetensors").write_bytes(weights)
    (root / "sub").mkdir()
    (root / "sub" / "portllm.json").write_text("{}")
    return root


def test_put_dir_is_content_addressed_and_idempotent(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    ref = store.put_dir(_patch_dir(tmp_path / "a"))
    assert ref == "sha256:" + ArtifactStore.digest_dir(tmp_path / "a")
    assert store.put_dir(_patch_dir(tmp_path / "b")) == ref  # same content, same ref
    assert (store.path(ref) / "sub" / "portllm.json").read_text() == "{}"
    assert store.put_dir(_patch_dir(tmp_path / "c", b"other")) != ref


def test_digest_covers_names_and_contents(tmp_path):
    a = _patch_dir(tmp_path / "a")
    digest = ArtifactStore.digest_dir(a)
    (a / "sub" / "portllm.json").rename(a / "sub" / "renamed.json")
    assert ArtifactStore.digest_dir(a) != digest


def test_put_file(tmp_path):
    src = tmp_path / "suite.jsonl"
    src.write_bytes(b'{"prompt": "hi", "target": "hello"}\n')
    store = ArtifactStore(tmp_path / "store")
    ref = store.put_file(src)
    assert ref == "sha256:" + hashlib.sha256(src.read_bytes()).hexdigest()
    assert store.path(ref).read_bytes() == src.read_bytes()
    assert store.exists(ref)


def test_failed_copy_leaves_nothing_behind(tmp_path, monkeypatch):
    src = _patch_dir(tmp_path / "a")
    store = ArtifactStore(tmp_path / "store")

    def copy_then_fail(source, dest):
        (dest / "adapter_config.json").parent.mkdir(parents=True)
        (dest / "adapter_config.json").write_text("partial")
        raise OSError("disk full")

    monkeypatch.setattr(artifacts.shutil, "copytree", copy_then_fail)
    with pytest.raises(OSError, match="disk full"):
        store.put_dir(src)
    digest = ArtifactStore.digest_dir(src)
    assert not store.exists("sha256:" + digest)
    assert list((store.root / "sha256" / digest[:2]).iterdir()) == []  # no temp folder left


def test_links_and_bad_refs_are_refused(tmp_path):
    src = _patch_dir(tmp_path / "a")
    (src / "link").symlink_to(src / "adapter_config.json")
    store = ArtifactStore(tmp_path / "store")
    with pytest.raises(ArtifactError, match="link"):
        store.put_dir(src)
    with pytest.raises(ArtifactError, match="not an artifact reference"):
        store.path("../../etc/passwd")
    with pytest.raises(ArtifactError, match="not in the store"):
        store.path("sha256:" + "0" * 64)
