"""`mixtune train`: final checkpoints load with plain transformers / peft, strategies run their stages, resume."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import chat_examples
from transformers import AutoModelForCausalLM

from mixtune.config import Recipe, load_recipe
from mixtune.model.load import load_checkpoint
from mixtune.train.run import train


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    files = {}
    for ability, seed in (("code", 1), ("math", 2), ("general", 3)):
        path = root / f"{ability}.jsonl"
        with path.open("w") as f:
            for ex in chat_examples(24, seed=seed, ability=ability, source=ability):
                f.write(json.dumps({"messages": ex["messages"]}) + "\n")
        files[ability] = str(path)
    return files


def recipe_for(tmp_path, base_dir, data_files, **extra) -> Recipe:
    tree = {"name": "r", "out_dir": str(tmp_path / "run"), "model": {"path": str(base_dir)},
            "data": {"sources": [{"name": a, "path": p, "ability": a} for a, p in data_files.items()]},
            "train": {"lr": 5e-3, "batch_size": 8, "bf16": False, "epochs": 1, "warmup_ratio": 0.0, "log_every": 1}}
    tree.update(extra)
    return Recipe.model_validate(tree)


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_full_finetune_final_loads_with_transformers(tmp_path, base_dir, data_files):
    recipe = recipe_for(tmp_path, base_dir, data_files)
    train(recipe)
    final = recipe.run_dir / "final"
    plain = AutoModelForCausalLM.from_pretrained(final)
    ours = load_checkpoint(final)
    ids = torch.tensor([[5, 6, 7, 8]])
    assert torch.allclose(logits(plain, ids), logits(ours, ids))
    assert not torch.allclose(logits(plain, ids), logits(AutoModelForCausalLM.from_pretrained(base_dir), ids))
    manifest = json.loads((recipe.run_dir / "manifest.json").read_text())
    assert {k: v["drawn"] for k, v in manifest["sources"].items()} == {"code": 24, "math": 24, "general": 24}


def test_lora_final_loads_with_peft(tmp_path, base_dir, data_files):
    from peft import PeftModel

    recipe = recipe_for(tmp_path, base_dir, data_files, adapter={"type": "lora", "r": 4, "alpha": 8})
    train(recipe)
    final = recipe.run_dir / "final"
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), final / "adapter")
    ids = torch.tensor([[5, 6, 7, 8]])
    assert torch.allclose(logits(peft_model, ids), logits(load_checkpoint(final), ids))
    assert not (final / "model.safetensors").exists()  # only the adapter is saved


def test_dmt_runs_two_stages_with_replay(tmp_path, base_dir, data_files):
    recipe = recipe_for(tmp_path, base_dir, data_files, strategy={"name": "dmt", "k": 0.25})
    summary = train(recipe)
    assert [s["name"] for s in summary["stages"]] == ["specialized", "general"]
    stage2 = json.loads((recipe.run_dir / "stages" / "1-general" / "manifest.json").read_text())["drawn"]
    assert stage2["general"]["drawn"] == 24
    assert stage2["code (replay)"]["drawn"] == 6 and stage2["math (replay)"]["drawn"] == 6
    assert summary["stages"][0]["n_examples"] == 48 and summary["stages"][1]["n_examples"] == 36


def test_resume_loads_finished_stages_and_never_retrains_them(tmp_path, base_dir, data_files, monkeypatch):
    from safetensors.torch import load_file

    from mixtune.train import run as run_module

    recipe = recipe_for(tmp_path, base_dir, data_files, strategy={"name": "sequential"})
    first = train(recipe, stop_at_step=2)  # stage 1 (code, 3 steps) is interrupted
    assert first.get("stopped")
    done = train(recipe, resume=True)
    assert [s["name"] for s in done["stages"]] == ["code", "math", "general"]
    weights = {p.parent.name: p.read_bytes() for p in (recipe.run_dir / "stages").glob("*/stage_weights.safetensors")}
    final = load_file(recipe.run_dir / "final" / "model.safetensors")

    def no_training(kind):
        raise AssertionError(f"a finished stage was retrained ({kind})")

    monkeypatch.setattr(run_module, "stage_runner", no_training)  # any stage trained now fails the test
    lines = []
    again = train(recipe, resume=True, log=lines.append)
    assert [s["steps"] for s in again["stages"]] == [s["steps"] for s in done["stages"]]
    assert sum("already finished, weights loaded" in line for line in lines) == 3
    assert weights == {p.parent.name: p.read_bytes()
                       for p in (recipe.run_dir / "stages").glob("*/stage_weights.safetensors")}
    again_final = load_file(recipe.run_dir / "final" / "model.safetensors")
    assert all(torch.equal(final[k], again_final[k]) for k in final)  # the loaded stages give the same model


def test_every_shipped_recipe_loads():
    from pathlib import Path

    recipes = sorted(p for p in Path(__file__).resolve().parents[1].glob("recipes/**/*.yaml")
                     if p.parent.name != "accelerate")  # accelerate launcher configs: tests/test_distributed.py
    assert recipes, "no recipes shipped"
    for path in recipes:
        load_recipe(path)


def test_malformed_recipe_names_the_key_path(tmp_path):
    from mixtune.config import RecipeError

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntrain:\n  lr: -1\n  batch_sise: 4\ndata:\n  sources:\n    - {name: a, path: f, count: 0}\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(bad, ["model.hidden_size=abc"])
    text = str(err.value)
    for expected in ("bad.yaml: train.lr:", "bad.yaml: train.batch_sise: Extra inputs",
                     "bad.yaml: data.sources.0.count:", "bad.yaml: model.hidden_size:"):
        assert expected in text, text


def test_fresh_optimizer_false_carries_adam_moments_across_stages(tmp_path, base_dir, data_files):
    recipe = recipe_for(tmp_path, base_dir, data_files, strategy={"name": "sequential"})
    recipe = recipe.model_copy(update={"train": recipe.train.model_copy(update={"fresh_optimizer": False})})
    summary = train(recipe)
    steps = [s["steps"] for s in summary["stages"]]
    last = torch.load(recipe.run_dir / "stages" / "2-general" / "stage_optimizer.pt", weights_only=True)
    adam_steps = {float(v["step"]) for v in last["state"].values()}
    assert adam_steps == {float(sum(steps))}  # one AdamW step count across all three stages
    fresh = recipe_for(tmp_path / "fresh", base_dir, data_files, strategy={"name": "sequential"})
    train(fresh)
    assert not (fresh.run_dir / "stages" / "2-general" / "stage_optimizer.pt").exists()


def test_benchmarks_run_after_every_stage_and_every_n_steps(tmp_path, base_dir, data_files):
    from mixtune.results import ResultsDB

    bench = tmp_path / "world" / "bench"
    bench.mkdir(parents=True)
    bench.joinpath("math_test.jsonl").write_text("".join(
        json.dumps({"task_id": f"minilab_math/{i}", "question": f"What is {i} + 1?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"})
        + "\n" for i in range(3)))
    recipe = recipe_for(tmp_path, base_dir, data_files, strategy={"name": "sequential", "order": ["code", "math"]},
                        data={"sources": [{"name": a, "path": data_files[a], "ability": a} for a in ("code", "math")]},
                        eval={"benchmarks": ["minilab_math"], "world_dir": str(tmp_path / "world"),
                              "every_n_steps": 2, "subset": 2, "max_new_tokens": 8})
    summary = train(recipe)
    assert set(summary["scores"]) == {"code", "math"}  # forgetting is recorded stage by stage
    with ResultsDB(recipe.run_dir.parent / "results.sqlite") as db:
        rows = [r for r in db.rows() if r["run_id"] == recipe.run_dir.name and r["metric"] == "strict"]
    steps = sorted({(r["stage"], r["step"]) for r in rows})
    assert steps == [("code", -1), ("code", 2), ("math", -1), ("math", 2)]  # 3 steps per stage, eval at step 2


@pytest.mark.parametrize("strategy,expected", [
    ({"name": "multi_task"}, [10]),
    ({"name": "sequential"}, [4, 3, 3]),  # 24 : 24 : 24 examples, largest remainder to the first
    ({"name": "dmt", "k": 0.5}, [7, 3]),  # 48 : 24 distinct examples (the replayed 2 × 12 add no steps)
])
def test_a_step_budget_gives_every_strategy_the_same_total_steps(tmp_path, base_dir, data_files, strategy, expected):
    recipe = recipe_for(tmp_path, base_dir, data_files, strategy=strategy)
    recipe = recipe.model_copy(update={"train": recipe.train.model_copy(update={"step_budget": 10})})
    summary = train(recipe)
    assert [s["steps"] for s in summary["stages"]] == expected and sum(expected) == 10
