"""The `reward` stage end to end: a reward model from a recipe (full and LoRA), saved in the sequence-classification
layout and reloaded with plain transformers / peft, its rewards equal to the scorer's, held-out accuracy reported,
resume after a kill, a finished reward stage reloaded on resume, and `mixtune eval rank`."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import chat_examples, pair_examples
from transformers import AutoModelForSequenceClassification

from mixtune.config import Recipe
from mixtune.data.pair_dataset import tokenize_completion
from mixtune.evaluate.cli import main as eval_main
from mixtune.evaluate.reward_model import score_texts
from mixtune.model.load import load_checkpoint, load_tokenizer
from mixtune.train.run import train


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    chat = root / "chat.jsonl"
    chat.write_text("".join(json.dumps({"messages": ex["messages"]}) + "\n" for ex in chat_examples(16, seed=4)))
    prefs = root / "prefs.jsonl"
    prefs.write_text("".join(json.dumps({k: ex[k] for k in ("messages", "chosen", "rejected")}) + "\n"
                             for ex in pair_examples(40, seed=6)))
    return {"chat": str(chat), "prefs": str(prefs)}


def tree(tmp_path, base_dir, files, **extra) -> dict:
    out = {"name": "rm", "out_dir": str(tmp_path / "run"), "model": {"path": str(base_dir)},
           "data": {"sources": [{"name": "prefs", "path": files["prefs"], "eval_count": 8}]},
           "train": {"lr": 1e-2, "batch_size": 8, "bf16": False, "warmup_ratio": 0.0, "log_every": 1},
           "preference": {"reward_epochs": 3},
           "strategy": {"name": "stages", "stages": [{"name": "rm", "kind": "reward", "sources": ["prefs"]}]}}
    out.update(extra)
    return out


def conversations(examples: list[dict]) -> list[list[dict]]:
    return [[*ex["messages"], {"role": "assistant", "content": ex[key]}] for ex in examples
            for key in ("chosen", "rejected")]


def plain_rewards(model, tokenizer, convs) -> list[float]:
    """The reward `AutoModelForSequenceClassification` computes for each conversation alone (no padding)."""
    out = []
    with torch.no_grad():
        for conv in convs:
            prompt, answer = tokenize_completion(conv[:-1], conv[-1]["content"], tokenizer, "tokenizer")
            out.append(float(model(input_ids=torch.tensor([prompt + answer])).logits[0, 0]))
    return out


@pytest.fixture(scope="module")
def reward_run(tmp_path_factory, base_dir, files):
    root = tmp_path_factory.mktemp("rm")
    recipe = Recipe.model_validate(tree(root, base_dir, files, eval={"benchmarks": ["minilab_math"]}))
    return recipe, train(recipe)


def test_reward_run_saves_a_sequence_classification_model_that_learned(reward_run, base_dir):
    recipe, summary = reward_run
    (stage,) = summary["stages"]
    assert stage["kind"] == "reward" and stage["steps"] == 12 and stage["n_examples"] == 32  # 3 epochs of 32 pairs
    assert stage["scores"] == {}  # a reward model has no generation benchmark to run
    metrics = stage["metrics"]
    assert metrics["reward/accuracy"] >= 0.9 and metrics["eval/prefs/reward/accuracy"] >= 0.75  # held-out pairs
    final = recipe.run_dir / "final"
    plain = AutoModelForSequenceClassification.from_pretrained(final)
    assert plain.config.num_labels == 1 and plain.config.pad_token_id == load_tokenizer(base_dir).pad_token_id
    tokenizer = load_tokenizer(final)
    convs = conversations(pair_examples(6, seed=99))
    ours = score_texts(load_checkpoint(final), tokenizer, convs, batch_size=4)  # padded batches
    assert ours == pytest.approx(plain_rewards(plain, tokenizer, convs), abs=1e-5)
    assert sum(ours[0::2][i] > ours[1::2][i] for i in range(6)) >= 5  # chosen ("yes ...") preferred on new pairs


def test_eval_rank_picks_the_highest_reward_sample_per_task(reward_run, tmp_path, capsys):
    recipe, _ = reward_run
    samples = tmp_path / "samples.jsonl"
    rows = [{"task_id": f"t{i}", "sample_idx": k, "messages": ex["messages"], "completion": ex[key]}
            for i, ex in enumerate(pair_examples(5, seed=98)) for k, key in enumerate(("rejected", "chosen"))]
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out, best = tmp_path / "ranked.jsonl", tmp_path / "best.jsonl"
    assert eval_main(["rank", "--reward-model", str(recipe.run_dir / "final"), "--samples", str(samples),
                      "--out", str(out), "--best", str(best)]) == 0
    ranked = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["task_id"] for r in ranked] == [r["task_id"] for r in rows]
    assert sorted(r["reward_rank"] for r in ranked if r["task_id"] == "t0") == [1, 2]
    picked = [json.loads(line) for line in best.read_text().splitlines()]
    assert [r["task_id"] for r in picked] == [f"t{i}" for i in range(5)]
    assert sum(r["completion"].startswith("yes") for r in picked) >= 4
    assert "10 samples over 5 task ids" in capsys.readouterr().out


def test_lora_reward_after_sft_loads_with_peft_and_a_finished_stage_reloads_on_resume(tmp_path, base_dir, files):
    from peft import PeftModel

    recipe = Recipe.model_validate(tree(
        tmp_path, base_dir, files, adapter={"type": "lora", "r": 4, "alpha": 8},
        data={"sources": [{"name": "chat", "path": files["chat"], "ability": "general"},
                          {"name": "prefs", "path": files["prefs"], "eval_count": 8}]},
        strategy={"name": "multi_task", "then": [{"name": "rm", "kind": "reward", "sources": ["prefs"]}]}))
    summary = train(recipe)
    assert [s["kind"] for s in summary["stages"]] == ["sft", "reward"]
    final = recipe.run_dir / "final"
    meta = json.loads((final / "mixtune_model.json").read_text())
    assert meta["adapter"] == "lora" and meta["head"] == "sequence_classification"
    base = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=1)
    peft_model = PeftModel.from_pretrained(base, final / "adapter")
    tokenizer = load_tokenizer(final)
    convs = conversations(pair_examples(4, seed=97))
    expected = plain_rewards(peft_model, tokenizer, convs)
    assert score_texts(load_checkpoint(final), tokenizer, convs) == pytest.approx(expected, abs=1e-5)
    lines = []
    train(recipe, resume=True, log=lines.append)  # both stages finished: rebuilt, weights loaded, final re-saved
    assert sum("already finished, weights loaded" in line for line in lines) == 2
    assert score_texts(load_checkpoint(final), tokenizer, convs) == pytest.approx(expected, abs=1e-5)


def test_reward_stage_resumes_after_a_kill_to_the_same_next_losses(tmp_path, base_dir, files):
    def losses(r):
        path = r.run_dir / "stages/0-rm/metrics.jsonl"
        return {row["step"]: row["loss"] for row in map(json.loads, path.read_text().splitlines()) if "loss" in row}

    extra = {"train": {"lr": 1e-2, "batch_size": 8, "bf16": False, "warmup_ratio": 0.0, "log_every": 1,
                       "save_every": 1}}
    straight = Recipe.model_validate(tree(tmp_path / "a", base_dir, files, **extra))
    train(straight)
    killed = Recipe.model_validate(tree(tmp_path / "b", base_dir, files, **extra))
    assert train(killed, stop_at_step=5).get("stopped")
    train(killed, resume=True)
    assert sorted(losses(straight)) == list(range(1, 13))
    assert losses(killed) == pytest.approx(losses(straight), abs=1e-6)
