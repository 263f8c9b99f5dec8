"""TensorBoard events of a run, read back with tensorboard's own reader: the training loss per step, each stage's
ability scores at the stage's last step of the run (steps continue across stages), and stage-kind metrics."""

from __future__ import annotations

import json

import pytest
import stage_probe
from conftest import chat_examples
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mixtune.config import Recipe
from mixtune.train import run as run_module
from mixtune.train import stages as stages_module


@pytest.fixture()
def files(tmp_path):
    out = {}
    for name, seed in (("math", 1), ("code", 2), ("prefs", 3)):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"messages": ex["messages"]}) + "\n"
                                for ex in chat_examples(16, seed=seed, source=name)))
        out[name] = str(path)
    return out


def test_events_hold_loss_scores_and_stage_metrics_on_one_step_axis(tmp_path, base_dir, files, monkeypatch):
    monkeypatch.setitem(stages_module.STAGE_KINDS, "probe", "stage_probe:run_stage")
    stage_probe.SEEN.clear()
    scores = iter([0.25, 0.75])  # the scorer is tested elsewhere: a fixed one keeps this test about the events
    monkeypatch.setattr(run_module, "evaluate_abilities",
                        lambda ctx: {"toy": {"accuracy": next(scores), "n": 4, "backend": "hf"}})
    recipe = Recipe.model_validate({
        "name": "r", "out_dir": str(tmp_path / "run"), "model": {"path": str(base_dir)},
        "data": {"sources": [{"name": "math", "path": files["math"], "ability": "math"},
                             {"name": "code", "path": files["code"], "ability": "code"},
                             {"name": "prefs", "path": files["prefs"], "ability": "preference"}]},
        "strategy": {"name": "multi_task", "then": [{"name": "probe", "kind": "probe", "sources": ["prefs"]}]},
        "train": {"lr": 5e-3, "batch_size": 8, "bf16": False, "epochs": 1, "warmup_ratio": 0.0, "log_every": 1,
                  "tensorboard": True}})
    run_module.train(recipe, log=lambda _: None, tensorboard_dir=tmp_path / "study" / "tensorboard" / "r")

    events = EventAccumulator(str(tmp_path / "study" / "tensorboard" / "r"))
    events.Reload()
    metrics = [json.loads(line) for line in (recipe.run_dir / "stages" / "0-multi_task" / "metrics.jsonl").open()]
    want_loss = {r["step"]: r["loss"] for r in metrics if "loss" in r}
    assert sorted(want_loss) == [1, 2, 3, 4]  # 32 examples (math + code) / 8 per step
    assert {e.step: round(e.value, 5) for e in events.Scalars("loss")} == {
        k: round(v, 5) for k, v in want_loss.items()}
    # scores after stage 1 (step 4) and after the probe stage (1 step more: step 5)
    assert [(e.step, e.value) for e in events.Scalars("score/toy/accuracy")] == [(4, 0.25), (5, 0.75)]
    assert [(e.step, e.value) for e in events.Scalars("score/toy/n")] == [(4, 4.0), (5, 4.0)]
    assert [(e.step, e.value) for e in events.Scalars("probe/seen")] == [(5, 16.0)]  # StageResult.metrics
    assert "score/toy/backend" not in events.Tags()["scalars"]  # text values are not scalars
    assert not (recipe.run_dir / "tensorboard").exists()  # everything went to the folder it was given


def test_a_dpo_stage_writes_into_the_runs_tensorboard_after_the_sft_steps(tmp_path, base_dir, files, monkeypatch):
    from conftest import pair_examples

    monkeypatch.setattr(run_module, "evaluate_abilities", lambda ctx: {})
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in pair_examples(16)))
    recipe = Recipe.model_validate({
        "name": "r", "out_dir": str(tmp_path / "run"), "model": {"path": str(base_dir)},
        "data": {"sources": [{"name": "math", "path": files["math"], "ability": "math"},
                             {"name": "code", "path": files["code"], "ability": "code"},
                             {"name": "prefs", "path": str(pairs), "ability": "preference"}]},
        "strategy": {"name": "multi_task", "then": [{"name": "dpo", "kind": "dpo", "sources": ["prefs"],
                                                     "overrides": ["train.max_steps=2"]}]},
        "train": {"lr": 5e-3, "batch_size": 8, "bf16": False, "epochs": 1, "warmup_ratio": 0.0, "log_every": 1,
                  "tensorboard": True}})
    run_module.train(recipe, log=lambda _: None, tensorboard_dir=tmp_path / "study" / "tensorboard" / "r")
    events = EventAccumulator(str(tmp_path / "study" / "tensorboard" / "r"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3, 4, 5, 6]  # SFT's 4 steps, then DPO's 2 after them
    assert not list((recipe.run_dir / "stages").glob("*/events.out.tfevents.*"))  # none beside the stage's metrics
