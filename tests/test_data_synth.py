"""Self-instruct: ROUGE-L and heuristics by hand, and the whole verb against a scripted loopback endpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from synth_server import GOOD, SynthServer

from mixtune.data.cli import main as data_main
from mixtune.data.synth import encode_prompt, heuristic_reason, lcs_length, parse_generation, rouge_l, rouge_tokens

SEEDS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "self_instruct" / "seed_tasks.jsonl"


def test_rouge_l_hand_worked():
    a, b = rouge_tokens("The cat sat on the mat."), rouge_tokens("the cat is on a mat")
    assert a == ["the", "cat", "sat", "on", "the", "mat"] and lcs_length(a, b) == 4  # the cat on mat
    assert rouge_l(a, b) == pytest.approx(2 * (4 / 6) * (4 / 6) / (4 / 6 + 4 / 6))
    assert rouge_l(a, a) == 1.0 and rouge_l(a, []) == 0.0


@pytest.mark.parametrize("text,reason", [
    ("Say hi", "too_short"), ("Draw a cat for me please.", "blacklisted:draw"),
    ("Write a program that sorts numbers.", "write_a_program"), ('"Quote this back to me now."',
                                                               "starts_with_punctuation"),
    ("Éxplain the rules of chess briefly.", "non_ascii_start"), ("Summarise the story of a novel you like.", None),
    ("Make a mapping of countries to capitals.", None)])  # "map" is blacklisted as a word, not inside "mapping"
def test_heuristics(text, reason):
    assert heuristic_reason(text) == reason


def test_prompt_and_parse_round_trip():
    tasks = [{"instruction": "Name a fruit.", "input": "", "output": "Apple."},
             {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}]
    prompt = encode_prompt("HEADER\n", tasks)
    assert prompt == ("HEADER\n###\n1. Instruction: Name a fruit.\n1. Input:\n<noinput>\n1. Output:\nApple.\n"
                      "###\n2. Instruction: Add the numbers.\n2. Input:\n2 and 3\n2. Output:\n5\n###\n3. Instruction:")
    got = parse_generation(" Spell a word.\n3. Input:\n<noinput>\n3. Output:\nw-o-r-d\n###\n4. Instruction: Count "
                           "to ten.\n4. Input:\nfrom one\n4. Output:\n1..10\n###\n5", 2)
    assert got == [{"instruction": "Spell a word.", "input": ""}, {"instruction": "Count to ten.", "input": "from one"}]


def test_synth_against_a_loopback_endpoint(tmp_path, capsys):
    out = tmp_path / "synth.jsonl"
    with SynthServer(delay_s=0.0) as server:
        rc = data_main(["synth", str(SEEDS), "--out", str(out), "--endpoint", server.base_url, "--model", "scripted",
                        "--num", "2", "--requests-per-round", "2", "--api-key-env", "MIXTUNE_TEST_NO_KEY"])
        bodies = server.requests
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["rounds"], summary["requests"], summary["candidates"], summary["kept"]) == (1, 2, 12, 2)
    assert summary["by_reason"] == {"blacklisted:picture": 2, "rouge_l": 4, "starts_with_punctuation": 2,
                                    "too_short": 2}
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["messages"][0]["content"] for r in records] == [GOOD[0], GOOD[1] + "\n\nThe weather is nice today."]
    assert [r["messages"][1]["content"] for r in records] == ["Answer: " + GOOD[0], "Answer: " + GOOD[1]]
    assert records[0]["synth"]["model"] == "scripted" and records[0]["synth"]["round"] == 1
    assert len(records[0]["synth"]["seed_ids"]) == 3 and all(s.startswith("seed_task_") for s in
                                                              records[0]["synth"]["seed_ids"])
    first_prompt = bodies[0]["messages"][-1]["content"]
    assert first_prompt.startswith("You are asked to come up with a set of 20 diverse task instructions")
    assert first_prompt.endswith("###\n4. Instruction:")
    rejected = [json.loads(line) for line in Path(str(out) + ".removed.jsonl").read_text().splitlines()]
    rouge = [r for r in rejected if r["reason"] == "rouge_l"]
    assert {r["similar_to"] for r in rouge} >= {GOOD[0], GOOD[1]} and all(r["rouge_l"] >= 0.7 for r in rouge)
    # the messages-format output reads back as SFT examples
    from mixtune.data.formats import read_examples

    assert len(read_examples(out).examples) == 2


def test_synth_with_a_local_checkpoint_lists_every_rejection(tmp_path, capsys, base_dir):
    out = tmp_path / "synth.jsonl"
    rc = data_main(["synth", str(SEEDS), "--out", str(out), "--model-path", str(base_dir), "--template", "chatml",
                    "--num", "1", "--requests-per-round", "1", "--max-rounds", "1", "--max-new-tokens", "16"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["requests"] == 1 and summary["kept"] + summary["rejected"] >= 1
    assert summary["kept"] == len(out.read_text().splitlines())


def test_bad_seed_file_and_backend_exit_2(tmp_path, capsys):
    bad = tmp_path / "seeds.jsonl"
    bad.write_text('{"id": "s0", "instruction": "x"}\n')
    (tmp_path / "prompt.txt").write_text("P")
    assert data_main(["synth", str(bad), "--out", str(tmp_path / "o.jsonl"), "--endpoint", "http://127.0.0.1:9/v1",
                      "--model", "m"]) == 2
    assert capsys.readouterr().err.strip() == f"mixtune data synth: {bad}:1: instances: missing"
    assert data_main(["synth", str(SEEDS), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "give either --endpoint" in capsys.readouterr().err


def test_an_endpoint_that_never_answers_is_one_line_and_exit_2(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "mixtune.cli", "data", "synth", str(SEEDS), "--out",
                          str(tmp_path / "o.jsonl"), "--endpoint", "http://127.0.0.1:9/v1", "--model", "m", "--num", "2"],
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert out.stderr.strip().splitlines() == [out.stderr.strip()] and "127.0.0.1:9" in out.stderr
    assert not (tmp_path / "o.jsonl").exists()  # nothing written as if it were a result
