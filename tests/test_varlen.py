"""The flash-attention path for packed rows, on CPU: the flattened layout and varlen kwargs worked by hand, and the
SFT loss through a reference varlen attention (plain torch, one causal attention per example, registered with
transformers' AttentionInterface like flash_attention_2) equals the per-example loss for a multi-row packed batch.
And the gradient-checkpointing switch gives the same loss and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_packing import LENGTHS, fake_examples, summed_ce, tiny_llama
from transformers import AttentionInterface

from mixtune.config import Recipe
from mixtune.data import packing
from mixtune.data.packing import collate_packed, flatten_packed, pack_bfd, varlen_kwargs
from mixtune.train import engine, sft

CALLS: list[dict] = []


def reference_varlen_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """What flash_attn_varlen_func computes, in plain torch: causal attention within each [cu[i], cu[i+1])."""
    assert attention_mask is None and query.shape[0] == 1, "the varlen path takes one flattened row, no mask"
    cu = kwargs["cu_seq_lens_q"]
    CALLS.append({"cu": cu.tolist(), "max": kwargs["max_length_q"], "dtype": cu.dtype})
    groups = query.shape[1] // key.shape[1]  # grouped-query attention: repeat each k/v head
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    out = torch.zeros_like(query)  # (1, H, N, D)
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        out[:, :, a:b] = F.scaled_dot_product_attention(query[:, :, a:b], key[:, :, a:b], value[:, :, a:b],
                                                        is_causal=True, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register("varlen_reference", reference_varlen_attention)


def test_flatten_and_varlen_kwargs_by_hand():
    exs = fake_examples([4, 2, 3])
    batch = collate_packed([[exs[0], exs[1]], [exs[2]]], pad_id=0)  # rows of 6 and 3 (+3 padding)
    flat = flatten_packed(batch)
    assert flat["input_ids"].tolist() == [exs[0]["input_ids"] + exs[1]["input_ids"] + exs[2]["input_ids"]]
    assert flat["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 0, 1, 2]]
    assert flat["example_index"].tolist() == [[0, 0, 0, 0, 1, 1, 2, 2, 2]]
    assert flat["labels"][0, [0, 4, 6]].tolist() == [-100] * 3  # no target across an example boundary
    assert flat["n_target_tokens"] == batch["n_target_tokens"] and flat["task_type"].tolist() == [0, 1, 0]
    kw = varlen_kwargs(flat["position_ids"])
    assert kw["cu_seq_lens_q"].tolist() == [0, 4, 6, 9] and kw["cu_seq_lens_q"].dtype == torch.int32
    assert kw["cu_seq_lens_k"] is kw["cu_seq_lens_q"] and kw["max_length_q"] == kw["max_length_k"] == 4


def test_sft_loss_on_the_varlen_path_equals_the_per_example_loss(monkeypatch):
    monkeypatch.setattr(packing, "VARLEN_ATTENTION", {"varlen_reference"})
    monkeypatch.setattr(sft, "VARLEN_ATTENTION", {"varlen_reference"})
    model = tiny_llama("sdpa")
    exs = fake_examples(LENGTHS)
    rows = [[exs[i] for i in b] for b in pack_bfd(LENGTHS, 128)]
    batch = collate_packed(rows, pad_id=0)
    assert batch["input_ids"].shape[0] > 1
    recipe = Recipe.model_validate({"name": "v", "train": {"bf16": False}})
    with torch.no_grad():
        expected = sum(summed_ce(model(torch.tensor([e["input_ids"]])).logits, torch.tensor([e["labels"]]))
                       for e in exs)
        model.set_attn_implementation("varlen_reference")
        CALLS.clear()
        loss_sum, _ = sft._forward_loss(model, batch, recipe)
    assert CALLS and all(c["max"] == max(LENGTHS) and c["dtype"] == torch.int32 for c in CALLS)
    assert len(CALLS[0]["cu"]) == len(LENGTHS) + 1 and CALLS[0]["cu"][-1] == sum(LENGTHS)
    assert loss_sum.item() == pytest.approx(expected.item(), rel=1e-5)
    # the check can fail: the same row read as one sequence (no varlen kwargs) mixes the examples
    monkeypatch.setattr(sft, "VARLEN_ATTENTION", set())
    model.set_attn_implementation("sdpa")
    with torch.no_grad():
        flat = flatten_packed(batch)
        leaky = summed_ce(model(flat["input_ids"], use_cache=False).logits, flat["labels"])
    assert abs(leaky.item() - expected.item()) > 1e-2


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    exs = fake_examples(LENGTHS[:6], seed=2)
    batch = collate_packed([[e] for e in exs[:3]] + [exs[3:]], pad_id=0)
    recipe = Recipe.model_validate({"name": "g", "train": {"bf16": False}})
    results = []
    for on in (False, True):
        model = tiny_llama("sdpa").train()
        engine.set_gradient_checkpointing(model, on)
        assert model.is_activation_checkpointing == on
        loss_sum, _ = sft._forward_loss(model, batch, recipe)
        loss_sum.backward()
        results.append((loss_sum.item(), [p.grad.clone() for p in model.parameters()]))
    (loss_off, grads_off), (loss_on, grads_on) = results
    assert loss_on == pytest.approx(loss_off, rel=1e-6)
    assert max((a - b).abs().max().item() for a, b in zip(grads_off, grads_on)) <= 1e-6
    assert any(g.abs().sum() > 0 for g in grads_on)
