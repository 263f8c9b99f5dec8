"""Self-rewarding: the judge prompt and its score parsing (invalid outputs counted), judging several times and
averaging, best-vs-worst pairs with ties skipped, the judge's agreement with the scorers (hand-worked), EFT records,
and the `self_reward` stage end to end from a recipe: saved, reloaded, evaluated, resumed after a kill in its
second iteration without judging again."""

from __future__ import annotations

import itertools
import json
import re

import pytest
import torch
from transformers import AutoModelForCausalLM

from mixtune.config import Recipe
from mixtune.model.load import load_checkpoint
from mixtune.train import self_reward
from mixtune.train.run import train
from mixtune.train.self_judge import (
    JUDGE_PROMPT,
    agreement,
    eft_from_pairs,
    judge_answers,
    judge_conversation,
    parse_score,
    self_reward_pairs,
    spearman,
)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


class ScriptedJudge:
    """A generator whose answers cycle through `answers[question]` and whose judgements come from `verdict(response)`
    (a cycle of texts per response), as the model would write them."""

    name = "scripted"

    def __init__(self, answers: dict[str, list[str]], verdicts: dict[str, list[str]]):
        self.answers = {k: itertools.cycle(v) for k, v in answers.items()}
        self.verdicts = {k: itertools.cycle(v) for k, v in verdicts.items()}
        self.judged = 0

    def chat(self, conversations, **kwargs):
        out = []
        for conv in conversations:
            text = conv[-1]["content"]
            found = re.search(r"<response>(.*)</response>", text, re.DOTALL)
            if found and text.startswith(JUDGE_PROMPT[:40]):
                self.judged += 1
                out.append(next(self.verdicts[found.group(1)]))
            else:
                out.append(next(self.answers[text]))
        return out


def test_judge_prompt_is_the_papers_and_values_go_in_verbatim():
    text = judge_conversation([*user("first"), {"role": "assistant", "content": "x"}, *user("f({response})")],
                              "a {instruction} b")[0]["content"]
    assert text.startswith("Review the user's question and the corresponding response using the additive 5-point")
    assert "User: f({response})\n<response>a {instruction} b</response>" in text  # the last user turn, one pass
    assert '- Conclude with the score using the format: "Score: <total points>"' in text
    assert text.count("point") >= 5


@pytest.mark.parametrize(("text", "score"), [
    ("Relevant and complete.\nScore: 4", 4.0), ("Score: 4.", 4.0), ("Score: 2.5 points", 2.5),
    ("Score: 1\nOn reflection... Score: 3", 3.0),  # the last one counts
    ("no score here", None), ("Score: ...", None), ("Score: 1.2.3", None), ("Score: 7", None),  # outside 0..5
    ("score: 4", None),  # the format is "Score: <points>", case included
])
def test_score_parsing_with_invalid_outputs(text, score):
    assert parse_score(text) == score


def test_each_answer_judged_three_times_valid_judgements_averaged_invalid_counted():
    judge = ScriptedJudge({}, {"a": ["Score: 4", "Score: 5", "bad"], "b": ["x", "y", "z"], "c": ["Score: 1"]})
    scores, counts = judge_answers(judge, [user("q1"), user("q2")], [["a", "b"], ["c"]], 3, temperature=0.7,
                                   top_p=0.9, max_new_tokens=8, seed=0)
    assert scores == [[4.5, None], [1.0]]
    assert counts == {"judgements": 9, "invalid_judgements": 4, "unjudged_answers": 1}


def test_pairs_best_vs_worst_with_ties_and_unjudged_prompts_skipped_and_counted():
    examples = [{"id": f"p{i}", "source": "s", "messages": user(f"q{i}")} for i in range(4)]
    answers = [["a", "b", "c", "d"], ["e", "f"], ["g", "h", "i"], ["j", "k"]]
    scores = [[3.0, 5.0, None, 1.0], [2.0, 2.0], [4.0, None, None], [None, 0.5]]
    pairs, counts = self_reward_pairs(examples, answers, scores, tag="sr0")
    assert counts == {"ties": 1, "too_few_judged": 2}
    (p,) = pairs
    assert (p["id"], p["chosen"], p["rejected"], p["chosen_score"], p["rejected_score"]) == ("p0/sr0", "b", "d", 5, 1)


