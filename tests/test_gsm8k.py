"""GSM8K scoring agrees with lm-evaluation-harness's strict-match / flexible-extract rules (METHODS §10)."""

from __future__ import annotations

import json

import pytest
from conftest import SHARED_DATA, needs_data

from mixtune.evaluate.gsm8k import (
    GSM8K,
    INVALID,
    MiniLabMath,
    exact_match,
    extract_flexible,
    extract_strict,
    normalize_for_match,
    score_gsm8k,
)

DATA_DIR = SHARED_DATA


@needs_data
def test_all_reference_answers_score_one_under_both_rules():
    task = GSM8K(data_dir=str(DATA_DIR))
    examples = task.examples()
    assert len(examples) == 1319
    assert examples[0]["task_id"] == "gsm8k/test/0" and examples[-1]["task_id"] == "gsm8k/test/1318"
    assert examples[0]["gold"] == "18"  # "... #### 18": everything up to "#### " is ignored
    scored = task.score_all(examples, [ex["answer"] for ex in examples])
    summary = task.summarize(scored)
    assert summary["strict"] == 1.0 and summary["flexible"] == 1.0 and summary["n"] == 1319
    assert "strict-match" in summary["rule"] and "flexible-extract" in summary["rule"]


@needs_data
def test_wrong_answers_score_zero():
    task = GSM8K(data_dir=str(DATA_DIR))
    examples = task.examples()[:50]
    # Shift every gold by one: each completion now carries a neighbour's "#### N" (golds differ for these 50).
    completions = [examples[(i + 1) % 50]["answer"] for i in range(50)]
    scored = task.score_all(examples, completions)
    assert sum(s["strict"] for s in scored) < 5 and sum(s["flexible"] for s in scored) < 5


@pytest.mark.parametrize(
    "completion, reference, strict, flexible",
    [
        ("so #### 1,000.", "x\n#### 1000", True, True),      # comma and trailing period ignored on both sides
        ("#### 1000", "x\n#### 1,000", True, True),          # the reference's comma is ignored too
        ("#### $18", "#### 18", False, True),                 # strict needs a digit after "#### "; flexible keeps "$18"
        ("costs $18 in total", "#### 18", False, True),       # "$" removed before comparing
        ("#### -5", "#### -5", True, True),                   # negative numbers
        ("#### 5", "#### -5", False, False),
        ("5 apples and 7 pears, so 12", "#### 12", False, True),  # flexible takes the LAST number
        ("The answer is 12.", "#### 12", False, True),        # "12." -> "12"
        ("#### 3\n#### 4", "#### 4", False, True),            # strict takes the FIRST "#### N"
        ("#### 18.00", "#### 18", False, False),              # string comparison, not numeric
        ("I do not know.", "#### 7", False, False),           # no number at all -> [invalid]
    ],
)
def test_hand_cases(completion, reference, strict, flexible):
    scored = score_gsm8k(completion, reference)
    assert (scored["strict"], scored["flexible"]) == (strict, flexible)
    assert scored["passed"] is strict
    assert (scored["result"] == "passed") is strict


def test_filters_and_fallback():
    assert extract_strict("x #### 12,345.6 y") == "12,345.6"
    assert extract_strict("no marker 12") == INVALID
    assert extract_flexible("a 1 b 22 c -3") == "-3"  # one digit: the second alternative `(-?[0-9]+)` matches
    assert extract_flexible("a 1 b 22") == "22"
    assert extract_flexible("nothing here") == INVALID
    assert exact_match(INVALID, "#### 7") is False
    result = score_gsm8k("nothing", "#### 7")["result"]
    assert result.startswith("failed") and "[invalid]" in result


def test_ignore_rules_order_and_case():
    # ",", "\$", "(?s).*#### ", "\.$" applied in order, then lower-case.
    assert normalize_for_match("Step 1.\nStep 2.\n#### $1,234.") == "1234"
    assert normalize_for_match("ABC") == "abc"
    assert normalize_for_match("1.5") == "1.5"  # only a trailing period goes


def test_minilab_math_reads_world_bench(tmp_path):
    bench = tmp_path / "bench"
    bench.mkdir()
    rows = [{"task_id": "math/0", "question": "2+3?", "answer": "2+3=5\n#### 5"},
            {"task_id": "math/1", "question": "4*3?", "answer": "4*3=12\n#### 12"}]
    (bench / "math_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = MiniLabMath(world_dir=str(tmp_path))
    assert [ex["task_id"] for ex in task.examples()] == ["math/0", "math/1"]
    assert task.example("math/1")["messages"] == [{"role": "user", "content": "4*3?"}]
    scored = task.score_all(task.examples(), ["so 5\n#### 5", "the answer is 13"])
    assert task.summarize(scored)["strict"] == 0.5 and task.summarize(scored)["flexible"] == 0.5
    assert task.ability == "math" and task.name == "minilab_math"
