"""On-policy pairs: answers sampled per prompt, scored by each ability's own scorer (GSM8K rules, sandboxed tests,
IFEval checkers), best vs worst, ties skipped and counted; sampling from a real model is seeded; the pairs train a
DPO stage."""

from __future__ import annotations

import pytest
from transformers import AutoModelForCausalLM

from mixtune.config import Recipe
from mixtune.evaluate.generate import HFBackend
from mixtune.model.load import load_tokenizer
from mixtune.train import dpo
from mixtune.train.pairs import on_policy_pairs, sample_answers
from mixtune.train.stages import StageContext

CODE_PROMPT = 'def add_one(nums: list[int]) -> list[int]:\n    """Add 1 to each number, and return the result."""\n'
CODE_TESTS = "def check(candidate):\n    assert candidate([1, 2]) == [2, 3]\n    assert candidate([]) == []\n"


class ScriptedBackend:
    """Answers each prompt with the next of its scripted answers (by the user text), as a generator would."""

    name = "scripted"

    def __init__(self, script: dict[str, list[str]]):
        self.script = {k: list(v) for k, v in script.items()}
        self.calls: list[dict] = []

    def chat(self, conversations, **kwargs):
        self.calls.append(kwargs)
        return [self.script[c[-1]["content"]].pop(0) for c in conversations]


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_pairs_by_each_abilitys_own_scorer_with_ties_counted():
    examples = [
        {"id": "m1", "source": "math", "ability": "math", "answer": "5",
         "messages": [*user("2 + 3?"), {"role": "assistant", "content": "2 + 3 = 5\n#### 5"}]},
        {"id": "m2", "source": "math", "ability": "math", "answer": "7", "messages": user("3 + 4?")},
        {"id": "c1", "source": "code", "ability": "code", "tests": CODE_TESTS, "entry_point": "add_one",
         "messages": user(CODE_PROMPT)},
        {"id": "g1", "source": "general", "ability": "general", "instruction_ids": ["punctuation:no_comma"],
         "kwargs": [{}], "messages": user("Write about the sea. Do not use any commas.")},
    ]
    backend = ScriptedBackend({
        "2 + 3?": ["#### 4", "2 + 3 = 5\n#### 5", "#### 6"],
        "3 + 4?": ["#### 7", "3 + 4 = 7\n#### 7", "#### 7"],  # every answer right: a tie, no pair
        CODE_PROMPT: ["    return nums\n", "    return [x + 1 for x in nums]\n", "    return None\n"],
        "Write about the sea. Do not use any commas.": ["The sea, wide.", "The sea is wide.", "Sea, sea, sea."],
    })
    pairs, counts = on_policy_pairs(backend, examples, n=3, temperature=0.7, top_p=0.9, max_new_tokens=32, seed=3)
    assert counts == {"prompts": 4, "pairs": 3, "ties": 1}
    assert backend.calls == [{"max_new_tokens": 32, "temperature": 0.7, "top_p": 0.9, "seed": 3}]
    by_id = {p["id"]: p for p in pairs}
    assert (by_id["m1/on-policy"]["chosen"], by_id["m1/on-policy"]["rejected"]) == ("2 + 3 = 5\n#### 5", "#### 4")
    assert by_id["m1/on-policy"]["messages"] == user("2 + 3?")  # the SFT answer is not part of the prompt
    code = by_id["c1/on-policy"]  # passes the sandboxed tests vs fails them (the first failing answer)
    assert (code["chosen"], code["rejected"]) == ("    return [x + 1 for x in nums]\n", "    return nums\n")
    general = by_id["g1/on-policy"]
    assert (general["chosen"], general["rejected"], general["chosen_score"]) == ("The sea is wide.", "The sea, wide.",
                                                                                  1.0)
    assert all(p["ability"] == "preference" and p["weight"] == 1.0 for p in pairs)


def test_unknown_ability_needs_a_score_fn():
    backend = ScriptedBackend({"hi": ["a", "b"]})
    example = {"id": "k", "ability": "knowledge", "messages": user("hi")}
    with pytest.raises(ValueError, match="no scorer for ability 'knowledge'"):
        on_policy_pairs(backend, [example], n=2)
    pairs, counts = on_policy_pairs(ScriptedBackend({"hi": ["a", "bbb"]}), [example], n=2,
                                    score_fn=lambda exs, answers: [[-len(a) for a in g] for g in answers])
    assert (pairs[0]["chosen"], pairs[0]["rejected"]) == ("a", "bbb") and counts["ties"] == 0


def test_sampling_a_real_model_is_seeded_and_its_pairs_train_dpo(tmp_path, base_dir):
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    tokenizer = load_tokenizer(base_dir)
    backend = HFBackend(model, tokenizer, "tokenizer", batch_size=8, progress=False)
    prompts = [user(f"what is the answer {i}?") for i in range(4)]
    first = sample_answers(backend, prompts, 3, temperature=1.0, max_new_tokens=6, seed=11)
    assert sample_answers(backend, prompts, 3, temperature=1.0, max_new_tokens=6, seed=11) == first
    assert [len(g) for g in first] == [3, 3, 3, 3] and len({a for g in first for a in g}) > 4
    examples = [{"id": f"q{i}", "source": "q", "messages": p} for i, p in enumerate(prompts)]

    def shortest(exs, answers):  # a toy preference: shorter is better
        return [[-len(a) for a in g] for g in answers]

    pairs, counts = on_policy_pairs(backend, examples, n=3, score_fn=shortest, temperature=1.0, max_new_tokens=6,
                                    seed=11)
    assert counts["pairs"] + counts["ties"] == 4 and pairs
    recipe = Recipe.model_validate({"name": "op", "train": {"max_steps": 2, "batch_size": 4, "bf16": False,
                                                            "warmup_ratio": 0.0, "log_every": 1}})
    ctx = StageContext(recipe=recipe, name="dpo", kind="dpo", model=model, tokenizer=tokenizer, examples=pairs,
                       folder=tmp_path / "dpo", run_dir=tmp_path, log=lambda *_: None)
    result = dpo.run_stage(ctx)
    assert result.finished and result.n_examples == len(pairs) and "rewards/margin" in result.metrics