def test_agreement_pairwise_accuracy_and_spearman_hand_worked():
    # prompt 1: truth (1, 0, 0), judge (5, 3, 4): pairs with differing truth (0,1) agree, (0,2) agree -> 2/2;
    # prompt 2: truth (0, 1), judge (2, 2): a judge tie -> 1/2; prompt 3: (None, 3) unjudged -> left out.
    out = agreement([[5.0, 3.0, 4.0], [2.0, 2.0], [None, 3.0]], [[1, 0, 0], [0, 1], [0, 1]])
    assert out["pairs"] == 3 and out["pairwise_accuracy"] == pytest.approx(2.5 / 3)
    # Spearman of judge (5, 3, 4, 2, 2, 3) vs truth (1, 0, 0, 0, 1, 1): ranks (6, 3.5, 5, 1.5, 1.5, 3.5) vs
    # (5, 2, 2, 2, 5, 5), both of mean 3.5; centred products 3.75 + 0 − 2.25 + 3 − 3 + 0 = 1.5, sums of squares
    # 16.5 and 13.5 -> 1.5 / sqrt(222.75) = 0.1005
    assert out["answers"] == 6 and out["spearman"] == pytest.approx(1.5 / 222.75 ** 0.5, abs=1e-9)
    assert spearman([1, 2, 3], [3, 3, 3]) is None


def test_eft_records_judge_prompt_to_justified_score_from_the_scorers():
    pairs = [{"id": "m", "messages": user("3 + 4?"), "chosen": "3 + 4 = 7\n#### 7", "rejected": "#### 8",
              "answer": "7", "domain": "math"},
             {"id": "g", "messages": user("Write about rain. Do not use any commas. Answer in lowercase."),
              "chosen": "rain falls.", "rejected": "Rain, rain.", "domain": "general",
              "instruction_ids": ["punctuation:no_comma", "change_case:english_lowercase"], "kwargs": [{}, {}]}]
    records = eft_from_pairs(pairs)
    assert [r["id"] for r in records] == ["eft/m/0", "eft/m/1", "eft/g/0", "eft/g/1"]
    verdicts = [r["messages"][-1]["content"] for r in records]
    assert [v.rsplit("Score: ", 1)[1] for v in verdicts] == ["5", "0", "5", "0"]
    assert [parse_score(v) for v in verdicts] == [5.0, 0.0, 5.0, 0.0]  # what the judge learns, it can parse
    assert "follows 0 of the 2 instructions" in verdicts[3]
    assert records[1]["messages"][0] == judge_conversation(user("3 + 4?"), "#### 8")[0]


# ------------------------------------------------------------------------------------------- the stage, e2e
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from conftest import chat_examples

    root = tmp_path_factory.mktemp("data")
    sft = root / "sft.jsonl"
    sft.write_text("".join(json.dumps({"messages": ex["messages"]}) + "\n" for ex in chat_examples(8, seed=4)))
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"messages": [*user(f"What is {i} + 2?"), {
        "role": "assistant", "content": f"#### {i + 2}"}], "answer": str(i + 2)}) + "\n" for i in range(10)))
    return {"sft": str(sft), "prompts": str(prompts)}


def scripted(n_prompts: int = 10) -> ScriptedJudge:
    """Answers: right, wrong, right, wrong per prompt; the judge scores right 4 or 5 and wrong 1, one judgement in
    three unparsable."""
    answers, verdicts = {}, {}
    for i in range(n_prompts):
        right, wrong = f"{i} + 2 = {i + 2}\n#### {i + 2}", f"#### {i + 9}"
        answers[f"What is {i} + 2?"] = [right, wrong]
        verdicts[right] = ["Correct.\nScore: 5", "Score: 4", "I cannot say."]
        verdicts[wrong] = ["Wrong.\nScore: 1", "Score: 1", "no idea"]
    return ScriptedJudge(answers, verdicts)


