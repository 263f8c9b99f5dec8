"""StepCoder's CCCS and FGO on known programs: where the canonical solutions split and which prefixes are given, how
the curriculum moves (by iterations, by pass rate), which lines the sandboxed tests executed and which tokens FGO
keeps."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from mixtune.train.rewards import TaskReward
from mixtune.train.stepcoder import (
    CCCSSchedule,
    cccs_prefixes,
    fgo_keep,
    fgo_token_mask,
    given_prefix,
    split_lines,
    token_spans,
    unexecuted_lines,
)

PROMPT = 'def f(nums: list[int]) -> int:\n    """Sum the numbers above 2."""\n'
#  program lines: 1 def, 2 docstring, 3 total = 0, 4 for, 5 if, 6 total += x, 7 return
BODY = "    total = 0\n    for x in nums:\n        if x > 2:\n            total += x\n    return total\n"
TESTS = "def check(candidate):\n    assert candidate([1, 2, 3]) == 3\n    assert candidate([5]) == 5\n"


def test_split_points_before_conditional_statements():
    assert split_lines(PROMPT + BODY, first_body_line=3) == [4, 5]  # the for, the if
    assert split_lines(PROMPT + BODY, first_body_line=3, how="statement") == [4, 5, 6, 7]
    # a one-line conditional (filtered comprehension / conditional expression) counts, the first statement never
    body = "    nums = nums[:2]\n    nums = [x for x in nums if x % 2]\n    y = 1 if nums else 0\n    return y\n"
    assert split_lines(PROMPT + body, 3) == [4, 5]
    assert split_lines(PROMPT + "    x = 1; y = 2\n    if x:\n        return y\n", 3) == [4]  # `y = 2` shares a line
    assert split_lines("def f(:\n", 1) == []


def test_given_prefixes_longest_first_and_shrinking():
    prefixes = cccs_prefixes(PROMPT, BODY)
    assert prefixes == ("    total = 0\n    for x in nums:", "    total = 0")  # cut before the newline
    assert [given_prefix(prefixes, s) for s in range(4)] == [*prefixes, "", ""]
    # a mini-lab body: straight-line; split only before every statement
    straight = "    nums = [x + 7 for x in nums]\n    return sum(nums)\n"
    assert cccs_prefixes(PROMPT, straight) == ()
    assert cccs_prefixes(PROMPT, straight, "statement") == ("    nums = [x + 7 for x in nums]",)


def test_schedule_by_iterations():
    schedule = CCCSSchedule("iterations", every=2, threshold=1.0, n_stages=2)
    moves = [schedule.update(None) for _ in range(6)]
    assert moves == [False, True, False, True, False, False] and schedule.done and schedule.stage == 2


def test_schedule_by_pass_rate_moves_on_the_window_mean():
    schedule = CCCSSchedule("pass_rate", every=2, threshold=0.5, n_stages=3)
    assert schedule.update(0.9) is False  # one step in the stage: the window is not full yet
    assert schedule.update(0.0) is False  # window (0.9, 0.0): mean 0.45 < 0.5
    assert schedule.update(0.2) is False  # window (0.0, 0.2)
    assert schedule.update(0.9) is True and schedule.stage == 1  # window (0.2, 0.9): mean 0.55
    assert schedule.update(1.0) is False  # a new stage starts with an empty window
    saved = schedule.state_dict()
    again = CCCSSchedule("pass_rate", every=2, threshold=0.5, n_stages=3)
    again.load_state_dict(saved)
    assert again.update(1.0) is True and again.stage == 2


def test_sandbox_trace_and_masked_lines_of_a_known_program():
    example = {"id": "t/0", "tests": TESTS, "entry_point": "f",
               "messages": [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": BODY}]}
    wrong = BODY.replace("x > 2", "x > 100")  # line 6 never runs
    passed, failed = TaskReward(trace_lines=True)([example, example], [BODY, wrong])
    assert passed.info["outcome"] == "passed" and failed.info["outcome"] == "wrong_answer"
    assert set(failed.info["executed_lines"]) == {1, 3, 4, 5, 7}  # the def runs at load; the docstring never
    assert unexecuted_lines(PROMPT + wrong, failed.info["executed_lines"]) == {6}
    assert unexecuted_lines(PROMPT + BODY, passed.info["executed_lines"]) == set()
    # an uncalled helper: its body is masked, its signature and docstring kept
    helper = PROMPT + BODY + 'def unused(y):\n    """Doc."""\n    return y * 2\n'
    assert unexecuted_lines(helper, [1, 3, 4, 5, 6, 7, 8]) == {10}
    assert unexecuted_lines("def f(:\n", []) is None


def test_fgo_token_mask_on_known_tokens(tiny_tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    example = {"id": "t/0", "tests": TESTS, "entry_point": "f",
               "messages": [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": BODY}]}
    wrong = BODY.replace("x > 2", "x > 100")
    ids = tok(wrong, add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")]
    info = {"outcome": "wrong_answer", "executed_lines": [1, 3, 4, 5, 7], "code_line_offset": 2}
    keep = fgo_token_mask(example, wrong, 0, ids, info, tok)
    spans = token_spans(tok, ids)
    line6 = wrong.index("            total += x")
    for (a, b), k in zip(spans, keep):
        text = wrong[a:b]
        on_line6 = a >= line6 and b <= line6 + len("            total += x\n")
        assert k == (not on_line6 or not text), (text, k)  # masked exactly the tokens of line 6
    assert keep[-1] is True and not all(keep)  # the end token (no characters) is kept
    # a given CCCS prefix shifts the generated tokens' characters; the program does not compile: keep all
    given = "    total = 0\n"
    rest = wrong[len(given):]
    rest_ids = tok(rest, add_special_tokens=False)["input_ids"]
    shifted = fgo_token_mask(example, given + rest, len(given), rest_ids, info, tok)
    assert shifted.count(False) == keep.count(False)
    assert all(fgo_token_mask(example, wrong, 0, ids, {**info, "outcome": "syntax_error"}, tok))
    assert all(fgo_token_mask(example, wrong, 0, ids, {**info, "executed_lines": None}, tok))


def test_fgo_keep_counts_a_token_masked_only_when_all_its_characters_are():
    completion = "ab\ncd\n"  # code lines 1-2 = program lines 3-4 (offset 2); line 4 masked
    spans = [(0, 2), (2, 4), (4, 6)]  # "ab", "\nc" (spans lines 3 and 4), "d\n"
    assert fgo_keep(completion, completion, 2, {4}, spans) == [True, True, False]
    assert fgo_keep("```python\nab\n```", "ab\n", 0, {1}, [(0, 10), (10, 13), (13, 16)]) == [True, False, True]


@pytest.mark.parametrize("how", ["conditional", "statement"])
def test_prefixes_are_prefixes_of_the_canonical_body(how):
    for prefix in cccs_prefixes(PROMPT, BODY, how):
        assert BODY.startswith(prefix) and BODY[len(prefix)] == "\n"
