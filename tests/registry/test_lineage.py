"""Lineage over a history of three bases (v1 -> v2 -> v3) with a rollback and a re-tune."""
from __future__ import annotations

import json

from portllm_core.views import lineage_view, status_view
from registry import services as sv
from registry.db import session_scope
from tests.registry.helpers import ASSISTANT, finished_run, register_patch, seed


def _history(s):
    """v1 eval; v2 live; v3 live; rollback to v2; v3 re-tune live. Returns the ids in play."""
    seeded = seed(s)
    eval_v1 = finished_run(s, "v1", kind="eval", accuracy=0.92)
    to_v2 = finished_run(s, "v2", accuracy=0.86, drift=0.09)
    r_v2 = sv.open_rollout(s, to_v2.id, verdict="pass")
    sv.decide_rollout(s, to_v2.id, approve=True, user="alice")
    to_v3 = finished_run(s, "v3", accuracy=0.84, drift=0.28)
    r_v3 = sv.open_rollout(s, to_v3.id, verdict="inconclusive",
                           live_accuracy=sv.live_accuracy(s, ASSISTANT, "support"))
    sv.decide_rollout(s, to_v3.id, approve=True, user="bob")
    sv.rollback(s, ASSISTANT, "support", "alice", reason="customers noticed wrong prices")
    retuned = register_patch(s, origin_base="v3", parent_patch=seeded.patch_id)
    retune = finished_run(s, "v3", kind="retune", accuracy=0.95, patch_id=seeded.patch_id,
                          result_patch_id=retuned.id)
    r_retune = sv.open_rollout(s, retune.id, verdict="pass",
                               live_accuracy=sv.live_accuracy(s, ASSISTANT, "support"))
    sv.decide_rollout(s, retune.id, approve=True, user="alice")
    return seeded.patch_id, retuned.id, (eval_v1.id, to_v2.id, to_v3.id, retune.id), (r_v2.id, r_v3.id, r_retune.id)


def _times(items, key):
    return [item[key] for item in items]


def test_lineage_tree_is_complete_and_ordered(session_factory):
    with session_scope(session_factory) as s:
        patch_id, retuned_id, run_ids, (r_v2, r_v3, r_retune) = _history(s)
    with session_scope(session_factory) as s:
        tree = lineage_view(s, sv.get_assistant(s, "Support-Assistant")).to_json()
    assert json.loads(json.dumps(tree)) == tree  # JSON-able as is

    assert tree["assistant"] == ASSISTANT and tree["family"] == "demo"
    patches = tree["patches"]
    assert [p["id"] for p in patches] == [patch_id, retuned_id]
    original, retuned = patches
    assert original["origin_base"]["version"] == "v1" and original["parent_patch_id"] is None
    assert original["provenance"] == {"dataset_digest": "d" * 64, "seed": 0, "epochs": 3}
    assert retuned["origin_base"]["version"] == "v3" and retuned["parent_patch_id"] == patch_id
    assert retuned["runs"] == []

    runs = original["runs"]
    assert [r["id"] for r in runs] == list(run_ids)
    assert [(r["kind"], r["target_base"]["version"], r["status"]) for r in runs] == [
        ("eval", "v1", "succeeded"), ("transplant", "v2", "succeeded"),
        ("transplant", "v3", "succeeded"), ("retune", "v3", "succeeded"),
    ]
    assert [r["drift_overall"] for r in runs] == [0.1, 0.09, 0.28, 0.1]
    assert runs[3]["result_patch_id"] == retuned_id
    for run in runs:
        assert [e["subject"] for e in run["evaluations"]] == ["target_base", "candidate"]
        assert _times(run["evaluations"], "recorded_at") == sorted(_times(run["evaluations"], "recorded_at"))
    assert _times(runs, "created_at") == sorted(_times(runs, "created_at"))
    assert runs[0]["rollouts"] == []

    (v2,), (v3,), (rt,) = (r["rollouts"] for r in runs[1:])
    assert (v2["id"], v2["state"], v2["decided_by"], v2["channel"], v2["replaced"]) == (
        r_v2, "superseded", "alice", "support", None)
    assert (v3["id"], v3["state"], v3["decided_by"]) == (r_v3, "rolled_back", "bob")
    assert v3["replaced"] == {"rollout_id": r_v2, "run_id": run_ids[1], "base": "demo/v2", "state": "superseded"}
    assert v3["verdict"] == "inconclusive" and v3["live_accuracy"] == 0.86
    assert (rt["id"], rt["state"], rt["replaced"]["rollout_id"]) == (r_retune, "live", r_v2)

    # v2's rollout went live, was superseded, came back by rollback and was superseded again
    assert [(e["action"], e["actor"]) for e in v2["events"]] == [
        ("rollout.opened", "worker-1"), ("rollout.approved", "alice"), ("rollout.superseded", "bob"),
        ("rollout.restored", "alice"), ("rollout.superseded", "alice"),
    ]
    assert v2["events"][3]["details"]["reason"] == "customers noticed wrong prices"
    assert [e["action"] for e in v3["events"]] == ["rollout.opened", "rollout.approved", "rollout.rolled_back"]
    for rollout in (v2, v3, rt):
        assert _times(rollout["events"], "at") == sorted(_times(rollout["events"], "at"))


def test_the_lineage_line_of_a_provenance_rounds_floats_as_the_cards_do():
    from portllm_core.views import _provenance_line

    line = _provenance_line({"final_loss": 0.010555537417531013, "lr": 0.0002, "seed": 0,
                             "dataset_sha256": "ab" * 32, "hyper": {"nested": 1}})
    assert line == f"final_loss 0.0106, lr 0.0002, seed 0, dataset_sha256 {'ab' * 6}"
