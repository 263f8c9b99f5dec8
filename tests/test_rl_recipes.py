"""The shipped RL recipes run: GRPO on the real GSM8K file with a local checkpoint (here the tiny test Llama, two
steps), scored by the benchmark's own rule before and after."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import SHARED_DATA, needs_data

from mixtune.config import load_recipe
from mixtune.train.run import train

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@needs_data
def test_grpo_gsm8k_two_step_dry_run(tmp_path, base_dir):
    recipe = load_recipe(RECIPES / "grpo-gsm8k.yaml", [
        f"model.path={base_dir}", f"out_dir={tmp_path / 'run'}", f"data.sources.0.path={SHARED_DATA}/gsm8k/train.jsonl",
        "data.sources.0.count=16", "data.max_seq_len=512",  # the tiny Llama's context (the recipe's 1024 is refused)
        "train.max_steps=2", "train.batch_size=2", "train.bf16=false", "train.save_every=1",
        "rl.n_samples=2", "rl.max_new_tokens=8", "rl.minibatches=2", "rl.rollout_batch_size=4",
        f"eval.data_dir={SHARED_DATA}", "eval.limit=2", "eval.max_new_tokens=8"])
    summary = train(recipe, log=lambda _: None)
    (stage,) = summary["stages"]
    assert stage["kind"] == "grpo" and stage["steps"] == 2 and stage["finished"]
    rows = [json.loads(x) for x in (tmp_path / "run" / "stages" / "0-grpo" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "reward_mean" in r]
    assert [r["step"] for r in steps] == [1, 2] and all(r["reward_mean"] in (0.0, 0.25, 0.5, 0.75, 1.0) for r in steps)
    assert all(r["reward_failures"] == 0 and "pass_rate" in r for r in steps)
    assert abs(steps[0]["kl"]) < 1e-4  # the first rollout comes from the reference itself
    assert summary["scores"]["grpo"]["gsm8k"]["n"] == 2  # the benchmark after the stage
    assert (tmp_path / "run" / "stages" / "0-grpo" / "checkpoints").is_dir()
