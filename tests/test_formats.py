"""Readers on the real files in ../shared/data and on hand-made bad records."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from conftest import SHARED_DATA, needs_data

from mixtune.data.formats import FORMATS, DataError, detect_format, read_examples

DATA = SHARED_DATA


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


@needs_data
def test_gsm8k_train_real_file():
    res = read_examples(DATA / "gsm8k/train.jsonl", source="gsm8k")
    assert res.format == "gsm8k" and len(res.examples) == 7473 and res.skipped == []
    ex = res.examples[0]
    assert ex["id"] == "gsm8k/0" and ex["ability"] == "math" and ex["task_type"] == 0 and ex["answer"] == "72"
    assert [m["role"] for m in ex["messages"]] == ["user", "assistant"]
    assert ex["messages"][1]["content"].endswith("#### 72")
    assert len({e["id"] for e in res.examples}) == 7473


@needs_data
def test_code_alpaca_real_file_has_two_empty_outputs():
    path = DATA / "code_alpaca/code_alpaca_2k.json"
    with pytest.raises(DataError) as err:
        read_examples(path, source="code_alpaca", ability="code")
    assert err.value.problems == [f"{path}:238: output: empty", f"{path}:1860: output: empty"]
    assert "numbers are 1-based items" in str(err.value)
    res = read_examples(path, source="code_alpaca", ability="code", skip_invalid=True)
    assert len(res.examples) == 2015 and len(res.skipped) == 2 and res.position == "1-based items"
    ex = res.examples[0]
    assert ex["ability"] == "code" and ex["id"] == "code_alpaca/0"
    # instruction + blank line + input
    assert ex["messages"][0]["content"] == ("What are the distinct values from the given list?\n\n"
                                            "dataList = [3, 9, 3, 5, 7, 9, 5]")


@needs_data
def test_sharegpt_real_file():
    res = read_examples(DATA / "sharegpt/dummy_conversation_fastchat.json", source="sharegpt")
    assert res.format == "sharegpt" and len(res.examples) == 500
    ex = res.examples[0]
    assert ex["id"] == "identity_0" and ex["ability"] == "general"
    assert [m["role"] for m in ex["messages"]] == ["user", "assistant", "user", "assistant"]
    assert ex["messages"][3]["content"] == "You too!"


@needs_data
def test_humaneval_real_file():
    res = read_examples(DATA / "humaneval/HumanEval.jsonl.gz", source="humaneval")
    assert res.format == "humaneval" and len(res.examples) == 164
    ex = res.examples[0]
    assert ex["id"] == "HumanEval/0" and ex["ability"] == "code" and ex["entry_point"] == "has_close_elements"
    assert ex["messages"][0]["content"].startswith("from typing import List")
    assert ex["messages"][1]["content"].startswith("    for idx, elem in enumerate(numbers):")
    assert "def check(candidate)" in ex["tests"]


def test_bad_records_report_file_line_field_problem(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [
        '{"instruction": "Add 2 and 3.", "input": "", "output": "5"}',
        '{"instruction": "broken", ',
        "",
        '{"instruction": "No output."}',
        '{"instruction": "  ", "output": "x"}',
        '{"instruction": 7, "output": "x"}',
        '["not", "an", "object"]',
        '{"instruction": "Fine.", "output": "ok", "id": 3}',
        '{"instruction": "Again.", "output": "ok", "id": 3}',
    ])
    with pytest.raises(DataError) as err:
        read_examples(path)
    assert err.value.problems == [
        f"{path}:2: <json>: invalid JSON: Expecting property name enclosed in double quotes (column 27)",
        f"{path}:4: output: missing",
        f"{path}:5: instruction: empty",
        f"{path}:6: instruction: expected a string, got int",
        f"{path}:7: <record>: expected an object, got list",
        f"{path}:9: id: duplicate id '3' (first at line 8)",
    ]
    res = read_examples(path, skip_invalid=True)
    assert [e["id"] for e in res.examples] == ["bad/0", "3"]
    assert res.skipped == err.value.problems


def test_conversation_roles_are_validated(tmp_path):
    turns = {
        "ok": [["system", "s"], ["human", "q"], ["gpt", "a"]],
        "two_users": [["human", "q"], ["human", "q2"], ["gpt", "a"]],
        "ends_user": [["human", "q"], ["gpt", "a"], ["human", "q2"]],
        "starts_gpt": [["gpt", "a"], ["human", "q"]],
        "bing": [["human", "q"], ["bing", "a"]],
        "empty_value": [["human", "q"], ["gpt", ""]],
    }
    records = [{"id": k, "conversations": [{"from": f, "value": v} for f, v in t]} for k, t in turns.items()]
    path = tmp_path / "chats.json"
    path.write_text(json.dumps(records, indent=1))
    res = read_examples(path, skip_invalid=True)
    assert [e["id"] for e in res.examples] == ["ok"]
    assert res.examples[0]["messages"][0] == {"role": "system", "content": "s"}
    assert res.skipped == [
        f"{path}:2: conversations[1].role: roles out of order: expected assistant, got user",
        f"{path}:3: conversations[2].role: conversation must end with an assistant turn",
        f"{path}:4: conversations[0].role: roles out of order: expected user, got assistant",
        (f"{path}:5: conversations[1].from: unknown role 'bing' (expected one of "
         "['assistant', 'gpt', 'human', 'system', 'user'])"),
        f"{path}:6: conversations[1].value: empty",
    ]


def test_error_listing_is_capped_at_twenty(tmp_path):
    path = write_jsonl(tmp_path / "many.jsonl", ['{"question": "q", "answer": "no final line"}'] * 25)
    with pytest.raises(DataError) as err:
        read_examples(path)
    assert len(err.value.problems) == 25
    lines = str(err.value).splitlines()
    assert len(lines) == 1 + 20 + 1 and lines[-1] == "... and 5 more"
    assert lines[1] == f"{path}:1: answer: no '#### <answer>' line"


def test_messages_records_keep_their_fields_and_overrides_win(tmp_path):
    rec = {"id": "k1", "source": "world", "ability": "knowledge", "answer": ["Paris"], "instruction_ids": ["x"],
           "kwargs": [{}], "messages": [{"role": "user", "content": "Where?"}, {"role": "assistant", "content": "Paris"}]}
    path = write_jsonl(tmp_path / "mine.jsonl", [json.dumps(rec)])
    ex = read_examples(path, source="knowledge_qa").examples[0]
    assert ex["id"] == "k1" and ex["source"] == "knowledge_qa" and ex["ability"] == "knowledge"
    assert ex["task_type"] == 1 and ex["answer"] == ["Paris"] and ex["instruction_ids"] == ["x"]
    forced = read_examples(path, ability="general", task_type=0).examples[0]
    assert forced["ability"] == "general" and forced["task_type"] == 0


def test_gsm8k_rft_fields_gzip_and_text(tmp_path):
    path = tmp_path / "rft.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(json.dumps({"query": "1+1?", "response": "1+1=2\n#### 2"}) + "\n")
    ex = read_examples(path, source="rft").examples[0]
    assert ex["ability"] == "math" and ex["answer"] == "2" and ex["messages"][0]["content"] == "1+1?"
    text = read_examples(write_jsonl(tmp_path / "t.jsonl", ['{"text": "a doc"}'])).examples[0]
    assert text["text"] == "a doc" and text["ability"] == "text" and "messages" not in text


def test_detection_and_unknown_format():
    assert detect_format({"instruction": "", "input": "", "output": ""}) == "alpaca"
    assert detect_format({"prompt": "", "canonical_solution": ""}) == "humaneval"
    assert detect_format({"question": "", "answer": ""}) == "gsm8k"
    with pytest.raises(ValueError, match="cannot detect"):
        detect_format({"foo": 1})
    with pytest.raises(ValueError, match="valid: \\['auto', 'alpaca'"):
        read_examples("x.jsonl", format="yaml")
    assert sorted(FORMATS) == ["alpaca", "gsm8k", "hh", "humaneval", "messages", "pairs", "ranked", "sharegpt",
                               "text", "trl_conversational", "trl_standard"]


def test_misspelled_fields_are_named_once_per_file(tmp_path):
    path = tmp_path / "typos.jsonl"
    rows = [{"instruction": f"say {i}", "inptu": "extra context", "output": str(i), "category": "x"} for i in range(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = read_examples(path, format="alpaca")
    expected = (f"{path}: field 'inptu' in 3 record(s) looks like a misspelling of 'input', which the alpaca format "
                "reads; it is ignored (rename it, or map it with `columns`)")
    assert result.warnings == [expected]
    assert [ex["messages"][0]["content"] for ex in result.examples] == ["say 0", "say 1", "say 2"]  # input ignored
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"instrcution": "say", "output": "x"}) + "\n")
    with pytest.raises(DataError) as err:
        read_examples(bad, format="alpaca")
    assert err.value.problems == [f"{bad}:1: instruction: missing (the record has 'instrcution': a misspelling?)"]
    clean = tmp_path / "clean.jsonl"
    clean.write_text(json.dumps({"instruction": "a", "output": "b", "source": "web", "lang": "en"}) + "\n")
    assert read_examples(clean).warnings == []  # other extra fields are not misspellings: no noise
