"""Standard tasks from small files made here, checked against lm-evaluation-harness's prompts."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from portllm_engine.cli import suite_app
from portllm_engine.errors import SuiteError
from portllm_engine.kpi import load_suite
from portllm_engine.suites import import_suite


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# task, one dataset row, the context lm-eval builds (+ its " " delimiter), its choices, the gold index
MULTIPLE_CHOICE = [
    ("boolq", {"passage": "Ice floats.", "question": "does ice float", "label": 1, "idx": 7},
     "Ice floats.\nQuestion: does ice float?\nAnswer: ", ["no", "yes"], 1),
    ("boolq", {"passage": "Ice floats.", "question": "does ice float", "answer": False, "idx": 8},
     "Ice floats.\nQuestion: does ice float?\nAnswer: ", ["no", "yes"], 0),
    ("sst2", {"sentence": "a gorgeous film", "label": 1, "idx": 0},
     "a gorgeous film\nQuestion: Is this sentence positive or negative?\nAnswer: ", ["negative", "positive"], 1),
    ("rte", {"sentence1": "A cat sat.", "sentence2": "An animal sat.", "label": 0, "idx": 3},
     "A cat sat.\nQuestion: An animal sat. True or False?\nAnswer: ", ["True", "False"], 0),
    ("rte", {"premise": "A cat sat.", "hypothesis": "A dog sat.", "label": 1, "idx": 4},
     "A cat sat.\nQuestion: A dog sat. True or False?\nAnswer: ", ["True", "False"], 1),
    ("wnli", {"sentence1": "Tom thanked Ann.", "sentence2": "Ann was thanked.", "label": 1, "idx": 0},
     "Tom thanked Ann.\nQuestion: Ann was thanked. True or False?\nAnswer: ", ["False", "True"], 1),
    ("mrpc", {"sentence1": "He left.", "sentence2": "He went away.", "label": 1, "idx": 0},
     "Sentence 1: He left.\nSentence 2: He went away.\nQuestion: Do both sentences mean the same thing?\nAnswer: ",
     ["no", "yes"], 1),
]


@pytest.mark.parametrize("task,row,context,choices,gold", MULTIPLE_CHOICE)
def test_multiple_choice_tasks_use_lm_evals_prompts(tmp_path, task, row, context, choices, gold):
    (item,) = import_suite(task, jsonl(tmp_path / "validation.jsonl", [row]))
    assert item == {"id": row["idx"], "kind": "multiple_choice", "format": "raw", "context": context, "choices": choices,
                    "gold": gold}


def test_winogrande_scores_the_rest_of_the_sentence_after_each_option(tmp_path):
    row = {"sentence": "Sarah was a much better surgeon than Maria so _ always got the harder cases.",
           "option1": "Sarah", "option2": "Maria", "answer": "1"}
    (item,) = import_suite("winogrande", jsonl(tmp_path / "dev.jsonl", [row]))
    assert item["contexts"] == ["Sarah was a much better surgeon than Maria so Sarah", "Sarah was a much better surgeon than Maria so Maria"]
    assert item["continuation"] == " always got the harder cases."
    assert item["gold"] == 0 and item["id"] == 0 and item["format"] == "raw"


def test_gsm8k_becomes_a_number_matched_generate_item(tmp_path):
    row = {"question": "Tom has 3 apples and buys 1,200 more. How many?", "answer": "3 + 1200 = <<3+1200=1203>>1203\n#### 1,203"}
    (item,) = import_suite("gsm8k", jsonl(tmp_path / "test.jsonl", [row]))
    assert item["prompt"] == "Question: Tom has 3 apples and buys 1,200 more. How many?\nAnswer:"
    assert (item["target"], item["match"], item["format"]) == ("1,203", "number", "raw")
    assert "Question:" in item["stop"]


def test_parquet_as_datasets_exports_it(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "validation.parquet"
    pq.write_table(pa.table({"sentence": ["bad", "good"], "label": [0, 1], "idx": [0, 1]}), path)
    items = import_suite("sst2", path)
    assert [item["gold"] for item in items] == [0, 1]


def test_parquet_without_pyarrow_says_how_to_install(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name.startswith("pyarrow"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    with pytest.raises(SuiteError, match="pip install pyarrow"):
        import_suite("sst2", tmp_path / "x.parquet")


@pytest.mark.parametrize(
    ("task", "row", "message"),
    [
        ("boolq", {"passage": "p", "label": 1}, "boolq needs column\\(s\\) question; this row has label, passage"),
        ("rte", {"sentence1": "a", "label": 0}, "rte needs column\\(s\\) sentence2"),
        ("sst2", {"sentence": "s", "label": -1}, "use validation"),
        ("winogrande", {"sentence": "a _ b", "option1": "x", "option2": "y", "answer": ""}, "not 1 or 2"),
        ("gsm8k", {"question": "q", "answer": "no marker"}, "#### <number>"),
    ],
)
def test_bad_rows_name_the_line_and_what_is_missing(tmp_path, task, row, message):
    path = jsonl(tmp_path / "d.jsonl", [row])
    with pytest.raises(SuiteError, match=message) as caught:
        import_suite(task, path)
    assert caught.value.line == 1


def test_unknown_task_lists_the_known_ones(tmp_path):
    with pytest.raises(SuiteError, match="boolq, sst2, rte, wnli, mrpc, winogrande, gsm8k"):
        import_suite("hellaswag", jsonl(tmp_path / "d.jsonl", [{}]))


def test_cli_writes_a_suite_that_loads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = [{"passage": f"p{i}\u2028x", "question": "q", "label": i % 2, "idx": i} for i in range(3)]
    result = CliRunner().invoke(suite_app, ["import", "boolq", str(jsonl(tmp_path / "validation.jsonl", rows))])
    assert result.exit_code == 0, result.output
    assert "boolq-validation.jsonl (3 items)" in result.stdout
    items = load_suite(tmp_path / "boolq-validation.jsonl")
    assert [item["gold"] for item in items] == [0, 1, 0] and items[0]["context"].startswith("p0\u2028x")
    bad = CliRunner().invoke(suite_app, ["import", "boolq", str(tmp_path / "missing.jsonl")])
    assert bad.exit_code == 1 and "not found" in bad.stderr
