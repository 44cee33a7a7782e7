"""A train run on a real worker process (embedded SQLite queue): a new patch, trained on the target
base from the run's stored data, registered as the run's result; no evaluation, no rollout."""
from __future__ import annotations

import pytest

from registry import services
from registry.artifacts import ArtifactStore
from registry.db import session_scope
from tests.workers.conftest import stack_for
from tests.workers.harness import WorkerProcess
from tests.workers.seed import ASSISTANT, CHANNEL

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["sqlite"])
def stack(request, tmp_path_factory, demo_world):
    yield from stack_for(request, tmp_path_factory, demo_world, redis_db=13)


def test_a_train_run_registers_a_patch_on_the_target_base(stack, demo_world, tmp_path):
    data = tmp_path / "few.jsonl"
    data.write_text("".join(demo_world.train_data.read_text().splitlines(keepends=True)[:8]))
    data_ref = ArtifactStore(stack.data_dir / "artifacts").put_file(data)
    with session_scope(stack.session_factory) as s:
        run, _ = services.request_run(
            s, assistant=ASSISTANT, version="v2", kind="train", idempotency_key="train-v2",
            requested_by="alice", channel=CHANNEL,
            spec={"train_data_ref": data_ref, "rank": 4, "alpha": 8.0, "epochs": 1, "lr": 1e-3, "seed": 3},
        )
        run_id = run.id
    worker = WorkerProcess(stack, "train").ready()
    try:
        stack.producer().enqueue("portllm.train_patch", run_id)
        run = stack.wait_for(run_id, "succeeded", "failed")
    finally:
        worker.stop()
    assert run.status == "succeeded", run.error
    assert run.patch_id is None and run.result_patch_id is not None and run.progress == 1.0
    assert run.evaluations == [] and run.rollout is None
    with stack.session_factory() as s:
        patch = services.get_patch(s, run.result_patch_id)
        assert patch.origin_base.version == "v2" and patch.train_data_ref == data_ref
        assert (patch.rank, patch.alpha, patch.parent_patch_id) == (4, 8.0, None)
        assert patch.provenance["run_id"] == run_id and patch.provenance["seed"] == 3
        assert patch.provenance["dataset_sha256"] == data_ref.removeprefix("sha256:")
        assert ArtifactStore.digest_dir(ArtifactStore(stack.data_dir / "artifacts").path(patch.artifact_ref)) \
            == patch.artifact_digest
    updates = [e for e in stack.outbox() if e["type"] == "run" and e["run_id"] == run_id]
    assert any(e["step"].startswith("training the patch") for e in updates)
    assert updates[-1]["final"] and updates[-1]["status"] == "succeeded"