def tree(root, base_dir, files) -> dict:
    return {"name": "sr", "out_dir": str(root / "run"), "model": {"path": str(base_dir)},
            "data": {"sources": [{"name": "sft", "path": files["sft"], "ability": "general"},
                                 {"name": "prompts", "path": files["prompts"], "ability": "math", "eval_count": 2}]},
            "train": {"lr": 5e-3, "batch_size": 4, "bf16": False, "epochs": 1, "warmup_ratio": 0.0,
                      "log_every": 1, "save_every": 1},
            "preference": {"max_new_tokens": 8, "self_reward_iterations": 2, "judge_eval_prompts": 2},
            "strategy": {"name": "multi_task", "then": [{"name": "sr", "kind": "self_reward",
                                                         "sources": ["prompts"]}]}}


def sr_losses(recipe) -> dict[int, float]:
    path = recipe.run_dir / "stages/1-sr/metrics.jsonl"
    return {row["step"]: row["loss"] for row in map(json.loads, path.read_text().splitlines()) if "loss" in row}


def test_self_reward_from_a_recipe_pairs_judge_agreement_saved_and_reloaded(tmp_path, base_dir, files,
                                                                            monkeypatch):
    judge = scripted()
    monkeypatch.setattr(self_reward, "make_backend", lambda ctx: judge)
    recipe = Recipe.model_validate(tree(tmp_path, base_dir, files))
    summary = train(recipe)
    stage = summary["stages"][1]
    assert (stage["name"], stage["kind"], stage["steps"]) == ("sr", "self_reward", 4)  # 8 pairs: 2 steps × 2
    metrics = stage["metrics"]
    for t in (0, 1):
        assert metrics[f"iter{t}/pairs"] == 8 and metrics[f"iter{t}/ties"] == 0  # 8 prompts (2 held out)
        assert metrics[f"iter{t}/invalid_judgements"] == 8 * 4 * 3 / 3  # every third judgement unparsable
        assert metrics[f"iter{t}/judge/train/pairwise_accuracy"] == 1.0  # right (4.5) over wrong (1) everywhere
        assert metrics[f"iter{t}/judge/heldout/pairwise_accuracy"] == 1.0 and metrics[f"iter{t}/answers_correct"] == 0.5
    pairs = [json.loads(x) for x in (recipe.run_dir / "stages/1-sr/iter-0/pairs.jsonl").read_text().splitlines()]
    assert all(p["chosen"].endswith(f"#### {p['answer']}") and p["chosen_score"] == 4.5 for p in pairs)
    rows = [json.loads(x) for x in (recipe.run_dir / "stages/1-sr/metrics.jsonl").read_text().splitlines()]
    assert {"iter0/judge/heldout/spearman", "iter1/judge/heldout/spearman"} <= {k for r in rows for k in r}
    final = recipe.run_dir / "final"
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        plain = AutoModelForCausalLM.from_pretrained(final)(input_ids=ids).logits
        assert torch.allclose(plain, load_checkpoint(final)(input_ids=ids).logits)


def test_self_reward_killed_in_its_second_iteration_resumes_without_judging_again(tmp_path, base_dir, files,
                                                                                  monkeypatch):
    judge = scripted()
    monkeypatch.setattr(self_reward, "make_backend", lambda ctx: judge)
    straight = Recipe.model_validate(tree(tmp_path / "a", base_dir, files))
    train(straight)
    killed = Recipe.model_validate(tree(tmp_path / "b", base_dir, files))
    assert train(killed, stop_at_step=3).get("stopped")  # SFT: 2 steps; self-rewarding: 2 + 1 of iteration 1
    judged = judge.judged
    train(killed, resume=True)
    assert judge.judged == judged  # iteration 1's pairs were saved before the kill: nothing judged again
    assert sr_losses(killed) == pytest.approx(sr_losses(straight), abs=1e-6)
