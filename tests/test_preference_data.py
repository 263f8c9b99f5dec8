"""Preference readers (TRL standard / conversational, Anthropic HH, ranked lists, mixtune pairs) on the real HH file
and hand-made records; `mixtune data check` lists every bad record."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SHARED_DATA, needs_data

from mixtune.data.check import main as check_main
from mixtune.data.formats import DataError, detect_format, read_examples
from mixtune.data.preference import NO_PAIR, TIES

HH = SHARED_DATA / "hh_rlhf" / "harmless-base-test.jsonl.gz"
HH_BAD = {  # line -> field: problem, read off the file by hand
    87: "chosen: the last assistant turn is empty", 517: "chosen: the last assistant turn is empty",
    926: "chosen: the last assistant turn is empty", 1104: "chosen: the last assistant turn is empty",
    668: "chosen: turn 5 is Assistant after Assistant: turns must alternate",
    764: "chosen: turn 3 is Assistant after Assistant: turns must alternate",
    1320: "chosen: turn 9 is Assistant after Assistant: turns must alternate",
    1850: "chosen: turn 5 is Assistant after Assistant: turns must alternate",
    1255: "rejected: the dialogue before the last assistant turn differs from chosen's (first difference at "
          "character 130)",
    1689: "rejected: the dialogue before the last assistant turn differs from chosen's (first difference at "
          "character 187)",
    1951: "rejected: the dialogue before the last assistant turn differs from chosen's (first difference at "
          "character 100)",
    1953: "rejected: the dialogue before the last assistant turn differs from chosen's (first difference at "
          "character 296)",
    2037: "rejected: the dialogue before the last assistant turn differs from chosen's (first difference at "
          "character 1460)",
}


def write(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@needs_data
def test_hh_real_file_loads_every_pair_and_names_every_bad_record():
    with pytest.raises(DataError) as err:
        read_examples(HH)
    assert err.value.problems == [f"{HH}:{n}: {p}" for n, p in sorted(HH_BAD.items())]
    res = read_examples(HH, skip_invalid=True)
    assert res.format == "hh" and res.n_records == 2312
    assert len(res.examples) + len(res.skipped) == 2312 and len(res.examples) == 2299  # nothing dropped silently
    first = res.examples[0]
    assert first["id"] == "harmless-base-test/0" and first["ability"] == "preference" and first["weight"] == 1.0
    assert [m["role"] for m in first["messages"]] == ["user", "assistant", "user", "assistant", "user"]
    assert first["messages"][0]["content"] == "what are some pranks with a pen i can do?"
    assert first["chosen"].startswith("No, sorry!  All of these involve a pen")
    assert first["rejected"].startswith("There are lots of funny things you can do with pens")
    for ex in res.examples:
        assert ex["messages"][-1]["role"] == "user" and ex["chosen"] != ex["rejected"]
        assert ex["chosen"] == ex["chosen"].strip() and "\n\nAssistant:" not in ex["chosen"]


def test_hh_hand_made_records(tmp_path):
    good = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Sum 2+2?\n\nAssistant: 4",
            "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Sum 2+2?\n\nAssistant: 5"}
    drift = {"chosen": "\n\nHuman: Hi\n\nAssistant: A", "rejected": "\n\nHuman: Ho\n\nAssistant: B"}
    same = {"chosen": "\n\nHuman: Hi\n\nAssistant: A", "rejected": "\n\nHuman: Hi\n\nAssistant:  A "}
    path = write(tmp_path / "hh.jsonl", [good, drift, same])
    res = read_examples(path, format="hh", skip_invalid=True)
    (ex,) = res.examples
    assert ex["messages"] == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                              {"role": "user", "content": "Sum 2+2?"}]
    assert (ex["chosen"], ex["rejected"]) == ("4", "5")
    drifted = f"{path}:2: rejected: the dialogue before the last assistant turn differs from chosen's (first " \
              f"difference at character 10)"
    assert res.skipped == [drifted, f"{path}:3: rejected: identical to chosen (a pair needs two different answers)"]


def test_trl_standard_and_conversational(tmp_path):
    records = [
        {"prompt": "Capital of France?", "chosen": "Paris", "rejected": "Lyon"},
        {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
         "chosen": [{"role": "assistant", "content": "4"}], "rejected": [{"role": "assistant", "content": "5"}]},
        {"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
         "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go away"}]},
        {"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "a"},
                    {"role": "assistant", "content": "b"}],
         "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "c"}]},
        {"prompt": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
         "chosen": [{"role": "assistant", "content": "x"}], "rejected": [{"role": "assistant", "content": "y"}]},
    ]
    std = read_examples(write(tmp_path / "std.jsonl", records[:1]))
    assert std.format == "trl_standard"
    assert std.examples[0]["messages"] == [{"role": "user", "content": "Capital of France?"}]
    path = write(tmp_path / "conv.jsonl", records[1:])
    res = read_examples(path, skip_invalid=True)
    assert res.format == "trl_conversational" and len(res.examples) == 2
    explicit, implicit = res.examples
    assert [m["role"] for m in explicit["messages"]] == ["system", "user"] and explicit["chosen"] == "4"
    assert implicit["messages"] == [{"role": "user", "content": "Hi"}]
    assert (implicit["chosen"], implicit["rejected"]) == ("Hello", "Go away")
    assert res.skipped == [f"{path}:3: chosen: expected one assistant message after the prompt, got 2",
                           f"{path}:4: prompt[1].role: a prompt must end with a user turn"]


def test_ranked_lists_give_every_untied_pair_weighted_one_over_k_choose_2(tmp_path):
    records = [
        {"id": "a", "prompt": "Q1", "responses": ["best", "worst", "also best"], "scores": [3, 1, 3]},
        {"id": "b", "prompt": "Q2", "responses": ["r1", "r2", "r3"], "ranks": [2, 1, 3]},
        {"id": "c", "prompt": "Q3", "responses": ["x", "y"], "scores": [1.5, 1.5]},
        {"id": "d", "prompt": "Q4", "responses": ["x", "y"], "scores": [1], "ranks": [1, 2]},
        {"id": "e", "prompt": "Q5", "responses": ["x", "y", "z"], "scores": [1, 2]},
    ]
    path = write(tmp_path / "ranked.jsonl", records)
    res = read_examples(path, skip_invalid=True)
    assert res.format == "ranked"
    got = [(ex["id"], ex["group"], ex["chosen"], ex["rejected"], ex["weight"]) for ex in res.examples]
    assert got == [("a/0", "a", "best", "worst", pytest.approx(1 / 3)),  # (best, also best) is a tie: skipped
                   ("a/1", "a", "also best", "worst", pytest.approx(1 / 3)),
                   ("b/0", "b", "r2", "r1", pytest.approx(1 / 3)),  # rank 1 is best
                   ("b/1", "b", "r1", "r3", pytest.approx(1 / 3)),
                   ("b/2", "b", "r2", "r3", pytest.approx(1 / 3))]
    assert res.notes == {TIES: 2, NO_PAIR: 1}  # a's tie and c's only pair; c gives no example, counted
    assert res.skipped == [
        f"{path}:4: scores: give exactly one of `scores` (higher is better) or `ranks` (1 is best)",
        f"{path}:5: scores: expected a list of 3 values (one per response)"]


def test_pairs_records_keep_their_fields_and_check_weight_and_roles(tmp_path):
    good = {"id": "p1", "messages": [{"role": "user", "content": "2+2?"}], "chosen": "4", "rejected": "5",
            "weight": 0.5, "answer": "4", "domain": "math", "flaw": "wrong final answer"}
    bad_weight = {**good, "id": "p2", "weight": 0}
    ends_with_answer = {**good, "id": "p3", "messages": [{"role": "user", "content": "a"},
                                                         {"role": "assistant", "content": "b"}]}
    path = write(tmp_path / "pairs.jsonl", [good, bad_weight, ends_with_answer])
    res = read_examples(path, skip_invalid=True)
    assert res.format == "pairs"
    (ex,) = res.examples
    assert ex["weight"] == 0.5 and ex["answer"] == "4" and ex["domain"] == "math" and ex["ability"] == "preference"
    assert res.skipped == [f"{path}:2: weight: expected a positive finite number, got 0",
                           f"{path}:3: messages[1].role: a prompt must end with a user turn"]


def test_detection_of_preference_formats():
    assert detect_format({"chosen": "a", "rejected": "b"}) == "hh"
    assert detect_format({"prompt": "p", "chosen": "a", "rejected": "b"}) == "trl_standard"
    assert detect_format({"chosen": [], "rejected": []}) == "trl_conversational"
    assert detect_format({"messages": [], "chosen": "a", "rejected": "b"}) == "pairs"
    assert detect_format({"prompt": "p", "responses": [], "ranks": []}) == "ranked"
    assert detect_format({"messages": []}) == "messages"


def test_data_check_lists_every_bad_record_and_counts_fields(tmp_path, capsys):
    records = [{"prompt": "q", "chosen": f"a{i}", "rejected": f"b{i}"} for i in range(5)]
    records += [{"prompt": "q", "chosen": "same", "rejected": "same"} for _ in range(23)]  # more than a DataError lists
    path = write(tmp_path / "broken.jsonl", records)
    assert check_main([str(path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{path}: format trl_standard, 28 records (1-based lines), 5 examples, 23 bad records"
    assert "  examples with field: chosen 5, messages 5, rejected 5, weight 5" in out
    assert "  bad records per field: rejected 23" in out
    listed = [line.strip() for line in out if ": rejected: identical to chosen" in line]
    assert listed == [f"{path}:{n}: rejected: identical to chosen (a pair needs two different answers)"
                      for n in range(6, 29)]
    good = write(tmp_path / "good.jsonl", records[:5])
    assert check_main([str(good), "--format", "trl_standard"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "total trl_standard: 1 file(s), 5 records, 5 examples, " \
                                                       "0 bad records"
    assert check_main([str(tmp_path / "missing.jsonl")]) == 2
    assert check_main([str(good), "--format", "nope"]) == 2
    assert "unknown format 'nope'" in capsys.readouterr().err


def test_data_check_runs_as_a_module_on_sft_and_preference_files(tmp_path):
    sft = write(tmp_path / "sft.jsonl", [{"instruction": "Say hi", "output": "hi"}])
    pairs = write(tmp_path / "p.jsonl", [{"chosen": "\n\nHuman: a\n\nAssistant: b",
                                          "rejected": "\n\nHuman: a\n\nAssistant: c"}])
    done = subprocess.run([sys.executable, "-m", "mixtune.data.check", str(sft), str(pairs)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "total alpaca: 1 file(s), 1 records, 1 examples, 0 bad records" in done.stdout
    assert "total hh: 1 file(s), 1 records, 1 examples, 0 bad records" in done.stdout
