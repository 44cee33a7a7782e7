"""A run scores the candidate with the patch attached to the resident base instead of merged into a
copy: the scores must be those of the merged model, within float rounding."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("version", ["v3"])  # the most drifted base of the demo world
def test_the_attached_candidate_scores_as_the_merged_one(demo_world, version):
    from portllm_engine.kpi import evaluate, load_suite
    from portllm_engine.models import load_base
    from portllm_engine.transplant import PatchServer, merge_into

    server = PatchServer(demo_world.bases[version], device="cpu")
    server.attach("candidate", demo_world.patch)
    merged, tokenizer = load_base(demo_world.bases[version], device="cpu")
    merge_into(merged, demo_world.patch)
    for suite in (demo_world.suite, demo_world.suite_mc):
        items = load_suite(suite)
        with server.use("candidate") as model:
            attached = evaluate(model, server.tokenizer, items)
        exact = evaluate(merged, tokenizer, items)
        assert [i["correct"] for i in attached.items] == [i["correct"] for i in exact.items]
        assert attached.accuracy == exact.accuracy
        for ours, theirs in zip(attached.items, exact.items):
            for a, b in zip(ours.get("loglikelihoods", ()), theirs.get("loglikelihoods", ())):
                assert a == pytest.approx(b, abs=1e-3)  # measured: at most 6e-6 apart (fp32, demo world)
