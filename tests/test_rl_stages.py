"""The RL stages end to end on a tiny Llama: the reward rises on a task it can learn (the share of one word in the
answer) for ppo and grpo with each reward source, RLOO / Dr. GRPO / weighted sums train, reward failures are counted
and never crash, code prompts train with CCCS and FGO in the sandbox, and a killed stage resumes to the same next
step (rollouts included)."""

from __future__ import annotations

import json

import pytest
import scripted_rollout
import torch
from conftest import chat_examples
from reward_server import RewardServer

from mixtune.config import Recipe
from mixtune.train.rollout import ROLLOUT_BACKENDS
from mixtune.train.run import train

CONTAINS = {"kind": "contains", "target": "apples"}


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("rl") / "prompts.jsonl"
    rows = chat_examples(32, seed=5)
    for i, ex in enumerate(rows):  # a gold answer too, so the task reward can score these prompts
        ex["answer"] = str(i % 10)
    path.write_text("".join(json.dumps({"messages": ex["messages"], "answer": ex["answer"]}) + "\n" for ex in rows))
    return path


def rl_tree(tmp_path, base_dir, prompts, kind="grpo", steps=30, rl=None, **train):
    return {"name": "rl", "out_dir": str(tmp_path / "run"), "model": {"path": str(base_dir)},
            "data": {"sources": [{"name": "p", "path": str(prompts)}]},
            "train": {"lr": 1e-2, "batch_size": 8, "bf16": False, "max_steps": steps, "warmup_ratio": 0.0,
                      "schedule": "constant", "log_every": 1, **train},
            "rl": {"n_samples": 4, "max_new_tokens": 8, "kl_coef": 0.0, "rewards": [CONTAINS], **(rl or {})},
            "strategy": {"name": "stages", "stages": [{"name": "rl", "kind": kind, "sources": ["p"]}]}}


def metrics(tmp_path) -> list[dict]:
    path = tmp_path / "run" / "stages" / "0-rl" / "metrics.jsonl"
    return [row for row in map(json.loads, path.read_text().splitlines()) if "reward_mean" in row]


def rise(rows: list[dict], n: int = 5) -> tuple[float, float]:
    rewards = [r["reward_mean"] for r in rows]
    return sum(rewards[:n]) / n, sum(rewards[-n:]) / n


LOGGED = {"reward_mean", "reward_std", "kl", "entropy", "clip_fraction", "response_length", "rollout_tokens_per_s",
          "update_tokens_per_s", "reward_failures", "loss", "lr", "step_s"}


def test_grpo_raises_a_learnable_reward(tmp_path, base_dir, prompts):
    summary = train(Recipe.model_validate(rl_tree(tmp_path, base_dir, prompts, rl={"kl_coef": 0.01})),
                    log=lambda _: None)
    rows = metrics(tmp_path)
    first, last = rise(rows)
    assert len(rows) == 30 and last > first + 0.3, (first, last)
    assert LOGGED <= set(rows[-1]) and rows[-1]["kl"] > 0  # the policy moved away from the reference
    stage = summary["stages"][0]
    assert stage["kind"] == "grpo" and stage["metrics"]["rl/reward_mean"] > stage["metrics"]["rl/reward_mean_first"]
    assert (tmp_path / "run" / "final" / "model.safetensors").exists()


@pytest.mark.slow
def test_ppo_raises_a_learnable_reward(tmp_path, base_dir, prompts):
    # Whitening would scale the critic's noise to unit variance in the many steps where no answer is rewarded (the
    # reward here is sparse at first): without it the few rewarded answers carry the update.
    tree = rl_tree(tmp_path, base_dir, prompts, kind="ppo", rl={"ppo_epochs": 2, "minibatches": 2, "kl_coef": 0.01,
                                                                 "adaptive_kl": True, "kl_target": 0.5,
                                                                 "whiten_advantages": False})
    summary = train(Recipe.model_validate(tree), log=lambda _: None)
    rows = metrics(tmp_path)
    first, last = rise(rows)
    assert last > first + 0.3, (first, last)
    assert {"value_loss", "kl_per_answer", "beta"} | LOGGED <= set(rows[-1])
    assert rows[-1]["beta"] != 0.01  # adapted
    assert 0 < summary["stages"][0]["metrics"]["rl/clip_fraction"] < 1  # several epochs: the ratio moves off 1


