"""Standard benchmark tasks from local files, as KPI suites scored the way lm-evaluation-harness
0.4.x scores them.

The prompts, answer choices and label order are those of lm-eval's task definitions (glue/sst2,
glue/rte or super_glue/rte, glue/wnli, glue/mrpc, super_glue/boolq, winogrande, gsm8k). lm-eval
puts its target delimiter, one space, between the prompt and each choice; here the space ends
the context, which the scoring moves to the front of the choice: the same tokens, and acc_norm
divides by the choice's own length as lm-eval does. GSM8K is scored zero-shot (lm-eval's default
is 5-shot from the train split) by the last number in the answer.

Items say `"format": "raw"`: they are scored on their text as written, whatever the assistant's
prompt format, so their numbers compare with lm-eval's published (template-less) ones.

Inputs are the rows of one split as Hugging Face `datasets` exports them: JSON Lines
(`to_json`) or Parquet (`to_parquet`, read with pyarrow).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from portllm_engine.errors import SuiteError
from portllm_engine.prompt import RAW

Row = dict[str, Any]

DELIMITER = " "  # lm-eval's default target_delimiter
GSM8K_STOPS = ["Question:", "</s>", "<|im_end|>"]
GSM8K_MAX_NEW_TOKENS = 256  # lm-eval's default max_gen_toks


def _label(row: Row, key: str, count: int) -> int:
    label = row[key]
    if isinstance(label, str) and label.strip().lstrip("-").isdigit():
        label = int(label)
    if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < count:
        raise SuiteError(f"label {label!r} is not one of 0..{count - 1} (test splits have no labels: use validation)")
    return label


def _choice_item(text: str, choices: list[str], gold: int) -> Row:
    return {"kind": "multiple_choice", "format": RAW, "context": text + DELIMITER, "choices": choices, "gold": gold}


def _boolq(row: Row) -> Row:
    if "label" not in row and isinstance(row["answer"], bool):  # google/boolq's export: answer true/false
        row = {**row, "label": int(row["answer"])}
    return _choice_item(f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:", ["no", "yes"], _label(row, "label", 2))


def _sst2(row: Row) -> Row:
    text = f"{row['sentence']}\nQuestion: Is this sentence positive or negative?\nAnswer:"
    return _choice_item(text, ["negative", "positive"], _label(row, "label", 2))


def _rte(row: Row) -> Row:
    first, second = ("premise", "hypothesis") if "premise" in row else ("sentence1", "sentence2")
    text = f"{row[first]}\nQuestion: {row[second]} True or False?\nAnswer:"
    return _choice_item(text, ["True", "False"], _label(row, "label", 2))  # 0 = entailment


def _wnli(row: Row) -> Row:
    text = f"{row['sentence1']}\nQuestion: {row['sentence2']} True or False?\nAnswer:"
    return _choice_item(text, ["False", "True"], _label(row, "label", 2))  # 1 = entailment


def _mrpc(row: Row) -> Row:
    text = (
        f"Sentence 1: {row['sentence1']}\nSentence 2: {row['sentence2']}\n"
        "Question: Do both sentences mean the same thing?\nAnswer:"
    )
    return _choice_item(text, ["no", "yes"], _label(row, "label", 2))


def _winogrande(row: Row) -> Row:
    """lm-eval's partial scoring: each option fills the blank, the rest of the sentence is scored."""
    sentence = row["sentence"]
    if "_" not in sentence:
        raise SuiteError(f"winogrande sentence has no blank '_': {sentence[:60]!r}")
    blank = sentence.index("_")
    return {
        "kind": "multiple_choice",
        "format": RAW,
        "contexts": [sentence[:blank] + row["option1"], sentence[:blank] + row["option2"]],
        "continuation": DELIMITER + sentence[blank + 1 :].strip(),
        "gold": _winogrande_gold(row["answer"]),
    }


def _winogrande_gold(answer: Any) -> int:
    if str(answer).strip() not in ("1", "2"):
        raise SuiteError(f"winogrande answer {answer!r} is not 1 or 2 (test splits have no answers: use validation)")
    return int(str(answer).strip()) - 1


def _gsm8k(row: Row) -> Row:
    answer = str(row["answer"])
    if "####" not in answer:
        raise SuiteError(f"gsm8k answer has no '#### <number>' line: {answer[-60:]!r}")
    return {
        "kind": "generate",
        "format": RAW,
        "prompt": f"Question: {row['question']}\nAnswer:",
        "target": answer.split("####")[-1].strip(),
        "match": "number",
        "stop": GSM8K_STOPS,
        "max_new_tokens": GSM8K_MAX_NEW_TOKENS,
    }


TASKS: dict[str, tuple[Callable[[Row], Row], tuple[tuple[str, ...], ...]]] = {
    # task: (row -> item, the columns it needs; alternatives where datasets name them differently)
    "boolq": (_boolq, (("passage", "question", "label"), ("passage", "question", "answer"))),
    "sst2": (_sst2, (("sentence", "label"),)),
    "rte": (_rte, (("sentence1", "sentence2", "label"), ("premise", "hypothesis", "label"))),
    "wnli": (_wnli, (("sentence1", "sentence2", "label"),)),
    "mrpc": (_mrpc, (("sentence1", "sentence2", "label"),)),
    "winogrande": (_winogrande, (("sentence", "option1", "option2", "answer"),)),
    "gsm8k": (_gsm8k, (("question", "answer"),)),
}


def _read_rows(path: Path) -> list[Row]:
    if not path.is_file():
        raise SuiteError(f"{path} not found")
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise SuiteError("reading Parquet needs pyarrow: pip install pyarrow (or export the split as JSON Lines)") from None
        return pq.read_table(path).to_pylist()
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError as exc:
                raise SuiteError(f"not valid JSON ({exc.msg}); expected JSON Lines or a .parquet file", line=number, path=str(path)) from None
    return rows


def import_suite(task: str, file: str | Path) -> list[Row]:
    """KPI suite items for `task` from a local copy of one split of its dataset."""
    key = task.lower().replace("-", "")
    if key not in TASKS:
        raise SuiteError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    convert, column_sets = TASKS[key]
    path = Path(file)
    rows = _read_rows(path)
    if not rows:
        raise SuiteError(f"{path} has no rows")
    items = []
    for number, row in enumerate(rows, start=1):
        if not any(all(column in row for column in columns) for columns in column_sets):
            missing = [c for c in min(column_sets, key=lambda cs: sum(c not in row for c in cs)) if c not in row]
            raise SuiteError(f"{key} needs column(s) {', '.join(missing)}; this row has {', '.join(sorted(row)) or 'none'}", line=number, path=str(path))
        try:
            item = convert(row)
        except SuiteError as exc:
            raise SuiteError(exc.message, line=number, path=str(path)) from None
        items.append({"id": row.get("idx", row.get("id", number - 1)), **item})
    return items


def write_suite(items: list[Row], out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items), encoding="utf-8")
    return out
