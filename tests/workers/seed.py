"""Registry rows for worker tests: a small fake registry, or the demo world registered for real."""
from __future__ import annotations

from pathlib import Path

from registry import services
from registry.db import session_scope

FAMILY = "demo"
ASSISTANT = "support-assistant"
CHANNEL = "#support"


def seed_fake(session_factory) -> int:
    """Bases, an assistant and a patch with made-up digests (nothing to load); returns a queued run id."""
    with session_scope(session_factory) as s:
        for version in ("v1", "v2"):
            services.register_base(s, family=FAMILY, version=version, source_ref=f"/nowhere/{version}",
                                   fingerprint=version * 32, signature={}, tokenizer_fingerprint="t" * 64,
                                   actor="test")
        services.create_assistant(s, name=ASSISTANT, family=FAMILY, suite_ref="/nowhere/suite.jsonl",
                                  suite_digest="s" * 64, approvers=["alice"], actor="test")
        services.register_patch(s, assistant=ASSISTANT, origin_base="v1", artifact_ref="sha256:" + "a" * 64,
                                artifact_digest="a" * 64, rank=8, alpha=16, target_modules=["q_proj"],
                                size_bytes=1, provenance={}, actor="test")
    return request(session_factory, "v2", key="fake-1")


def request(session_factory, version: str, *, key: str, kind: str = "transplant", patch_id: int | None = None,
            channel: str = CHANNEL, notify_ref: dict | None = None) -> int:
    with session_scope(session_factory) as s:
        run, _ = services.request_run(s, assistant=ASSISTANT, version=version, kind=kind, idempotency_key=key,
                                      requested_by="alice", channel=channel, patch_id=patch_id,
                                      notify_ref=notify_ref)
        return run.id


def seed_demo(session_factory, artifacts_root: Path, world, *, family: str = FAMILY,
              versions: tuple[str, ...] | None = None) -> dict[str, int]:
    """Register a world as an operator would: its bases (all, or `versions`), the assistant with the
    world's system prompt, the v1 patch."""
    from portllm_engine import models
    from portllm_engine.kpi import suite_digest
    from registry.artifacts import ArtifactStore

    store = ArtifactStore(artifacts_root)
    ids: dict[str, int] = {}
    with session_scope(session_factory) as s:
        for version, path in world.bases.items():
            if versions is not None and version not in versions:
                continue
            base = services.register_base(
                s, family=family, version=version, source_ref=str(path), fingerprint=models.fingerprint(path),
                signature=models.architecture_signature(path),
                tokenizer_fingerprint=models.tokenizer_fingerprint(path), actor="test",
            )
            ids[version] = base.id
        services.create_assistant(s, name=ASSISTANT, family=family, suite_ref=store.put_file(world.suite),
                                  suite_digest=suite_digest(world.suite), min_accuracy=0.5,
                                  max_regression=0.05, approvers=["alice"], system_prompt=world.system_prompt,
                                  actor="test")
        ids["patch"] = register_patch_dir(s, store, world.patch, train_data=store.put_file(world.train_data)).id
    return ids


def register_patch_dir(s, store, patch_dir: Path, *, train_data: str | None = None, origin: str = "v1"):
    from portllm_engine.patches import read_manifest

    manifest = read_manifest(patch_dir)
    ref = store.put_dir(patch_dir)
    return services.register_patch(
        s, assistant=ASSISTANT, origin_base=origin, artifact_ref=ref, artifact_digest=ref.removeprefix("sha256:"),
        rank=manifest.rank, alpha=manifest.alpha, target_modules=list(manifest.target_modules),
        size_bytes=sum(p.stat().st_size for p in patch_dir.rglob("*") if p.is_file()),
        provenance=manifest.provenance, train_data_ref=train_data, actor="test",
    )


def go_live(session_factory, version: str, *, key: str, patch_id: int, channel: str = CHANNEL) -> int:
    """What a worker and an approver record, without the transplant's minutes: a live rollout."""
    run_id = request(session_factory, version, key=key, patch_id=patch_id, channel=channel)
    with session_scope(session_factory) as s:
        services.claim_run(s, run_id, "test")
        services.open_rollout(s, run_id, verdict="pass")
        services.finish_run(s, run_id, status="succeeded", compat_report={"compatible": True, "errors": []},
                            drift_report={"overall": 0.28, "modules": {}})
        services.decide_rollout(s, run_id, approve=True, user="alice")
    return run_id
