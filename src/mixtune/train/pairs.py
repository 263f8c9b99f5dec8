"""On-policy preference pairs: sample N answers per prompt from the model being trained, score each with the
ability's own scorer, pair the best against the worst (ties skipped and counted).

The scorers are the evaluation tasks' own rules, so a pair's preference is exactly what the benchmark rewards:
math, GSM8K strict-match against `#### <answer>` (`evaluate/gsm8k.py`); code, the hidden tests run in the sandbox
(`evaluate/code.py`, HumanEval format); instructions, the share of IFEval instructions followed, strict
(`evaluate/ifeval`). Any other scorer (a reward model, an LM judge: self-rewarding, RLAIF) plugs in as `score_fn`.
The pairs are data-contract pair examples, ready for the `dpo` stage (`train/dpo.run_stage`), which takes its
reference at its own start: SPIN and self-rewarding iterate sample → pair → DPO with this module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from mixtune.evaluate.generate import GenerationBackend

ScoreFn = Callable[[list[dict], list[list[str]]], list[list[float]]]
"""(examples, their N answers each) -> one score per answer (higher is better)."""


def prompt_of(example: dict) -> list[dict]:
    """The prompt turns of a chat example (its last assistant answer dropped) or of a pair example."""
    messages = list(example["messages"])
    return messages[:-1] if messages and messages[-1]["role"] == "assistant" else messages


def ability_of(example: dict) -> str:
    """Which scorer fits an example: its `domain` (pairs), else what its fields say, else its ability."""
    if example.get("domain"):
        return example["domain"]
    if "answer" in example and example.get("ability") != "knowledge":
        return "math"
    if "tests" in example and "entry_point" in example:
        return "code"
    if "instruction_ids" in example:
        return "general"
    return example.get("ability", "")


def score_math(examples: list[dict], answers: list[list[str]]) -> list[list[float]]:
    """1 when the answer's `#### N` matches the example's answer (GSM8K strict-match), else 0."""
    from mixtune.evaluate.gsm8k import score_gsm8k

    return [[float(score_gsm8k(a, f"#### {ex['answer']}")["strict"]) for a in group]
            for ex, group in zip(examples, answers)]


def score_code(examples: list[dict], answers: list[list[str]]) -> list[list[float]]:
    """1 when the completion passes the example's hidden tests in the sandbox (HumanEval rules), else 0."""
    from mixtune.evaluate.code import MiniLabCode

    tasks = [{"task_id": ex["id"], "format": "humaneval", "prompt": prompt_of(ex)[-1]["content"],
              "test": ex["tests"], "entry_point": ex["entry_point"]} for ex in examples]
    flat = [(task, a) for task, group in zip(tasks, answers) for a in group]
    results = MiniLabCode().score_all([t for t, _ in flat], [a for _, a in flat])
    passed = iter(float(r["passed"]) for r in results)
    return [[next(passed) for _ in group] for group in answers]


def score_instructions(examples: list[dict], answers: list[list[str]]) -> list[list[float]]:
    """The share of the example's IFEval instructions the answer follows (strict): graded, so fewer ties."""
    from mixtune.evaluate.ifeval.registry import follow_strict

    out = []
    for ex, group in zip(examples, answers):
        verdicts = [follow_strict(a, ex["instruction_ids"], ex["kwargs"]) for a in group]
        out.append([sum(v) / len(v) for v in verdicts])
    return out


SCORERS: dict[str, ScoreFn] = {"math": score_math, "code": score_code, "general": score_instructions}
"""ability -> the scorer of its benchmark family."""


SCORER_NEEDS: dict[str, tuple[str, ...]] = {"math": ("answer",), "code": ("tests", "entry_point"),
                                            "general": ("instruction_ids", "kwargs")}
"""ability -> the example fields its scorer reads."""


def has_scorer(example: dict) -> bool:
    """Whether `score_by_ability` can score answers to this example (its ability has a scorer and the example
    carries what that scorer reads)."""
    ability = ability_of(example)
    return ability in SCORERS and all(k in example for k in SCORER_NEEDS.get(ability, ()))


def score_by_ability(examples: list[dict], answers: list[list[str]]) -> list[list[float]]:
    """Each example scored by its ability's scorer (`ability_of`); an ability without one is an error."""
    out: list[list[float] | None] = [None] * len(examples)
    groups: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        groups.setdefault(ability_of(ex), []).append(i)
    for ability, members in groups.items():
        if ability not in SCORERS:
            raise ValueError(f"no scorer for ability {ability!r} (example {examples[members[0]]['id']}); valid: "
                             f"{', '.join(SCORERS)}, or pass score_fn")
        for i, scores in zip(members, SCORERS[ability]([examples[i] for i in members], [answers[i] for i in members])):
            out[i] = scores
    return out  # type: ignore[return-value]


def sample_answers(backend: GenerationBackend, prompts: Sequence[list[dict]], n: int, *, temperature: float = 1.0,
                   top_p: float = 1.0, max_new_tokens: int = 256, seed: int = 0) -> list[list[str]]:
    """`n` sampled answers per prompt (the prompt repeated n times in one generation call: seeded, reproducible)."""
    conversations = [p for p in prompts for _ in range(n)]
    texts = backend.chat(conversations, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                         seed=seed)
    return [list(texts[i * n:(i + 1) * n]) for i in range(len(prompts))]


def best_vs_worst(example: dict, answers: list[str], scores: list[float]) -> dict | None:
    """The pair (highest-scored answer chosen, lowest rejected; first of equals), or None when all scores tie or
    the two answers are the same text."""
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))
    worst = min(range(len(scores)), key=lambda i: (scores[i], i))
    if scores[best] == scores[worst] or answers[best].strip() == answers[worst].strip():
        return None
    keep = {k: example[k] for k in ("answer", "tests", "entry_point", "instruction_ids", "kwargs") if k in example}
    return {"id": f"{example['id']}/on-policy", "source": example.get("source", ""), "ability": "preference",
            "task_type": 0, "messages": prompt_of(example), "chosen": answers[best], "rejected": answers[worst],
            "weight": 1.0, "domain": ability_of(example), "chosen_score": scores[best],
            "rejected_score": scores[worst], **keep}


def on_policy_pairs(backend: GenerationBackend, examples: list[dict], n: int = 4, *,
                    score_fn: ScoreFn | None = None, **sampling: Any) -> tuple[list[dict], dict[str, int]]:
    """Sample `n` answers per example's prompt, score them (`score_fn`, default each ability's own scorer), and
    pair best vs worst. Returns (pair examples, counts: prompts, pairs, ties). `sampling`: temperature, top_p,
    max_new_tokens, seed (`sample_answers`)."""
    if n < 2:
        raise ValueError(f"on-policy pairs need n >= 2 answers per prompt, got {n}")
    answers = sample_answers(backend, [prompt_of(ex) for ex in examples], n, **sampling)
    scores = (score_fn or score_by_ability)(examples, answers)
    pairs = [best_vs_worst(ex, a, s) for ex, a, s in zip(examples, answers, scores)]
    kept = [p for p in pairs if p is not None]
    return kept, {"prompts": len(examples), "pairs": len(kept), "ties": len(pairs) - len(kept)}
