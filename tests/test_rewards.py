"""Rewards behind one interface: the task's own scorers (GSM8K strict answer, sandboxed tests with StepCoder's
+1 / −0.3 / −0.6 / −1, IFEval checkers), an HTTP endpoint over real loopback HTTP (retries, nulls, a dead server in
bounded time), weighted sums, and failures recorded instead of raised."""

from __future__ import annotations

import socket
import time

import pytest
from reward_server import RewardServer

from mixtune.config import Recipe
from mixtune.train.rewards import (
    ContainsReward,
    HTTPReward,
    RewardResult,
    TaskReward,
    WeightedSum,
    make_reward,
    safe_call,
)

PROMPT = 'def add_total(nums: list[int]) -> int:\n    """Add 7 to each number, then return the sum."""\n'
BODY = "    nums = [x + 7 for x in nums]\n    return sum(nums)\n"
TESTS = "def check(candidate):\n    assert candidate([1, 2]) == 17\n    assert candidate([0]) == 7\n"
CODE = {"id": "code/0", "ability": "code", "tests": TESTS, "entry_point": "add_total",
        "messages": [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": BODY}]}
MATH = {"id": "math/0", "ability": "math", "answer": "67",
        "messages": [{"role": "user", "content": "24 + 43?"}, {"role": "assistant", "content": "24 + 43 = 67\n#### 67"}]}
INSTRUCT = {"id": "gen/0", "ability": "general", "instruction_ids": ["change_case:english_lowercase",
                                                                     "punctuation:no_comma"], "kwargs": [{}, {}],
            "messages": [{"role": "user", "content": "say hi"}, {"role": "assistant", "content": "hi"}]}


def test_math_reward_is_gsm8k_strict_match():
    out = TaskReward()([MATH] * 4, ["24 + 43 = 67\n#### 67", "#### 66", "the answer is 67", "#### 6,7"])
    assert [r.value for r in out] == [1.0, 0.0, 0.0, 1.0]  # lm-eval strips commas: "6,7" -> "67"
    assert [r.passed for r in out] == [True, False, False, True] and not any(r.failed for r in out)


def test_code_reward_is_stepcoders_per_outcome_in_the_sandbox():
    completions = [BODY, "    return sum(nums)\n", "    return nums[10]\n", "    return (\n"]
    out = TaskReward(trace_lines=True)([CODE] * 4, completions)
    assert [r.info["outcome"] for r in out] == ["passed", "wrong_answer", "runtime_error", "syntax_error"]
    assert [r.value for r in out] == [1.0, -0.3, -0.6, -1.0]
    assert [r.passed for r in out] == [True, False, False, False]
    assert out[0].info["code_line_offset"] == 2 and set(out[0].info["executed_lines"]) >= {3, 4}


def test_instruction_reward_is_the_share_followed_or_all():
    texts = ["hello world", "Hello, world", "hello, world"]
    assert [r.value for r in TaskReward()([INSTRUCT] * 3, texts)] == [1.0, 0.0, 0.5]
    assert [r.value for r in TaskReward("all")([INSTRUCT] * 3, texts)] == [1.0, 0.0, 0.0]


def test_an_example_without_gold_is_a_recorded_failure():
    (out,) = TaskReward()([{"id": "x", "messages": [{"role": "user", "content": "hi"}]}], ["hello"])
    assert out.failed and out.value == 0.0 and "x" in out.detail


def test_http_reward_over_loopback():
    examples = [MATH, CODE, INSTRUCT]
    with RewardServer(target="apples") as server:
        out = HTTPReward(server.url)(examples, ["apples pears", "apples", "<<null>> apples"])
        body = server.requests[0]
    assert [r.value for r in out[:2]] == [0.5, 1.0] and out[2].failed and "not a finite number" in out[2].detail
    assert body["ids"] == ["math/0", "code/0", "gen/0"]
    assert body["prompts"][0] == [{"role": "user", "content": "24 + 43?"}]  # the prompt turns, not the answer


def test_http_reward_retries_server_errors_then_succeeds():
    with RewardServer(fail_first=2) as server:
        out = HTTPReward(server.url, max_retries=2, backoff_s=0.01)([MATH], ["apples"])
        assert len(server.requests) == 3
    assert out[0].value == 1.0 and not out[0].failed


def test_http_reward_failures_are_recorded_in_bounded_time():
    with RewardServer(broken=True) as server:
        out = HTTPReward(server.url)([MATH, MATH], ["a", "b"])
    assert all(r.failed and "rewards" in r.detail for r in out)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/"
    t0 = time.perf_counter()
    out = HTTPReward(dead, timeout_s=1.0, max_retries=1, backoff_s=0.01)([MATH], ["a"])
    assert out[0].failed and "ConnectError" in out[0].detail and time.perf_counter() - t0 < 10


def test_weighted_sum_and_failed_terms():
    class Broken:
        name = "broken"

        def __call__(self, examples, completions):
            raise RuntimeError("judge crashed")

    total = WeightedSum([(1.0, TaskReward()), (0.5, ContainsReward("67"))])
    out = total([MATH, MATH], ["#### 67", "no"])
    assert [r.value for r in out] == [pytest.approx(1.25), 0.0] and out[0].passed is True
    with_broken = WeightedSum([(1.0, ContainsReward("67")), (2.0, Broken())])([MATH], ["67"])[0]
    assert with_broken.failed and with_broken.value == 1.0 and "judge crashed" in with_broken.detail
    assert safe_call(Broken(), [MATH], ["x"])[0] == RewardResult(0.0, True, "broken reward raised RuntimeError: "
                                                                             "judge crashed")


def test_rewards_from_the_recipe():
    recipe = Recipe.model_validate({"name": "r", "rl": {"rewards": [{"kind": "task"},
                                                                    {"kind": "contains", "target": "a", "weight": 2}]}})
    reward = make_reward(recipe)
    assert isinstance(reward, WeightedSum) and [w for w, _ in reward.terms] == [1.0, 2.0]
    assert isinstance(make_reward(Recipe.model_validate({"name": "r"})), TaskReward)  # the default
    with pytest.raises(ValueError, match="valid: task, reward_model, http, contains"):
        Recipe.model_validate({"name": "r", "rl": {"rewards": [{"kind": "judge"}]}})
    with pytest.raises(ValueError, match="needs `url`"):
        Recipe.model_validate({"name": "r", "rl": {"rewards": [{"kind": "http"}]}})
