"""Rewards for the RL stages, behind one interface: `reward(examples, completions) -> list[RewardResult]`.

- `task`: the evaluation metric itself as the reward (as nanochat does). Per example, by its gold fields:
  code (`tests` + `entry_point`, HumanEval layout: the prompt is the user turn) runs in the sandbox through
  `CodeTask.score_programs` and gets StepCoder's reward for its outcome (+1 pass, −0.3 a test fails, −0.6 runtime
  error or timeout, −1 syntax error; `code_io.STEPCODER_REWARD`); math (`answer`) gets 1 when lm-eval's GSM8K
  strict-match extraction equals the answer, else 0; instructions (`instruction_ids` + `kwargs`) get the share of
  instructions the IFEval checkers find followed (strict; `rl.instruction_reward: all` gives 1 only if all are).
- `reward_model`: a trained reward model's score of the prompt + answer (`evaluate.reward_model.score_texts`).
- `http`: an endpoint: POST {ids, prompts, completions} → {rewards: [float | null]}.
- `contains`: the share of the answer's words equal to a target word (a toy task a tiny model learns in tests).
- several terms: their weighted sum (`WeightedSum`).

A reward never raises for a sample: a sandbox failure, a missing gold field, an endpoint that is down or answers
null is a `RewardResult(failed=True, detail=...)` with value 0; the stage counts them and, by `rl.failed_reward`,
keeps them at 0 or drops the sample from the update. Generated code runs only in the sandbox. This module imports
no torch (its registry is read when a recipe is validated).
"""

from __future__ import annotations

import importlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class RewardResult:
    """One sample's reward: `value`; `failed` (the reward could not be computed: value 0) with `detail`;
    `passed` (the task's own verdict, for the pass rate; None when the reward has none); `info` (e.g. the code
    outcome and, with line tracing, `executed_lines` / `code_line_offset` for FGO)."""

    value: float
    failed: bool = False
    detail: str = ""
    passed: bool | None = None
    info: dict = field(default_factory=dict)


def failure(detail: str) -> RewardResult:
    return RewardResult(0.0, failed=True, detail=detail[:300])


class Reward(Protocol):
    """A reward function over aligned lists of data-contract examples and answer texts."""

    name: str

    def __call__(self, examples: list[dict], completions: list[str]) -> list[RewardResult]:
        ...


def prompt_messages(example: dict) -> list[dict]:
    """The example's conversation without its final assistant turn (the reference answer)."""
    messages = list(example.get("messages") or [])
    return messages[:-1] if messages and messages[-1]["role"] == "assistant" else messages


def code_example(example: dict) -> dict:
    """A data-contract code record as the HumanEval-layout example `CodeTask.score_programs` takes."""
    messages = example.get("messages") or []
    user = next((m["content"] for m in reversed(prompt_messages(example)) if m["role"] == "user"), "")
    canonical = messages[-1]["content"] if messages and messages[-1]["role"] == "assistant" else ""
    return {"task_id": str(example.get("id")), "format": "humaneval", "entry_point": example["entry_point"],
            "prompt": user, "canonical_solution": canonical, "test": example["tests"]}


def task_kind(example: dict) -> str | None:
    """Which scorer an example's gold fields call for: code, instructions, math; None when it has none."""
    if example.get("tests") and example.get("entry_point"):
        return "code"
    if example.get("instruction_ids"):
        return "instructions"
    if example.get("answer") is not None:
        return "math"
    return None


SANDBOX_WORKERS = 4
"""Programs of one RL step scored at once: each waits on its own sandbox process, so more than the cores pays."""


