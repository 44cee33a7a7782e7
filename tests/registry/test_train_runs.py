"""Train runs: no source patch, a spec instead; the patch they produce carries them in the lineage."""
from __future__ import annotations

import pytest

from portllm_core.views import lineage_view, status_view
from registry import services as sv
from registry.db import session_scope
from registry.errors import RegistryError
from tests.registry.helpers import ASSISTANT, register_patch, seed

SPEC = {"train_data_ref": "sha256:" + "3" * 64, "rank": 4, "alpha": 8.0, "epochs": 1, "lr": 1e-3, "seed": 7}


@pytest.fixture
def factory(session_factory):
    with session_scope(session_factory) as s:
        seed(s)
    return session_factory


def _train(s, key: str = "train-1", **overrides):
    fields = dict(assistant=ASSISTANT, version="v2", kind="train", idempotency_key=key,
                  requested_by="dave", channel="cli", spec=SPEC)
    return sv.request_run(s, **(fields | overrides))


def test_a_train_run_needs_no_patch_and_keeps_its_spec(factory):
    with session_scope(factory) as s:
        run, created = _train(s)
        assert created and run.kind == "train" and run.status == "queued"
        assert run.patch_id is None and run.patch is None and run.spec == SPEC
        assert sv.audit_events(s, action="run.requested")[-1].details["patch_id"] is None
        assert _train(s)[0].id == run.id  # idempotent on its key
    with session_scope(factory) as s:
        view = status_view(s, ASSISTANT).to_json()
        assert [(r["run_id"], r["kind"]) for r in view["runs"]] == [(run.id, "train")]


def test_a_train_run_needs_training_data_and_no_patch(factory):
    with session_scope(factory) as s:
        with pytest.raises(RegistryError, match="train_data_ref"):
            _train(s, spec=None)
        with pytest.raises(RegistryError, match="not from a patch"):
            _train(s, patch_id=1)


def test_open_rollout_refuses_train_runs(factory):
    with session_scope(factory) as s:
        run, _ = _train(s)
        sv.claim_run(s, run.id, "worker-1")
        with pytest.raises(RegistryError, match="is a train run"):
            sv.open_rollout(s, run.id, verdict="pass")


def test_lineage_lists_a_train_run_under_the_patch_it_produced(factory):
    with session_scope(factory) as s:
        run, _ = _train(s)
        sv.claim_run(s, run.id, "worker-1")
        trained = register_patch(s, origin_base="v2")
        sv.finish_run(s, run.id, status="succeeded", result_patch_id=trained.id)
    with session_scope(factory) as s:
        tree = lineage_view(s, sv.get_assistant(s, ASSISTANT)).to_json()
        by_patch = {p["id"]: p["runs"] for p in tree["patches"]}
        [listed] = by_patch[trained.id]
        assert listed["id"] == run.id and listed["kind"] == "train" and listed["status"] == "succeeded"
        assert listed["result_patch_id"] == trained.id and listed["spec"] == SPEC
        assert all(r["id"] != run.id for pid, runs in by_patch.items() if pid != trained.id for r in runs)
        assert status_view(s, ASSISTANT).to_json()["runs"] == []