@pytest.mark.slow
def test_grpo_with_an_http_reward_rises_and_counts_failures(tmp_path, base_dir, prompts):
    with RewardServer(target="apples") as server:
        tree = rl_tree(tmp_path, base_dir, prompts, rl={"rewards": [{"kind": "http", "url": server.url}]})
        train(Recipe.model_validate(tree), log=lambda _: None)
        assert len(server.requests) == 30  # one request per step, all samples at once
    first, last = rise(metrics(tmp_path))
    assert last > first + 0.3, (first, last)


@pytest.mark.slow
def test_ppo_with_an_http_reward_in_a_weighted_sum_rises(tmp_path, base_dir, prompts):
    with RewardServer(target="apples") as server:
        tree = rl_tree(tmp_path, base_dir, prompts, kind="ppo", rl={
            "ppo_epochs": 2, "minibatches": 2, "kl_coef": 0.01, "whiten_advantages": False,
            "rewards": [{"kind": "http", "url": server.url}, {"kind": "task", "weight": 0.5}]})
        summary = train(Recipe.model_validate(tree), log=lambda _: None)
        assert len(server.requests) == 30  # one request per step, all samples at once
    rows = metrics(tmp_path)
    first, last = rise(rows)
    assert last > first + 0.2 and all("pass_rate" in r for r in rows), (first, last)  # the task reward's verdicts
    assert summary["stages"][0]["metrics"]["rl/reward_failures"] == 0


def test_rloo_dr_grpo_and_a_weighted_sum_with_the_task_reward(tmp_path, base_dir, prompts):
    tree = rl_tree(tmp_path, base_dir, prompts, steps=25, rl={
        "baseline": "rloo", "scale_rewards": "none", "loss_agg": "constant",
        "rewards": [CONTAINS, {"kind": "task", "weight": 0.5}]})
    summary = train(Recipe.model_validate(tree), log=lambda _: None)
    rows = metrics(tmp_path)
    first, last = rise(rows)
    assert last > first + 0.2 and all("pass_rate" in r for r in rows), (first, last)  # the task reward's verdicts
    assert summary["stages"][0]["metrics"]["rl/reward_failures"] == 0


def test_reward_failures_are_counted_or_dropped_never_fatal(tmp_path, base_dir, prompts):
    with RewardServer(broken=True) as server:
        for mode in ("zero", "drop"):
            tree = rl_tree(tmp_path / mode, base_dir, prompts, steps=2, rl={
                "failed_reward": mode, "rewards": [{"kind": "http", "url": server.url, "max_retries": 0}]})
            train(Recipe.model_validate(tree), log=lambda _: None)
            rows = metrics(tmp_path / mode)
            assert [r["reward_failures"] for r in rows] == [32.0, 32.0]
            assert [r["dropped_samples"] for r in rows] == ([0.0, 0.0] if mode == "zero" else [32.0, 32.0])
            assert all(r["reward_mean"] == 0.0 for r in rows)