class TaskReward:
    """The example's own evaluation metric as the reward (see the module docstring)."""

    name = "task"

    def __init__(self, instruction_reward: str = "fraction", trace_lines: bool = False, workers: int = 2):
        self.instruction_reward, self.trace_lines, self.workers = instruction_reward, trace_lines, workers
        self._code_task = None

    @classmethod
    def from_spec(cls, spec: Any, recipe: Any, trace_lines: bool = False) -> TaskReward:
        return cls(recipe.rl.instruction_reward, trace_lines, SANDBOX_WORKERS)

    def __call__(self, examples: list[dict], completions: list[str]) -> list[RewardResult]:
        out: list[RewardResult | None] = [None] * len(examples)
        code = [i for i, ex in enumerate(examples) if task_kind(ex) == "code"]
        if code:
            for i, r in zip(code, self._code([examples[i] for i in code], [completions[i] for i in code])):
                out[i] = r
        for i, ex in enumerate(examples):
            if out[i] is None:
                out[i] = self._one(ex, completions[i])
        return out  # type: ignore[return-value]

    def _code(self, examples: list[dict], completions: list[str]) -> list[RewardResult]:
        from mixtune.evaluate.code import HumanEval
        from mixtune.evaluate.code_io import STEPCODER_REWARD

        if self._code_task is None:
            self._code_task = HumanEval(workers=self.workers)
        rows = self._code_task.score_programs([code_example(ex) for ex in examples], completions,
                                              trace_lines=self.trace_lines)
        results = []
        for row in rows:
            info = {k: row.get(k) for k in ("outcome", "executed_lines", "code_line_offset") if k in row}
            if row["outcome"] not in STEPCODER_REWARD:  # "error": the sandbox failed, not the program
                results.append(RewardResult(0.0, True, f"sandbox: {row.get('detail', '')}"[:300], None, info))
            else:
                results.append(RewardResult(STEPCODER_REWARD[row["outcome"]], passed=bool(row["passed"]),
                                            detail=row["outcome"], info=info))
        return results

    def _one(self, example: dict, completion: str) -> RewardResult:
        kind = task_kind(example)
        if kind == "math":
            from mixtune.evaluate.gsm8k import score_gsm8k

            passed = bool(score_gsm8k(completion, str(example["answer"]))["strict"])
            return RewardResult(float(passed), passed=passed, detail="math")
        if kind == "instructions":
            from mixtune.evaluate.ifeval import follow_strict

            try:
                followed = follow_strict(completion, example["instruction_ids"], example.get("kwargs") or [])
            except Exception as exc:  # noqa: BLE001 - a checker that breaks on odd text is that sample's failure
                return failure(f"instruction checker: {type(exc).__name__}: {exc}")
            share = sum(followed) / max(len(followed), 1)
            value = share if self.instruction_reward == "fraction" else float(all(followed))
            return RewardResult(value, passed=all(followed), detail="instructions")
        return failure(f"example {example.get('id')}: no answer, tests or instruction_ids to score against")


class RewardModelReward:
    """A trained reward model's score of (prompt turns + answer), as the reward stage trained it."""

    name = "reward_model"

    def __init__(self, model: Any, tokenizer: Any, template: str, system_prompt: str | None = None,
                 batch_size: int = 16):
        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.system_prompt, self.batch_size = system_prompt, batch_size

    @classmethod
    def from_spec(cls, spec: Any, recipe: Any, trace_lines: bool = False) -> RewardModelReward:
        from mixtune.model.load import load_checkpoint, load_tokenizer
        from mixtune.train.engine import pick_device

        model = load_checkpoint(spec.path).to(pick_device()).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return cls(model, load_tokenizer(spec.path), spec.template or recipe.data.template, recipe.data.system_prompt)

    def __call__(self, examples: list[dict], completions: list[str]) -> list[RewardResult]:
        from mixtune.evaluate.reward_model import score_texts

        conversations = [[*prompt_messages(ex), {"role": "assistant", "content": c}]
                         for ex, c in zip(examples, completions)]
        scores = score_texts(self.model, self.tokenizer, conversations, template=self.template,
                             system_prompt=self.system_prompt, batch_size=self.batch_size)
        return [RewardResult(float(s)) for s in scores]


