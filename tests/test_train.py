"""Training engine: accumulation exactness, adapters' frozen weights, kill-and-resume, NaN guard, final formats."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from conftest import chat_examples, tiny_model_section

from mixtune.config import Recipe
from mixtune.model.adapters import apply_adapter
from mixtune.model.load import load_model_and_tokenizer
from mixtune.train import engine
from mixtune.train.pretrain import pretrain
from mixtune.train.sft import sft_stage


def make_recipe(tmp_path, tok_dir, **sections) -> Recipe:
    tree = {"name": "t", "out_dir": str(tmp_path / "run"), "model": tiny_model_section(tok_dir),
            "train": {"lr": 1e-2, "batch_size": 8, "bf16": False, "max_steps": 2, "warmup_ratio": 0.0,
                      "log_every": 1, "max_grad_norm": 0.0}}
    for key, value in sections.items():
        tree[key] = {**tree.get(key, {}), **value}
    return Recipe.model_validate(tree)


def run_sft(tmp_path, tok_dir, name, **train):
    recipe = make_recipe(tmp_path / name, tok_dir, train=train)
    model, tok = load_model_and_tokenizer(recipe.model, seed=0)
    sft_stage(model, tok, recipe, chat_examples(16), tmp_path / name / "stage")
    return model, recipe


def step_gradients(recipe, model, tok, grad_accum: int) -> dict[str, torch.Tensor]:
    """The accumulated gradient of one optimizer step over 8 examples split into `grad_accum` micro-batches."""
    from mixtune.data.sft_dataset import build_sft_rows
    from mixtune.train.sft import _forward_loss, _micro_batches

    rows = build_sft_rows(chat_examples(8), tok, recipe.data)
    micros = _micro_batches(rows, list(range(8)), grad_accum, recipe, tok.pad_token_id)
    model.zero_grad()
    for micro in micros:
        loss_sum, _ = _forward_loss(model, micro, recipe)
        (loss_sum / micro["n_step_target_tokens"]).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_grad_accum_4x2_equals_8x1(tmp_path, tiny_tokenizer_dir):
    recipe = make_recipe(tmp_path, tiny_tokenizer_dir)
    model, tok = load_model_and_tokenizer(recipe.model, seed=0)
    one, four = step_gradients(recipe, model, tok, 1), step_gradients(recipe, model, tok, 4)
    for name, g in one.items():
        assert torch.allclose(g, four[name], atol=1e-7, rtol=1e-5), name
    # A per-micro-batch mean (the common bug) weights micro-batches equally and would differ:
    assert max(g.abs().max() for g in one.values()) > 1e-3


def test_grad_accum_trains_to_the_same_weights(tmp_path, tiny_tokenizer_dir):
    one, _ = run_sft(tmp_path, tiny_tokenizer_dir, "a", grad_accum=1)
    four, _ = run_sft(tmp_path, tiny_tokenizer_dir, "b", grad_accum=4)
    before, _ = load_model_and_tokenizer(make_recipe(tmp_path, tiny_tokenizer_dir).model, seed=0)
    for (name, p1), (_, p4), (_, p0) in zip(one.named_parameters(), four.named_parameters(),
                                            before.named_parameters()):
        # Adam divides by sqrt(v): float-rounding differences of near-zero gradients grow to ~1e-5 after 2 steps,
        # while the steps themselves are ~1e-2 (lr): 1e-4 still catches any real accumulation error.
        assert torch.allclose(p1, p4, atol=1e-4), name
        assert not torch.allclose(p1, p0, atol=1e-3), f"{name} did not train"


def test_lora_moves_only_adapter_weights(tmp_path, tiny_tokenizer_dir):
    recipe = make_recipe(tmp_path, tiny_tokenizer_dir, adapter={"type": "lora", "r": 4, "alpha": 8})
    model, tok = load_model_and_tokenizer(recipe.model, seed=0)
    model = apply_adapter(model, recipe.adapter)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # B starts at zero, so give A-and-B a first step, then check who moved.
    sft_stage(model, tok, recipe, chat_examples(16), tmp_path / "stage")
    for name, p in model.named_parameters():
        changed = not torch.equal(before[name], p.detach())
        if "lora_" in name:
            assert p.requires_grad
        else:
            assert not changed, f"frozen weight {name} moved"
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters() if "lora_B" in n)


def losses_of(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_kill_and_resume_gives_same_next_loss(tmp_path, tiny_tokenizer_dir, tiny_corpus):
    def recipe(name):
        return make_recipe(tmp_path / name, tiny_tokenizer_dir, train={
            "max_steps": 8, "save_every": 3, "seq_len": 32, "batch_size": 4, "schedule": "cosine",
            "warmup_ratio": 0.25, "lr": 3e-3}).model_copy(update={"pretrain_corpus": [str(tiny_corpus)]})

    straight = recipe("straight")
    pretrain(straight)
    killed = recipe("killed")
    out = pretrain(killed, stop_at_step=5)  # dies after step 5; the last checkpoint is step 3
    assert out["stopped"] and engine.latest_checkpoint(killed.run_dir).name == "step-0000003"
    pretrain(killed, resume=True)
    want, got = losses_of(straight.run_dir), losses_of(killed.run_dir)
    for step in range(4, 9):
        assert got[step] == pytest.approx(want[step], rel=1e-6, abs=1e-7), step


def test_nan_loss_stops_with_a_clear_message(tmp_path, tiny_tokenizer_dir, monkeypatch):
    from mixtune.train import sft

    def nan_ce(*args, **kwargs):
        return torch.tensor(float("nan"), requires_grad=True), torch.tensor(1)

    monkeypatch.setattr(sft, "masked_token_ce", nan_ce)
    monkeypatch.setattr(sft, "target_token_ce", nan_ce)
    recipe = make_recipe(tmp_path, tiny_tokenizer_dir)
    model, tok = load_model_and_tokenizer(recipe.model, seed=0)
    with pytest.raises(engine.TrainingDiverged, match="loss is nan at step 1"):
        sft_stage(model, tok, recipe, chat_examples(8), tmp_path / "stage")


def test_checkpoint_write_is_atomic_and_pruned(tmp_path, tiny_tokenizer_dir):
    recipe = make_recipe(tmp_path, tiny_tokenizer_dir)
    model, _ = load_model_and_tokenizer(recipe.model, seed=0)
    opt = engine.make_optimizer(model, recipe.train)
    sched = engine.make_scheduler(opt, recipe.train, 10)
    for step in (1, 2, 3):
        engine.save_checkpoint(tmp_path, model, opt, sched, engine.TrainState(step=step), full=True)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["latest.json", "step-0000002", "step-0000003"]  # no temp folders left, two kept
    assert engine.latest_checkpoint(tmp_path).name == "step-0000003"


def test_wsd_schedule_shape(tmp_path, tiny_tokenizer_dir):
    recipe = make_recipe(tmp_path, tiny_tokenizer_dir, train={"schedule": "wsd", "warmup_ratio": 0.1,
                                                               "decay_ratio": 0.2, "min_lr_ratio": 0.0, "lr": 1.0})
    p = torch.nn.Parameter(torch.zeros(2, 2))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = engine.make_scheduler(opt, recipe.train, 100)
    lrs = []
    for _ in range(100):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(0.5)  # linear warm-up over 10 steps
    assert all(lr == pytest.approx(1.0) for lr in lrs[10:80])  # stable phase
    assert lrs[99] < 0.3 and all(a >= b for a, b in itertools.pairwise(lrs[80:]))  # cooldown
