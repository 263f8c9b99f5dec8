"""The SFT speed levers (train.fused_ce, train.packed_attention, train.compile, the allocator setting): each gives
the same loss and gradients as the plain path up to rounding, and with them off training is exactly the plain path."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import chat_examples, tiny_model_section
from transformers import AttentionInterface

from mixtune.config import Recipe
from mixtune.data.packing import block_causal_mask, collate_packed
from mixtune.data.sft_dataset import build_sft_rows
from mixtune.model.load import load_model_and_tokenizer
from mixtune.train import levers
from mixtune.train.sft import _forward_loss, _micro_batches, sft_stage


def make_recipe(tmp_path, tok_dir, **train) -> Recipe:
    return Recipe.model_validate({
        "name": "t", "out_dir": str(tmp_path / "run"), "model": tiny_model_section(tok_dir),
        "train": {"lr": 1e-2, "batch_size": 8, "bf16": False, "max_steps": 3, "warmup_ratio": 0.0,
                  "log_every": 1, "max_grad_norm": 1.0, **train}})


def loss_and_grads(recipe, model, tok, n_examples: int = 8) -> tuple[float, dict[str, torch.Tensor]]:
    """Loss and accumulated gradient of one optimizer step over `n_examples` packed examples."""
    rows = build_sft_rows(chat_examples(n_examples), tok, recipe.data)
    model.zero_grad()
    total = 0.0
    for micro in _micro_batches(rows, list(range(n_examples)), 2, recipe, tok.pad_token_id):
        loss_sum, _ = _forward_loss(model, micro, recipe)
        (loss_sum / micro["n_step_target_tokens"]).backward()
        total += float(loss_sum.detach()) / micro["n_step_target_tokens"]
    return total, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_close(got, want, atol, rtol):
    (loss_got, grads_got), (loss_want, grads_want) = got, want
    assert loss_got == pytest.approx(loss_want, rel=rtol, abs=atol)
    assert grads_got.keys() == grads_want.keys()
    for name, g in grads_want.items():
        assert torch.allclose(grads_got[name], g, atol=atol, rtol=rtol), (name, (grads_got[name] - g).abs().max())


def test_packed_segments_hand_worked():
    # Row 0 holds examples of 3 and 2 tokens and 1 pad; row 1 one of 4 and a 2-token pad run (restarting at 0).
    position_ids = torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 1]])
    assert levers.packed_segments(position_ids) == [3, 2, 1, 4, 2]
    # A row that ends inside an increasing run still ends a segment (no example spans two rows).
    assert levers.packed_segments(torch.tensor([[0, 1], [2, 3]])) == [2, 2]


def test_packed_sdpa_equals_block_mask_attention():
    # One layer's attention: per-example causal SDPA vs SDPA with the explicit block-diagonal causal mask.
    gen = torch.Generator().manual_seed(0)
    rows = [[{"input_ids": [1] * 3, "labels": [1] * 3}, {"input_ids": [1] * 4, "labels": [1] * 4}],
            [{"input_ids": [1] * 5, "labels": [1] * 5}]]
    batch = collate_packed(rows, pad_id=0)  # (2, 7): row 1 ends in 2 pads
    q, k, v = (torch.randn(2, 2, 7, 4, generator=gen, requires_grad=True) for _ in range(3))
    got, _ = levers.packed_sdpa(None, q, k, v, None, scaling=0.5, position_ids=batch["position_ids"])  # (B, T, H, D)
    mask = block_causal_mask(batch["example_index"])  # (B, 1, T, T)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.5).transpose(1, 2)
    real = (batch["example_index"] >= 0)[:, :, None, None]  # padding attends differently (to itself only)
    assert torch.allclose(got * real, want * real, atol=1e-6)
    grads = torch.autograd.grad((got * real).sum(), (q, k, v))
    want_grads = torch.autograd.grad((want * real).sum(), (q, k, v))
    for g, w in zip(grads, want_grads, strict=True):
        assert torch.allclose(g, w, atol=1e-6)
    with pytest.raises(ValueError, match="packed position_ids"):
        levers.packed_sdpa(None, q, k, v, mask, position_ids=batch["position_ids"])


def test_packed_attention_packs_each_micro_batch_into_one_unpadded_row(tmp_path, tiny_tokenizer_dir):
    # Block mask: rows of <= max_seq_len padded to the longest; per-example attention: one row, no padding.
    plain, fast = (make_recipe(tmp_path, tiny_tokenizer_dir, packed_attention=on, batch_size=16) for on in (0, 1))
    _, tok = load_model_and_tokenizer(plain.model, seed=0)
    rows = build_sft_rows(chat_examples(16), tok, plain.data)
    n_tokens = sum(len(r["input_ids"]) for r in rows.rows)
    for micro in _micro_batches(rows, list(range(16)), 1, fast, tok.pad_token_id):
        assert micro["input_ids"].shape == (1, n_tokens) and bool((micro["example_index"] >= 0).all())
    (padded,) = _micro_batches(rows, list(range(16)), 1, plain.model_copy(
        update={"data": plain.data.model_copy(update={"max_seq_len": 64})}), tok.pad_token_id)
    assert padded["input_ids"].shape[0] > 1


@pytest.mark.parametrize("lever", ["fused_ce", "packed_attention"])
def test_lever_gives_the_plain_step_up_to_rounding(tmp_path, tiny_tokenizer_dir, lever):
    plain = make_recipe(tmp_path, tiny_tokenizer_dir)
    model, tok = load_model_and_tokenizer(plain.model, seed=0)
    want = loss_and_grads(plain, model, tok)
    got = loss_and_grads(make_recipe(tmp_path, tiny_tokenizer_dir, **{lever: True}), model, tok)
    assert_close(got, want, atol=1e-6, rtol=1e-5)
    assert model.config._attn_implementation != levers.PACKED_ATTENTION  # restored after the forward


@pytest.mark.slow
def test_compiled_layers_give_the_eager_loss_within_bf16_rounding(tmp_path, tiny_tokenizer_dir):
    eager = make_recipe(tmp_path, tiny_tokenizer_dir, bf16=True)
    model, tok = load_model_and_tokenizer(eager.model, seed=0)
    want = loss_and_grads(eager, model, tok)
    levers.compile_layers(model)
    try:
        fast = make_recipe(tmp_path, tiny_tokenizer_dir, bf16=True, compile=True, fused_ce=True,
                           packed_attention=True)
        got = loss_and_grads(fast, model, tok)
        again = loss_and_grads(fast, model, tok, n_examples=6)  # a new packed shape: recompiled once, still right
        levers.uncompile_layers(model)
        assert_close(again, loss_and_grads(eager, model, tok, n_examples=6), atol=2e-2, rtol=2e-2)
    finally:
        levers.uncompile_layers(model)
    assert_close(got, want, atol=2e-2, rtol=2e-2)  # bf16 autocast: ~3 significant digits
    assert all(layer._compiled_call_impl is None for layer in model.model.layers)


def stage_losses(tmp_path, tok_dir, name, **train) -> list[float]:
    recipe = make_recipe(tmp_path / name, tok_dir, bf16=True, **train)
    model, tok = load_model_and_tokenizer(recipe.model, seed=0)
    sft_stage(model, tok, recipe, chat_examples(24), tmp_path / name / "stage")
    lines = (tmp_path / name / "stage" / "metrics.jsonl").read_text().splitlines()
    return [row["loss"] for row in map(json.loads, lines) if "loss" in row]


def test_levers_off_is_the_plain_path_bit_for_bit(tmp_path, tiny_tokenizer_dir, monkeypatch):
    # With the switches off none of the lever code runs (it would raise here), and the allocator setting, which is
    # always on, changes no number: the losses of three steps are bit-identical with and without it.
    from mixtune.train import sft

    def must_not_run(*args, **kwargs):
        raise AssertionError("a speed lever ran with its switch off")

    monkeypatch.setattr(sft, "chunked_target_token_ce", must_not_run)
    monkeypatch.setitem(AttentionInterface._global_mapping, levers.PACKED_ATTENTION, must_not_run)
    monkeypatch.setattr(levers, "compile_layers", must_not_run)
    levers.keep_freed_memory()
    kept = stage_losses(tmp_path, tiny_tokenizer_dir, "kept")
    levers.default_malloc()
    plain = stage_losses(tmp_path, tiny_tokenizer_dir, "plain")
    assert len(plain) == 3 and kept == plain


def test_foreach_adamw_is_the_per_tensor_loop_bit_for_bit():
    # make_optimizer always asks for the foreach form (fewer, larger kernels); on CPU torch's default is the per-tensor
    # loop. Same arithmetic in the same order, so every parameter must match bit for bit after a few steps with weight
    # decay, a matrix (decayed) and a vector (not).
    from mixtune.config import TrainConfig
    from mixtune.train.engine import make_optimizer

    def trained(foreach: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.LayerNorm(5))
        optimizer = make_optimizer(model, TrainConfig(lr=1e-2, weight_decay=0.1))
        assert all(g["foreach"] is True for g in optimizer.param_groups)
        for group in optimizer.param_groups:
            group["foreach"] = foreach
        for step in range(4):
            model.zero_grad()
            model(torch.randn(3, 7, generator=torch.Generator().manual_seed(step))).pow(2).sum().backward()
            optimizer.step()
        return [p.detach().clone() for p in model.parameters()]

    for got, want in zip(trained(True), trained(False), strict=True):
        assert torch.equal(got, want)


@pytest.mark.slow
def test_compiled_pretraining_follows_the_eager_run_and_saves_the_plain_model(tmp_path, tiny_tokenizer_dir,
                                                                              tiny_corpus, monkeypatch):
    # train.compile in pre-training: the same losses step by step up to fp32 rounding, a final model with the
    # eager run's parameter names (a plain checkpoint, no compiled wrapper), and the layers uncompiled afterwards.
    from safetensors.torch import load_file

    from mixtune.train.pretrain import pretrain

    def run(name, **train):
        recipe = Recipe.model_validate({
            "name": name, "out_dir": str(tmp_path / name), "model": tiny_model_section(tiny_tokenizer_dir),
            "pretrain_corpus": [str(tiny_corpus)],
            "train": {"lr": 1e-2, "batch_size": 4, "seq_len": 32, "bf16": False, "max_steps": 6, "log_every": 1,
                      "warmup_ratio": 0.0, **train}})
        summary = pretrain(recipe)
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return summary, [r["loss"] for r in rows if "loss" in r], load_file(str(tmp_path / name / "final" /
                                                                               "model.safetensors"))

    compiled = []

    def spy(model, adapter="none"):
        compiled.append(model)
        return compile_layers(model, adapter)

    compile_layers = levers.compile_layers
    _, eager_losses, eager_weights = run("eager")
    monkeypatch.setattr(levers, "compile_layers", spy)
    summary, losses, weights = run("compiled", compile=True)
    assert len(compiled) == 1  # the switch reached the loop
    assert all(layer._compiled_call_impl is None for layer in compiled[0].model.layers)  # uncompiled at the end
    assert len(losses) == len(eager_losses) == 6
    assert losses == pytest.approx(eager_losses, rel=1e-4)
    assert weights.keys() == eager_weights.keys()
    for name, tensor in weights.items():
        assert torch.allclose(tensor, eager_weights[name], rtol=1e-3, atol=1e-4), name
    assert summary["eval_loss"] == pytest.approx(
        json.loads((tmp_path / "eager" / "metrics.jsonl").read_text().splitlines()[-1])["eval_loss"], rel=1e-4)
