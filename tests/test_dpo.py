"""The `dpo` stage end to end from recipes: SFT → DPO with full fine-tuning and LoRA, saved, reloaded with plain
transformers / peft, evaluated after every stage; resume after a kill gives the same next losses; preference stages
are checked before the run folder exists."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import chat_examples, pair_examples
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from mixtune.config import Recipe, RecipeError
from mixtune.model.load import load_checkpoint
from mixtune.results import ResultsDB
from mixtune.train.run import train


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    chat = root / "chat.jsonl"
    chat.write_text("".join(json.dumps({"messages": ex["messages"]}) + "\n" for ex in chat_examples(16, seed=4)))
    prefs = root / "prefs.jsonl"
    prefs.write_text("".join(json.dumps({k: ex[k] for k in ("messages", "chosen", "rejected")}) + "\n"
                             for ex in pair_examples(28, seed=5, chosen="no", rejected="yes")))
    bench = root / "world" / "bench"
    bench.mkdir(parents=True)
    bench.joinpath("math_test.jsonl").write_text("".join(json.dumps(
        {"task_id": f"minilab_math/{i}", "question": f"What is {i} + 1?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"})
        + "\n" for i in range(2)))
    return {"chat": str(chat), "prefs": str(prefs), "world": str(root / "world")}


def tree(tmp_path, base_dir, files, **extra) -> dict:
    out = {"name": "d", "out_dir": str(tmp_path / "run"), "model": {"path": str(base_dir)},
           "data": {"sources": [{"name": "chat", "path": files["chat"], "ability": "general"},
                                {"name": "prefs", "path": files["prefs"], "eval_count": 4}]},
           "train": {"lr": 5e-3, "batch_size": 8, "bf16": False, "epochs": 1, "warmup_ratio": 0.0, "log_every": 1},
           "strategy": {"name": "multi_task", "then": [{"name": "dpo", "kind": "dpo", "sources": ["prefs"],
                                                        "overrides": ["preference.beta=0.2", "train.epochs=2"]}]}}
    out.update(extra)
    return out


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_sft_then_dpo_from_a_recipe_saves_reloads_and_evaluates(tmp_path, base_dir, files):
    recipe = Recipe.model_validate(tree(tmp_path, base_dir, files, eval={
        "benchmarks": ["minilab_math"], "world_dir": files["world"], "max_new_tokens": 4}))
    summary = train(recipe, db_path=tmp_path / "results.sqlite")
    assert [(s["name"], s["kind"]) for s in summary["stages"]] == [("multi_task", "sft"), ("dpo", "dpo")]
    dpo = summary["stages"][1]
    assert dpo["n_examples"] == 24 and dpo["steps"] == 6  # 28 pairs - 4 held out, 2 epochs of batches of 8
    metrics = dpo["metrics"]
    assert {"loss", "rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy",
            "eval/prefs/loss", "eval/prefs/rewards/accuracy"} <= set(metrics)
    assert metrics["rewards/margin"] == pytest.approx(metrics["rewards/chosen"] - metrics["rewards/rejected"])
    assert set(summary["scores"]["dpo"]) == {"minilab_math"}  # abilities scored after the DPO stage too
    rows = [json.loads(line) for line in (recipe.run_dir / "stages/1-dpo/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "rewards/accuracy" in r] == [1, 2, 3, 4, 5, 6]
    with ResultsDB(tmp_path / "results.sqlite") as db:
        stored = {r["name"] for r in db.metrics(recipe.run_dir.name) if r["stage"] == "dpo"}
    assert "rewards/accuracy" in stored and "eval/prefs/rewards/margin" in stored
    manifest = json.loads((recipe.run_dir / "manifest.json").read_text())["sources"]["prefs"]
    assert manifest["drawn"] == manifest["trained"] == 24 and manifest["tokens"] > manifest["target_tokens"] > 0
    final = recipe.run_dir / "final"
    ids = torch.tensor([[5, 6, 7, 8]])
    plain = AutoModelForCausalLM.from_pretrained(final)
    assert torch.allclose(logits(plain, ids), logits(load_checkpoint(final), ids))
    sft = AutoModelForCausalLM.from_pretrained(base_dir)
    sft.load_state_dict(load_file(recipe.run_dir / "stages/0-multi_task/stage_weights.safetensors"), strict=False)
    assert not torch.allclose(logits(plain, ids), logits(sft, ids))  # DPO moved the SFT model


def test_lora_dpo_adapter_loads_with_peft(tmp_path, base_dir, files):
    from peft import PeftModel

    recipe = Recipe.model_validate(tree(tmp_path, base_dir, files, adapter={"type": "lora", "r": 4, "alpha": 8}))
    summary = train(recipe)
    assert summary["stages"][1]["metrics"]["rewards/accuracy"] > 0
    final = recipe.run_dir / "final"
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), final / "adapter")
    ids = torch.tensor([[5, 6, 7, 8]])
    assert torch.allclose(logits(peft_model, ids), logits(load_checkpoint(final), ids))
    assert not (final / "model.safetensors").exists()


@pytest.mark.parametrize("adapter", ["none", "lora"])
def test_dpo_resumes_after_a_kill_to_the_same_next_losses(tmp_path, base_dir, files, adapter):
    def recipe(name):
        return Recipe.model_validate(tree(
            tmp_path / name, base_dir, files, adapter={"type": adapter, "r": 4, "alpha": 8},
            train={"lr": 5e-3, "batch_size": 4, "bf16": False, "epochs": 1, "warmup_ratio": 0.0, "log_every": 1,
                   "save_every": 1},
            strategy={"name": "stages", "stages": [{"name": "dpo", "kind": "dpo", "sources": ["prefs"]}]}))

    def losses(r):
        path = r.run_dir / "stages/0-dpo/metrics.jsonl"
        return {row["step"]: row["loss"] for row in map(json.loads, path.read_text().splitlines()) if "loss" in row}

    straight = recipe("straight")
    train(straight)
    killed = recipe("killed")
    assert train(killed, stop_at_step=3).get("stopped")
    train(killed, resume=True)
    expected = losses(straight)
    assert sorted(expected) == list(range(1, 7))
    assert losses(killed) == pytest.approx(expected, abs=1e-6)  # steps 4..6 after the resume included


def test_preference_stages_are_checked_before_the_run_folder_exists(tmp_path, base_dir, files):
    bad_source = tree(tmp_path, base_dir, files)
    bad_source["strategy"]["then"][0]["sources"] = ["chat"]
    bad_source["strategy"]["then"].append({"name": "dpo2", "kind": "dpo", "sources": ["prefs"]})
    with pytest.raises(RecipeError, match="stage dpo \\(dpo\\) needs preference pairs, but source chat has 16 "
                                          "records without chosen/rejected"):
        train(Recipe.model_validate(bad_source))
    pairs_in_sft = tree(tmp_path, base_dir, files, strategy={"name": "multi_task"})
    with pytest.raises(RecipeError, match="stage multi_task \\(sft\\) trains conversations, but source prefs holds "
                                          "24 preference pairs"):
        train(Recipe.model_validate(pairs_in_sft))
    base_ref = tree(tmp_path, base_dir, files)
    base_ref["strategy"]["then"][0]["overrides"] = ["preference.reference=base"]
    with pytest.raises(RecipeError, match="preference.reference base disables a peft adapter"):
        train(Recipe.model_validate(base_ref))
    assert not (tmp_path / "run").exists()
