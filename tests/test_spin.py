"""The `spin` stage: pairs chosen = y_real, rejected = y_gen (identical ones skipped, counted); iteration t trains on
the pairs of t and t−1; end to end from a recipe (SFT → SPIN, full fine-tuning and LoRA), saved, reloaded,
evaluated; a kill in the second iteration resumes at that iteration and step, on the saved pairs (not sampled
again), to the same losses as a straight run."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import chat_examples
from transformers import AutoModelForCausalLM

from mixtune.config import Recipe, RecipeError
from mixtune.model.load import load_checkpoint
from mixtune.train import spin
from mixtune.train.run import train


def chat(i: int, question: str, reply: str, **extra) -> dict:
    return {"id": f"c/{i}", "source": "c", "ability": "math", "messages": [
        {"role": "user", "content": question}, {"role": "assistant", "content": reply}], **extra}


def test_spin_pairs_real_vs_generated_and_identical_answers_are_skipped():
    chats = [chat(0, "2 + 3?", "#### 5", answer="5"), chat(1, "1 + 1?", "#### 2", answer="2")]
    pairs, identical = spin.spin_pairs(chats, ["#### 6", " #### 2 "], t=1)
    assert identical == ["c/1"]  # y_gen equal to y_real (up to spaces): no pair
    (p,) = pairs
    assert (p["chosen"], p["rejected"], p["id"], p["iteration"]) == ("#### 5", "#### 6", "c/0/spin1", 1)
    assert p["messages"] == [{"role": "user", "content": "2 + 3?"}] and p["answer"] == "5"
    assert spin.generated_correct(chats, ["#### 5", "#### 3"]) == 0.5  # GSM8K rule on y_gen


def test_iteration_t_trains_on_the_pairs_of_t_and_t_minus_1_only():
    by_iter = {t: [{"id": f"p{t}/{k}"} for k in range(2)] for t in range(3)}
    assert spin.training_pairs(by_iter[0], None) == by_iter[0]
    assert [p["id"] for p in spin.training_pairs(by_iter[2], by_iter[1])] == ["p1/0", "p1/1", "p2/0", "p2/1"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    out = {}
    for name, seed in (("sft", 4), ("spin", 5)):
        out[name] = root / f"{name}.jsonl"
        out[name].write_text("".join(json.dumps({"messages": ex["messages"]}) + "\n"
                                     for ex in chat_examples(12, seed=seed)))
    bench = root / "world" / "bench"
    bench.mkdir(parents=True)
    bench.joinpath("math_test.jsonl").write_text("".join(json.dumps(
        {"task_id": f"minilab_math/{i}", "question": f"What is {i} + 1?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"})
        + "\n" for i in range(2)))
    return {k: str(v) for k, v in out.items()} | {"world": str(root / "world")}


def tree(root, base_dir, files, **extra) -> dict:
    out = {"name": "s", "out_dir": str(root / "run"), "model": {"path": str(base_dir)},
           "data": {"sources": [{"name": "sft", "path": files["sft"], "ability": "general"},
                                {"name": "spin", "path": files["spin"], "ability": "general"}]},
           "train": {"lr": 5e-3, "batch_size": 4, "bf16": False, "epochs": 1, "warmup_ratio": 0.0, "log_every": 1,
                     "save_every": 1},
           "preference": {"max_new_tokens": 8, "spin_iterations": 2},
           "eval": {"batch_size": 12},
           "strategy": {"name": "multi_task", "then": [{"name": "spin", "kind": "spin", "sources": ["spin"]}]}}
    out.update(extra)
    return out


def spin_losses(recipe) -> dict[int, float]:
    path = recipe.run_dir / "stages/1-spin/metrics.jsonl"
    return {row["step"]: row["loss"] for row in map(json.loads, path.read_text().splitlines()) if "loss" in row}


def test_spin_from_a_recipe_two_iterations_saved_reloaded_and_evaluated(tmp_path, base_dir, files):
    recipe = Recipe.model_validate(tree(tmp_path, base_dir, files, eval={
        "benchmarks": ["minilab_math"], "world_dir": files["world"], "max_new_tokens": 4}))
    summary = train(recipe)
    stage = summary["stages"][1]
    assert (stage["name"], stage["kind"]) == ("spin", "spin")
    folder = recipe.run_dir / "stages/1-spin"
    pairs = [[json.loads(x) for x in (folder / f"iter-{t}/pairs.jsonl").read_text().splitlines()] for t in (0, 1)]
    assert all(len(p) == 12 for p in pairs)  # a random model never reproduces y_real
    assert all(p["chosen"] == ex["messages"][-1]["content"] for p, ex in zip(pairs[0], chat_examples(12, seed=5)))
    records = [json.loads((folder / f"iter-{t}/stage.json").read_text()) for t in (0, 1)]
    assert [r["n_examples"] for r in records] == [12, 24]  # iteration 1: its own pairs and iteration 0's
    assert [r["steps"] for r in records] == [3, 6] and stage["steps"] == 9
    metrics = stage["metrics"]
    assert metrics["iter0/pairs"] == metrics["iter1/pairs"] == 12 and "iter1/rewards/accuracy" in metrics
    assert sorted(spin_losses(recipe)) == list(range(1, 10))  # the stage's loss curve runs over both iterations
    assert not (folder / "iter-0/checkpoints").exists()  # a finished iteration keeps its end weights only
    assert set(summary["scores"]["spin"]) == {"minilab_math"}
    final = recipe.run_dir / "final"
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        plain = AutoModelForCausalLM.from_pretrained(final)(input_ids=ids).logits
        assert torch.allclose(plain, load_checkpoint(final)(input_ids=ids).logits)


@pytest.mark.parametrize("adapter", ["none", "lora"])
def test_spin_killed_in_its_second_iteration_resumes_there_on_the_saved_pairs(tmp_path, base_dir, files, adapter,
                                                                               monkeypatch):
    sampled = []
    real = spin.sample_iteration
    monkeypatch.setattr(spin, "sample_iteration", lambda ctx, chats, t: sampled.append(t) or real(ctx, chats, t))

    def recipe(name):
        return Recipe.model_validate(tree(tmp_path / name, base_dir, files,
                                          adapter={"type": adapter, "r": 4, "alpha": 8}))

    straight = recipe("straight")
    train(straight)
    assert sampled == [0, 1]
    killed = recipe("killed")
    sampled.clear()
    assert train(killed, stop_at_step=5).get("stopped")  # SFT: 3 steps; SPIN: 3 in iteration 0, 2 of 6 in 1
    assert sampled == [0, 1]
    folder = killed.run_dir / "stages/1-spin"
    assert (folder / "iter-0/weights.safetensors").exists() and not (folder / "iter-1/weights.safetensors").exists()
    train(killed, resume=True)
    assert sampled == [0, 1]  # the resume trained on the saved pairs: nothing sampled again
    assert spin_losses(killed) == pytest.approx(spin_losses(straight), abs=1e-6)


def test_spin_with_a_base_reference_is_refused_before_the_run_folder_exists(tmp_path, base_dir, files):
    bad = tree(tmp_path, base_dir, files, adapter={"type": "lora", "r": 4, "alpha": 8})
    bad["strategy"]["then"][0]["overrides"] = ["preference.reference=base"]
    with pytest.raises(RecipeError, match="stage spin \\(spin\\): the reference of iteration t is the model as it "
                                          "starts"):
        train(Recipe.model_validate(bad))
    assert not (tmp_path / "run").exists()