@pytest.mark.parametrize("kind", ["grpo", "ppo"])
def test_resume_after_a_kill_reaches_the_same_next_step(tmp_path, base_dir, prompts, kind):
    rl = {"kl_coef": 0.05, "adaptive_kl": kind == "ppo", "kl_target": 0.5}
    whole = rl_tree(tmp_path / "whole", base_dir, prompts, kind=kind, steps=4, rl=rl, save_every=1)
    train(Recipe.model_validate(whole), log=lambda _: None)
    killed = rl_tree(tmp_path / "killed", base_dir, prompts, kind=kind, steps=4, rl=rl, save_every=1)
    assert train(Recipe.model_validate(killed), stop_at_step=2, log=lambda _: None).get("stopped")
    train(Recipe.model_validate(killed), resume=True, log=lambda _: None)
    a, b = metrics(tmp_path / "whole"), metrics(tmp_path / "killed")
    assert [r["step"] for r in b] == [1, 2, 3, 4]  # no duplicate rows from the killed run
    for key in ("reward_mean", "response_length", "loss", "kl"):  # same rollouts (seed restored), same update
        assert [r[key] for r in b[2:]] == pytest.approx([r[key] for r in a[2:]], rel=1e-4, abs=1e-6), key
    assert b[3].get("beta") == a[3].get("beta")


@pytest.mark.parametrize("kind", ["grpo", "ppo"])
def test_code_prompts_with_cccs_and_fgo_in_the_sandbox(tmp_path, base_dir, kind, monkeypatch):
    monkeypatch.setitem(ROLLOUT_BACKENDS, "scripted", "scripted_rollout:ScriptedRollout")
    scripted_rollout.GIVEN.clear()
    path = tmp_path / "code.jsonl"
    path.write_text("".join(json.dumps({
        "id": f"c/{i}", "ability": "code", "tests": scripted_rollout.TESTS, "entry_point": "add_total",
        "messages": [{"role": "user", "content": scripted_rollout.PROMPT},
                     {"role": "assistant", "content": scripted_rollout.BODY}]}) + "\n" for i in range(2)))
    tree = rl_tree(tmp_path, base_dir, path, kind=kind, steps=6, rl={
        "backend": "scripted", "n_samples": 2, "rewards": [{"kind": "task"}], "cccs": True,
        "cccs_split": "statement", "cccs_every": 2, "fgo": True}, batch_size=1)
    train(Recipe.model_validate(tree), log=lambda _: None)
    rows = metrics(tmp_path)
    # two split points (before `total = ...` and `return ...`): prefixes of 2 lines, 1 line, then the whole body
    assert [r["cccs_stage"] for r in rows] == [0.0, 0.0, 1.0, 1.0, 2.0, 2.0]
    lines = scripted_rollout.BODY.splitlines()
    assert scripted_rollout.GIVEN == [lines[0] + "\n" + lines[1]] * 2 + [lines[0]] * 2 + [""] * 2
    # the correct body passes (+1), the wrong one fails a test (-0.3): StepCoder's rewards, from the sandbox
    assert all(r["reward_mean"] == pytest.approx(0.35) and r["pass_rate"] == 0.5 for r in rows)
    # FGO: the wrong answer's `return 0` never runs; its tokens leave the loss (only generated tokens count)
    assert all(0.5 < r["fgo_kept"] < 1.0 for r in rows)
    assert rows[4]["fgo_kept"] > rows[0]["fgo_kept"]  # a longer answer: the masked line is a smaller share


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory, base_dir):
    """A reward model in the reward stage's layout: the tiny base's backbone with a seeded scalar head."""
    from mixtune.model.load import load_checkpoint, load_tokenizer
    from mixtune.model.reward_head import reward_model_from_causal
    from mixtune.train.save import save_final

    tok = load_tokenizer(base_dir)
    reward = reward_model_from_causal(load_checkpoint(base_dir), tok.pad_token_id, seed=3)
    with torch.no_grad():
        reward.score.weight.mul_(50.0)  # a reward that varies enough between answers to learn from in a few steps
    out = tmp_path_factory.mktemp("rm") / "final"
    save_final(reward, tok, out, adapter="none", base=None)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["grpo", "ppo"])
