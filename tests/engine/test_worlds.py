"""The worlds' shared builder and the real world's data, without building a model."""
from __future__ import annotations

import json
import random

import pytest

from portllm_engine.demo import PRODUCTS, TEMPLATES, TRAIN_TEMPLATES
from portllm_engine.kpi import load_suite
from portllm_engine.worlds import smollm2
from portllm_engine.worlds.build import build_cached, load_cached, write_jsonl


def fake_build(out, report):
    (out / "bases" / "v1").mkdir(parents=True)
    write_jsonl(out / "suite.jsonl", [])
    report(1.0, "done")
    return {"bases": {"v1": "bases/v1"}, "patch": "patch", "train_data": "train.jsonl", "suite": "suite.jsonl",
            "suite_mc": None, "questions": ["Q?"], "system_prompt": "Be brief."}


def test_a_world_is_built_once_per_recipe_hash_and_moved_into_place(tmp_path):
    root = tmp_path / "world"
    calls = []

    def build(out, report):
        calls.append(out)
        return fake_build(out, report)

    world = build_cached(root, "hash-a", build, threads=1)
    assert world.root == root and world.bases == {"v1": root / "bases" / "v1"} and world.suite_mc is None
    assert world.system_prompt == "Be brief." and world.questions == ["Q?"]
    assert calls[0].parent == tmp_path and not calls[0].exists()  # staged beside, then renamed
    assert build_cached(root, "hash-a", build, threads=1) == world and len(calls) == 1
    assert load_cached(root, "hash-b") is None
    build_cached(root, "hash-b", build, threads=1)
    assert len(calls) == 2 and json.loads((root / "world.json").read_text())["recipe_hash"] == "hash-b"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".world.lock", "world"]


def test_a_failed_build_leaves_no_staging_folder(tmp_path):
    def broken(out, report):
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        build_cached(tmp_path / "world", "h", broken, threads=1)
    assert [p.name for p in tmp_path.iterdir()] == [".world.lock"]


def test_the_real_worlds_data_asks_held_out_phrasings_of_the_trained_facts(tmp_path):
    facts = smollm2._facts(PRODUCTS[:4], random.Random(0))
    train, suite = smollm2.support_data(facts)
    asked = {row["messages"][0]["content"] for row in train}
    assert len(train) == 4 * 5 * TRAIN_TEMPLATES + len(smollm2.PATCH_GENERAL)
    assert all([turn["role"] for turn in row["messages"]] == ["user", "assistant"] for row in train)
    assert "The Altavia Corvo Hub costs " + facts["Altavia Corvo Hub"]["price"] + "." in {
        row["messages"][1]["content"] for row in train}
    assert not asked & {item["prompt"] for item in suite}
    assert all(item["prompt"] in {t.format(p=p) for p in facts for t in TEMPLATES[item["id"].split("-")[0]]}
               for item in suite)
    write_jsonl(tmp_path / "suite.jsonl", suite + smollm2.general_items())
    write_jsonl(tmp_path / "mc.jsonl", smollm2.mc_items(facts, random.Random(1)))
    items = load_suite(tmp_path / "suite.jsonl")
    assert {item["group"] for item in items} == {"support", "general"} and len(items) == 60
    assert len(load_suite(tmp_path / "mc.jsonl")) == 20


def test_no_fact_is_contained_in_another_of_its_kind():
    # The suite matches by containment: "8 hours" would pass for "48 hours".
    for values in smollm2._options().values():
        assert not [(a, b) for a in values for b in values if a != b and a in b]


def test_the_real_world_lives_outside_the_clone_keyed_by_its_recipe(monkeypatch, tmp_path):
    monkeypatch.setenv("PORTLLM_WORLDS_DIR", str(tmp_path))
    assert smollm2.default_root() == tmp_path / f"smollm2-{smollm2.recipe_hash()[:12]}"
    assert smollm2.load_world() is None