class HTTPReward:
    """A reward endpoint: POST {ids, prompts (the prompt turns), completions} → {rewards: [float | null]}.

    A connection error, timeout or 5xx is retried `max_retries` times with exponential backoff; then every sample of
    the call is a failure. A 4xx, a reply that is not {rewards: [...]} of the right length, or a null / non-number
    entry is a failure of those samples. Never raises."""

    name = "http"

    def __init__(self, url: str, timeout_s: float = 30.0, max_retries: int = 2, backoff_s: float = 0.5):
        self.url, self.timeout_s, self.max_retries, self.backoff_s = url, timeout_s, max_retries, backoff_s

    @classmethod
    def from_spec(cls, spec: Any, recipe: Any, trace_lines: bool = False) -> HTTPReward:
        return cls(spec.url, spec.timeout_s, spec.max_retries)

    def __call__(self, examples: list[dict], completions: list[str]) -> list[RewardResult]:
        import httpx

        body = {"ids": [str(ex.get("id")) for ex in examples], "prompts": [prompt_messages(ex) for ex in examples],
                "completions": list(completions)}
        problem = ""
        for attempt in range(self.max_retries + 1):
            try:
                reply = httpx.post(self.url, json=body, timeout=self.timeout_s)
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if reply.status_code < 500:
                    return self._parse(reply, len(completions))
                problem = f"HTTP {reply.status_code}"
            if attempt < self.max_retries:
                time.sleep(self.backoff_s * 2 ** attempt)
        return [failure(f"reward endpoint {self.url}: {problem}")] * len(completions)

    def _parse(self, reply: Any, n: int) -> list[RewardResult]:
        if reply.status_code != 200:
            return [failure(f"reward endpoint {self.url}: HTTP {reply.status_code}: {reply.text[:120]}")] * n
        try:
            rewards = reply.json()["rewards"]
        except (ValueError, KeyError, TypeError):
            return [failure(f"reward endpoint {self.url}: reply is not {{rewards: [...]}}")] * n
        if not isinstance(rewards, list) or len(rewards) != n:
            return [failure(f"reward endpoint {self.url}: {n} completions sent, reply is not a list of {n}")] * n
        return [RewardResult(float(r)) if _finite_number(r)
                else failure(f"reward endpoint {self.url}: reward {r!r} is not a finite number") for r in rewards]


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class ContainsReward:
    """Share of the answer's whitespace-separated words equal to `target` (0 for an empty answer)."""

    name = "contains"

    def __init__(self, target: str):
        self.target = target

    @classmethod
    def from_spec(cls, spec: Any, recipe: Any, trace_lines: bool = False) -> ContainsReward:
        return cls(spec.target)

    def __call__(self, examples: list[dict], completions: list[str]) -> list[RewardResult]:
        out = []
        for text in completions:
            words = text.split()
            out.append(RewardResult(sum(w == self.target for w in words) / len(words) if words else 0.0))
        return out


class WeightedSum:
    """Σ weight · term. A sample fails if any term failed for it (the failed terms add 0 to its value); `passed` and
    `info` come from the first term that gives them."""

    name = "weighted_sum"

    def __init__(self, terms: list[tuple[float, Reward]]):
        self.terms = terms

    def __call__(self, examples: list[dict], completions: list[str]) -> list[RewardResult]:
        per_term = [(w, safe_call(r, examples, completions)) for w, r in self.terms]
        out = []
        for i in range(len(completions)):
            parts = [(w, res[i]) for w, res in per_term]
            failed = [r.detail for _, r in parts if r.failed]
            passed = next((r.passed for _, r in parts if r.passed is not None), None)
            info: dict = {}
            for _, r in parts:
                info = {**r.info, **info}
            out.append(RewardResult(sum(w * r.value for w, r in parts if not r.failed), bool(failed),
                                    "; ".join(failed), passed, info))
        return out


REWARDS: dict[str, str] = {
    "task": "mixtune.train.rewards:TaskReward",
    "reward_model": "mixtune.train.rewards:RewardModelReward",
    "http": "mixtune.train.rewards:HTTPReward",
    "contains": "mixtune.train.rewards:ContainsReward",
}
"""reward kind -> "module:Class" with `from_spec(spec, recipe, trace_lines)`."""


def safe_call(reward: Reward, examples: list[dict], completions: list[str]) -> list[RewardResult]:
    """`reward(examples, completions)`, where an exception or a wrong number of results makes every sample a
    recorded failure instead of ending the stage."""
    try:
        results = list(reward(examples, completions))
    except Exception as exc:  # noqa: BLE001 - a broken reward is counted, never the end of training
        return [failure(f"{reward.name} reward raised {type(exc).__name__}: {exc}")] * len(completions)
    if len(results) != len(completions):
        return [failure(f"{reward.name} reward gave {len(results)} results for {len(completions)} samples")
                ] * len(completions)
    return results


def make_reward(recipe: Any, trace_lines: bool = False) -> Reward:
    """The reward of `recipe.rl.rewards`: one term as it is, several as their weighted sum."""
    terms = []
    for spec in recipe.rl.rewards:
        module, cls = REWARDS[spec.kind].split(":")
        terms.append((spec.weight, getattr(importlib.import_module(module), cls).from_spec(spec, recipe, trace_lines)))
    if len(terms) == 1 and terms[0][0] == 1.0:
        return terms[0][1]
    return WeightedSum(terms)