def test_a_reward_model_reward_rises_and_initialises_the_critic(tmp_path, base_dir, prompts, reward_model_dir, kind):
    spec = {"kind": "reward_model", "path": str(reward_model_dir)}
    extra = {"ppo_epochs": 2, "minibatches": 2} if kind == "ppo" else {}
    tree = rl_tree(tmp_path, base_dir, prompts, kind=kind, rl={"rewards": [spec], **extra})
    train(Recipe.model_validate(tree), log=lambda _: None)
    first, last = rise(metrics(tmp_path))
    assert last > first + 1.0, (first, last)  # the scores' spread between answers is about 0.5


def test_the_critic_starts_from_the_reward_model_or_the_policy(tmp_path, base_dir, reward_model_dir):
    from mixtune.model.load import load_checkpoint, load_tokenizer
    from mixtune.train.ppo import make_critic
    from mixtune.train.stages import StageContext

    policy, tok = load_checkpoint(base_dir), load_tokenizer(base_dir)
    reward = load_checkpoint(reward_model_dir)
    for init, expected_head in (("auto", reward.score.weight), ("policy", None)):
        recipe = Recipe.model_validate({"name": "c", "rl": {"critic_init": init, "rewards": [
            {"kind": "reward_model", "path": str(reward_model_dir)}]}})
        ctx = StageContext(recipe=recipe, name="ppo", kind="ppo", model=policy, tokenizer=tok, examples=[],
                           folder=tmp_path, run_dir=tmp_path)
        critic = make_critic(ctx)
        assert all(p.requires_grad for p in critic.parameters())
        torch.testing.assert_close(critic.model.embed_tokens.weight, policy.model.embed_tokens.weight)
        if expected_head is not None:
            torch.testing.assert_close(critic.score.weight, expected_head)
        else:
            assert not torch.equal(critic.score.weight, reward.score.weight)
        assert critic.model.embed_tokens.weight.data_ptr() != policy.model.embed_tokens.weight.data_ptr()


def test_ppo_ptx_adds_the_lm_loss_of_its_own_source(tmp_path, base_dir, prompts, tiny_corpus):
    tree = rl_tree(tmp_path, base_dir, prompts, kind="ppo", steps=2, rl={"ptx_coef": 0.5, "ptx_source": "text"})
    tree["data"]["sources"].append({"name": "text", "path": str(tiny_corpus), "count": 16})
    tree["strategy"]["stages"][0]["sources"] = ["p", "text"]
    summary = train(Recipe.model_validate(tree), log=lambda _: None)
    rows = metrics(tmp_path)
    assert all(r["ptx_loss"] > 1.0 for r in rows)  # an untrained tiny model: cross-entropy of a few nats
    assert all(r["loss"] == pytest.approx(r["policy_loss"] + 0.1 * r["value_loss"] + 0.5 * r["ptx_loss"], abs=1e-5)
               for r in rows)
    assert summary["stages"][0]["n_examples"] == 32  # the text source gives the LM loss, not prompts


@pytest.mark.parametrize("kind", ["grpo", "ppo"])
def test_lora_stages_train_only_the_adapter(tmp_path, base_dir, prompts, kind):
    from safetensors.torch import load_file

    tree = rl_tree(tmp_path, base_dir, prompts, kind=kind, steps=3, rl={"kl_coef": 0.05}, save_every=3)
    tree["adapter"] = {"type": "lora", "r": 4, "target_modules": ["q_proj", "v_proj"]}
    train(Recipe.model_validate(tree), log=lambda _: None)
    rows = metrics(tmp_path)
    assert len(rows) == 3 and rows[-1]["kl"] != 0  # the adapter moved away from its base (the reference)
    weights = load_file(tmp_path / "run" / "stages" / "0-rl" / "stage_weights.safetensors")
    assert weights and all("lora_" in k for k in weights)  # the stage saves the policy's adapter, not the critic
    checkpoint = load_file(next((tmp_path / "run" / "stages" / "0-rl" / "checkpoints").glob("step-*"))
                           / "weights.safetensors")
    assert any(k.startswith("critic.") for k in checkpoint) == (kind == "ppo")
