"""`mixtune eval score|list|run` end to end through the top-level CLI."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
from conftest import SHARED_DATA, needs_data

from mixtune.cli import main

DATA_DIR = SHARED_DATA


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def gsm8k_reference_samples() -> list[dict]:
    lines = (DATA_DIR / "gsm8k" / "test.jsonl").read_text().splitlines()
    return [{"task_id": f"gsm8k/test/{i}", "completion": json.loads(line)["answer"], "model": "ref"}
            for i, line in enumerate(lines)]


@needs_data
def test_score_gsm8k_references(tmp_path, capsys):
    samples = gsm8k_reference_samples()
    samples.reverse()  # --out must follow input order, not benchmark order
    path = write_lines(tmp_path / "s.jsonl", [json.dumps(s) for s in samples])
    out = tmp_path / "out" / "scored.jsonl"
    rc = main(["eval", "score", "--task", "gsm8k", "--samples", str(path), "--out", str(out), "--json",
               "--data-dir", str(DATA_DIR)])
    assert rc == 0
    stdout = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(stdout[-1])
    assert summary["task"] == "gsm8k" and summary["strict"] == 1.0 and summary["flexible"] == 1.0
    assert summary["samples"] == 1319 and any("strict: 1.0000" in line for line in stdout)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["task_id"] for r in rows] == [s["task_id"] for s in samples]
    assert set(rows[0]) == {"task_id", "completion", "model", "passed", "result"}
    assert all(r["passed"] is True and r["result"] == "passed" and r["model"] == "ref" for r in rows)


@needs_data
def test_several_samples_per_task(tmp_path, capsys):
    gold = gsm8k_reference_samples()[0]
    lines = [json.dumps(gold), json.dumps({**gold, "completion": "#### 17"}), json.dumps(gold)]
    out = tmp_path / "o.jsonl"
    rc = main(["eval", "score", "--task", "gsm8k", "--samples", str(write_lines(tmp_path / "s.jsonl", lines)),
               "--out", str(out), "--json", "--data-dir", str(DATA_DIR)])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["strict"] == pytest.approx(2 / 3) and summary["n"] == 3
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["passed"] for r in rows] == [True, False, True]
    assert rows[1]["result"].startswith("failed")


@needs_data
@pytest.mark.parametrize(
    "bad_line, message",
    [
        ("{not json", "invalid JSON"),
        ('{"task_id": "gsm8k/test/1"}', "missing 'completion'"),
        ('{"completion": "#### 3"}', "missing 'task_id'"),
        ('{"task_id": "gsm8k/test/99999", "completion": "#### 3"}', "unknown task_id"),
        ('["gsm8k/test/1", "#### 3"]', "JSON object"),
    ],
)
def test_malformed_samples_line_is_an_error_naming_the_line(tmp_path, capsys, bad_line, message):
    good = json.dumps({"task_id": "gsm8k/test/0", "completion": "#### 18"})
    path = write_lines(tmp_path / "bad.jsonl", [good, "", bad_line])
    rc = main(["eval", "score", "--task", "gsm8k", "--samples", str(path), "--data-dir", str(DATA_DIR)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "bad.jsonl:3: " in err and message in err


def test_unknown_task_lists_valid_names(tmp_path, capsys):
    rc = main(["eval", "score", "--task", "gsm9k", "--samples", str(tmp_path / "x.jsonl")])
    err = capsys.readouterr().err
    assert rc == 2 and "gsm9k" in err and "gsm8k" in err and "minilab_knowledge" in err


def test_minilab_knowledge_score_and_list(tmp_path, capsys):
    (tmp_path / "bench").mkdir()
    rows = [{"task_id": "kn/0", "question": "Capital of Zeta?", "answer": ["Qar"]},
            {"task_id": "kn/1", "question": "Ada's river?", "answer": ["the Lume", "Lume River"]}]
    write_lines(tmp_path / "bench" / "knowledge_test.jsonl", [json.dumps(r) for r in rows])
    samples = write_lines(tmp_path / "s.jsonl", [json.dumps({"task_id": "kn/1", "completion": "Lume"}),
                                                 json.dumps({"task_id": "kn/0", "completion": "Qar city"})])
    rc = main(["eval", "score", "--task", "minilab_knowledge", "--samples", str(samples), "--world-dir",
               str(tmp_path), "--json", "--k", "1,10"])
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    # "Lume" vs "the Lume": EM 1, F1 1; "Qar city" vs "Qar": EM 0, F1 = 2*(1/2*1)/(3/2) = 2/3
    assert rc == 0 and summary["exact_match"] == 0.5 and summary["f1"] == pytest.approx((1 + 2 / 3) / 2)
    assert summary["normalizer"] == "squad_v1" and "--k is ignored" in captured.err
    assert main(["eval", "list"]) == 0
    listing = capsys.readouterr().out
    assert "minilab_knowledge" in listing and "knowledge" in listing and "humaneval_plus" in listing


def test_run_delegates_to_runner(monkeypatch):
    seen = []
    fake = types.ModuleType("mixtune.evaluate.runner")
    fake.main = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "mixtune.evaluate.runner", fake)
    import mixtune.evaluate as pkg

    monkeypatch.setattr(pkg, "runner", fake, raising=False)
    assert main(["eval", "run", "-c", "recipe.yaml", "eval.limit=5"]) == 0
    assert seen == [["-c", "recipe.yaml", "eval.limit=5"]]
