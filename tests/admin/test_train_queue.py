"""`portllm patch train` without --local: a train run on the gpu queue, followed until it ends."""
from __future__ import annotations

import re


def test_patch_train_no_wait_returns_once_queued(registered, tiny_world, monkeypatch):
    monkeypatch.setenv("PORTLLM_BROKER_URL", f"sqla+sqlite:///{registered.data_dir / 'queue.db'}")
    result = registered.ok("patch", "train", "support", "--base", "v2", "--data", tiny_world.train_data, "--no-wait")
    assert re.fullmatch(r"Run #1 queued: training support on tiny v2\n", result.stdout)
    [run] = registered.json("run", "list")
    assert (run["id"], run["kind"], run["status"], run["patch_id"], run["origin_base"]) == (1, "train", "queued", None, None)
    shown = registered.json("run", "show", 1)
    assert shown["spec"]["train_data_ref"].startswith("sha256:") and shown["spec"]["seed"] == 0
    assert registered.json("patch", "list") == []


def test_patch_train_runs_on_a_worker_and_registers_the_patch(registered, tiny_world, worker):
    result = registered.ok("patch", "train", "support", "--base", "v2", "--data", tiny_world.train_data,
                           "--rank", "2", "--alpha", "4", "--epochs", "1", "--lr", "0.01", "--seed", "7")
    assert result.stdout.strip() == "Patch #1 trained on tiny v2 (run #1)"
    [patch] = registered.json("patch", "list")
    assert patch["origin_base"]["version"] == "v2" and (patch["rank"], patch["alpha"]) == (2, 4.0)
    assert patch["train_data_ref"] == f"sha256:{patch['provenance']['dataset_sha256']}"
    assert patch["provenance"]["run_id"] == 1 and patch["provenance"]["seed"] == 7
    [listed] = registered.json("lineage", "support")["patches"][0]["runs"]
    assert (listed["id"], listed["kind"], listed["result_patch_id"]) == (1, "train", 1)
