"""Preference pairs as tokens and forward passes: the SFT template's segmentation, packed log-probs equal to
per-example ones, the reference cached once from the start model (or the adapter-free base), the DPO-family loss
wiring, exact gradient accumulation, and DPO learning a toy preference."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import pair_examples
from transformers import AutoModelForCausalLM

from mixtune.config import Recipe
from mixtune.data.pair_dataset import build_pair_rows, pair_micro_batches, tokenize_completion
from mixtune.data.templates import IGNORE_INDEX, tokenize_example
from mixtune.model.adapters import apply_adapter
from mixtune.model.load import load_tokenizer
from mixtune.train import dpo
from mixtune.train.losses import dpo_loss
from mixtune.train.pair_forward import dpo_micro_loss, reference_logps, sequence_logps
from mixtune.train.stages import StageContext


@pytest.fixture(scope="module")
def tokenizer(base_dir):
    return load_tokenizer(base_dir)


def recipe(**sections) -> Recipe:
    tree = {"name": "p", "train": {"lr": 5e-3, "batch_size": 8, "bf16": False, "warmup_ratio": 0.0, "log_every": 1}}
    for key, value in sections.items():
        tree[key] = {**tree.get(key, {}), **value}
    return Recipe.model_validate(tree)


def unpacked_logps(model, pairs) -> torch.Tensor:
    """(P, 2) log π(chosen), log π(rejected): one plain forward per sequence, no packing, no padding."""
    out = torch.zeros(len(pairs), 2)
    with torch.no_grad():
        for i, row in enumerate(pairs.rows):
            for side, key in enumerate(("chosen_ids", "rejected_ids")):
                ids = torch.tensor([row["prompt_ids"] + row[key]])
                logps = model(input_ids=ids).logits[0, :-1].log_softmax(-1).gather(-1, ids[0, 1:, None])[:, 0]
                out[i, side] = logps[len(row["prompt_ids"]) - 1:].sum()
    return out


def test_a_pair_is_tokenised_like_the_sft_answer(tokenizer):
    ex = pair_examples(1)[0]
    prompt, answer = tokenize_completion(ex["messages"], ex["chosen"], tokenizer, "tokenizer")
    sft = tokenize_example({"messages": [*ex["messages"], {"role": "assistant", "content": ex["chosen"]}]},
                           tokenizer, "tokenizer", 512)
    assert sft["input_ids"][:len(prompt) + len(answer)] == prompt + answer
    assert [t for t in sft["labels"] if t != IGNORE_INDEX] == answer  # the SFT targets are the pair's answer
    assert tokenizer.decode(answer).endswith("<|im_end|>") and tokenizer.decode(prompt).endswith("assistant\n")
    multi = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    prompt, answer = tokenize_completion(multi, "d", tokenizer, "tokenizer")
    assert tokenizer.decode(answer) == "d<|im_end|>" and "b<|im_end|>" in tokenizer.decode(prompt)


def test_prompt_and_answer_truncation_is_counted(tokenizer):
    examples = pair_examples(4)
    examples[0]["messages"][0]["content"] = " ".join(["the"] * 200)
    data = recipe(data={"max_seq_len": 40}).data
    pairs = build_pair_rows(examples, tokenizer, data)
    assert pairs.dropped == ["prefs/0"] and len(pairs) == 3  # the prompt alone fills 40 tokens
    kept = build_pair_rows(examples, tokenizer, data, max_prompt_len=16)
    assert "prefs/0" in kept.truncated and len(kept) == 4
    assert all(len(r["prompt_ids"]) <= 16 and len(r["prompt_ids"]) + len(r["chosen_ids"]) <= 40 for r in kept.rows)


@pytest.mark.parametrize("packing", [True, False])
def test_packed_pair_logps_equal_per_example_logps(base_dir, tokenizer, packing):
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    cfg = recipe(data={"packing": packing, "pack_len": 64})
    pairs = build_pair_rows(pair_examples(7), tokenizer, cfg.data)
    (micro,) = pair_micro_batches(pairs, list(range(7)), 1, 64, tokenizer.pad_token_id, packing=packing)
    if packing:
        assert micro["input_ids"].shape[0] < 14  # several sequences share a row
    with torch.no_grad():
        logps, counts = sequence_logps(model, micro, cfg)
    got = torch.stack([logps[micro["chosen_index"]], logps[micro["rejected_index"]]], dim=1)
    assert torch.allclose(got, unpacked_logps(model, pairs), atol=1e-5, rtol=0)
    assert counts[micro["chosen_index"]].tolist() == [len(r["chosen_ids"]) for r in pairs.rows]


def dpo_context(tmp_path, model, tokenizer, cfg, examples, **extra) -> StageContext:
    return StageContext(recipe=cfg, name="dpo", kind="dpo", model=model, tokenizer=tokenizer, examples=examples,
                        folder=tmp_path / "stage", run_dir=tmp_path, log=lambda *_: None, **extra)


def test_reference_logps_are_cached_once_from_the_start_model(tmp_path, base_dir, tokenizer, monkeypatch):
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    start = copy.deepcopy(model)
    cfg = recipe(train={"max_steps": 4})
    examples = pair_examples(16)
    captured, calls = [], []
    original = dpo.reference_logps

    def spy(*args, **kwargs):
        calls.append(1)
        captured.append(original(*args, **kwargs))
        return captured[-1]

    monkeypatch.setattr(dpo, "reference_logps", spy)
    dpo.run_stage(dpo_context(tmp_path, model, tokenizer, cfg, examples))
    assert len(calls) == 1  # once per stage, never in the loop
    pairs = build_pair_rows(examples, tokenizer, cfg.data)
    assert torch.allclose(captured[0], unpacked_logps(start, pairs), atol=1e-5, rtol=0)
    assert (unpacked_logps(model, pairs) - captured[0]).abs().max() > 1e-3  # the policy moved, the cache did not


def test_lora_reference_is_the_start_model_or_the_base_with_the_adapter_off(base_dir, tokenizer):
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    plain = copy.deepcopy(base)
    cfg = recipe(adapter={"type": "lora", "r": 4, "alpha": 8})
    model = apply_adapter(base, cfg.adapter)
    with torch.no_grad():  # an adapter some earlier stage trained
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    pairs = build_pair_rows(pair_examples(5), tokenizer, cfg.data)
    as_base = reference_logps(model, pairs, cfg.model_copy(update={"preference": cfg.preference.model_copy(
        update={"reference": "base"})}))
    as_start = reference_logps(model, pairs, cfg)
    assert torch.allclose(as_base, unpacked_logps(plain, pairs), atol=1e-5, rtol=0)
    assert torch.allclose(as_start, unpacked_logps(model, pairs), atol=1e-5, rtol=0)
    assert (as_base - as_start).abs().max() > 1e-3


@pytest.mark.parametrize("loss,smoothing", [("sigmoid", 0.0), ("sigmoid", 0.2), ("ipo", 0.0), ("hinge", 0.0)])
def test_micro_loss_is_the_dpo_loss_of_train_losses(base_dir, tokenizer, loss, smoothing):
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    cfg = recipe(preference={"loss": loss, "label_smoothing": smoothing, "beta": 0.5})
    pairs = build_pair_rows(pair_examples(6), tokenizer, cfg.data)
    policy = unpacked_logps(model, pairs)
    reference = policy + torch.linspace(-1.0, 1.0, 12).reshape(6, 2)  # a reference that differs from the policy
    (micro,) = pair_micro_batches(pairs, list(range(6)), 1, 512, tokenizer.pad_token_id)
    with torch.no_grad():
        got, stats = dpo_micro_loss(model, micro, reference, cfg)
    p, r = policy, reference
    if loss == "ipo":  # IPO on per-token means
        n = torch.tensor([[len(x["chosen_ids"]), len(x["rejected_ids"])] for x in pairs.rows], dtype=torch.float32)
        p, r = p / n, r / n
    losses, chosen, rejected = dpo_loss(p[:, 0], p[:, 1], r[:, 0], r[:, 1], 0.5, label_smoothing=smoothing,
                                        ipo=loss == "ipo", hinge=loss == "hinge")
    assert float(got) == pytest.approx(float(losses.mean()), abs=1e-5)
    assert stats["margin"] / stats["weight"] == pytest.approx(float((chosen - rejected).mean()), abs=1e-5)


def test_grad_accumulation_2x4_equals_1x8_for_weighted_pairs(base_dir, tokenizer):
    examples = pair_examples(8)
    for i, ex in enumerate(examples):
        ex["weight"] = 1.0 / (1 + i % 3)
    grads = []
    for accum in (1, 2):
        model = AutoModelForCausalLM.from_pretrained(base_dir)
        cfg = recipe(train={"grad_accum": accum})
        pairs = build_pair_rows(examples, tokenizer, cfg.data)
        reference = unpacked_logps(model, pairs) - 0.3
        for micro in pair_micro_batches(pairs, list(range(8)), accum, 64, tokenizer.pad_token_id):
            dpo_micro_loss(model, micro, reference, cfg)[0].backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6, rtol=1e-5)


def test_dpo_learns_a_toy_preference(tmp_path, base_dir, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    cfg = recipe(train={"max_steps": 30, "lr": 1e-2})
    examples = pair_examples(32, chosen="no", rejected="yes")  # the untrained model prefers "yes": teach "no"
    pairs = build_pair_rows(examples, tokenizer, cfg.data)
    before = unpacked_logps(model, pairs)
    result = dpo.run_stage(dpo_context(tmp_path, model, tokenizer, cfg, examples))
    after = unpacked_logps(model, pairs)
    gap_before, gap_after = before[:, 0] - before[:, 1], after[:, 0] - after[:, 1]  # log π(chosen) − log π(rejected)
    assert float((gap_after > 0).float().mean()) == 1.0 > float((gap_before > 0).float().mean())
    assert float(gap_after.mean()) > float(gap_before.mean()) + 1.0
    assert result.metrics["rewards/accuracy"] == 1.0 and result.metrics["rewards/margin"] > 0.5
    assert result.metrics["loss"] < 0.5 and result.finished and result.steps == 30


def test_eval_fraction_holds_out_seeded_disjoint_pairs(tmp_path, base_dir, tokenizer):
    cfg = recipe(preference={"eval_fraction": 0.25})
    examples = pair_examples(16)
    held_out = {"other": pair_examples(3, seed=9, source="other")}
    ctx = dpo_context(tmp_path, None, tokenizer, cfg, examples, eval_sets=held_out)
    train_set, held = dpo.stage_pairs(ctx)
    assert len(train_set) == 12 and len(held["heldout"]) == 4 and len(held["other"]) == 3
    assert not {r["id"] for r in train_set.rows} & {r["id"] for r in held["heldout"].rows}
    _, held_again = dpo.stage_pairs(ctx)
    assert [r["id"] for r in held_again["heldout"].rows] == [r["id"] for r in held["heldout"].rows]  # seeded
