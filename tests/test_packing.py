"""Packing: BFD fill, no cross-example attention (packed logits = per-example logits), loss and grad-accum equality."""

from __future__ import annotations

import os
import random

import pytest
import torch
import torch.nn.functional as F
from conftest import SHARED_DATA as DATA
from conftest import needs_data
from test_templates import build_tiny_tokenizer
from transformers import LlamaConfig, LlamaForCausalLM

from mixtune.config import DataConfig
from mixtune.data.formats import read_examples
from mixtune.data.packing import (
    block_causal_mask,
    collate_packed,
    collate_padded,
    model_inputs,
    pack_bfd,
    pack_stats,
)
from mixtune.data.sft_dataset import batches_for_step, build_sft_rows, split_micro_batches
from mixtune.data.templates import IGNORE_INDEX

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
torch.set_num_threads(1)

VOCAB = 120
LENGTHS = [37, 5, 60, 23, 11, 90, 2, 48, 17, 64]


def tiny_llama(attn: str, vocab: int = VOCAB) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    model = LlamaForCausalLM(cfg).float().eval()
    model.set_attn_implementation(attn)
    assert model.config._attn_implementation == attn
    return model


def fake_examples(lengths: list[int], seed: int = 0) -> list[dict]:
    """Random ids; the first ~third of each example is prompt (label -100), the rest trained; task types alternate."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, n in enumerate(lengths):
        ids = torch.randint(3, VOCAB, (n,), generator=g).tolist()
        prompt = max(1, n // 3) if n > 1 else 0
        out.append({"id": f"x/{i}", "input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:],
                    "task_type": i % 2, "source": "s", "ability": "math"})
    return out


def summed_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of next-token cross-entropy over targets: logits (B, T, V), labels (B, T) unshifted."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX,
                           reduction="sum")


def test_pack_bfd_small_case_and_errors():
    bins = pack_bfd([5, 4, 3, 3, 2, 2, 1], capacity=8)
    # By hand: 5 opens A (room 3); 4 opens B (room 4); 3 fills A exactly; the next 3 goes to B (room 1);
    # 2 fits nowhere, opens C (room 6); 2 → C (room 4); 1 → B, the bin with the least room that fits.
    assert bins == [[0, 2], [1, 3, 6], [4, 5]]
    assert sorted(i for b in bins for i in b) == list(range(7))
    with pytest.raises(ValueError, match="longer than capacity 8: index 1 has 9"):
        pack_bfd([3, 9], 8)
    assert pack_bfd([], 8) == []


def test_bfd_fill_on_a_lognormal_sft_distribution():
    rng = random.Random(0)
    lengths = [min(512, max(8, int(rng.lognormvariate(5.0, 0.6)))) for _ in range(4000)]  # median ~150 tokens
    bins = pack_bfd(lengths, 512)
    assert all(sum(lengths[i] for i in b) <= 512 for b in bins)
    stats = pack_stats(lengths, bins, 512)
    print(f"lognormal fill {stats['fill']:.4f} rows {stats['rows']}")
    assert stats["fill"] > 0.95


@needs_data
def test_bfd_fill_on_real_sft_data():
    """gsm8k + code_alpaca + sharegpt tokenised with ChatML, rows of 512: whole-set and per-step (16 examples) fill."""
    tok = build_tiny_tokenizer()
    examples = (read_examples(DATA / "gsm8k/train.jsonl").examples[:1500]
                + read_examples(DATA / "code_alpaca/code_alpaca_2k.json", skip_invalid=True).examples[:1500]
                + read_examples(DATA / "sharegpt/dummy_conversation_fastchat.json").examples)
    tset = build_sft_rows(examples, tok, DataConfig(template="chatml", max_seq_len=512))
    lengths = [len(r["input_ids"]) for r in tset.rows]
    stats = pack_stats(lengths, pack_bfd(lengths, 512), 512)
    order = random.Random(0).sample(range(len(lengths)), len(lengths))
    steps = [order[i:i + 16] for i in range(0, len(order) - 15, 16)]
    step_rows = sum(len(pack_bfd([lengths[i] for i in s], 512)) for s in steps)
    step_fill = sum(lengths[i] for s in steps for i in s) / (step_rows * 512)
    print(f"real fill {stats['fill']:.4f} ({len(lengths)} examples, {len(tset.truncated)} truncated); "
          f"per 16-example step {step_fill:.4f}")
    assert stats["fill"] > 0.95


def test_collate_packed_layout():
    exs = fake_examples([4, 3, 2])
    b = collate_packed([[exs[0], exs[2]], [exs[1]]], pad_id=0)
    assert b["input_ids"].shape == (2, 6)
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1], [0, 1, 2, 0, 1, 2]]
    assert b["example_index"].tolist() == [[0, 0, 0, 0, 1, 1], [2, 2, 2, -1, -1, -1]]
    assert b["task_type"].tolist() == [0, 0, 1]
    lab = b["labels"].tolist()
    assert lab[0][0] == lab[0][4] == IGNORE_INDEX  # each example's first token is never a target
    assert lab[0][5] == exs[2]["input_ids"][1] and lab[1][3:] == [IGNORE_INDEX] * 3
    assert b["input_ids"][1, 3:].tolist() == [0, 0, 0]
    assert b["n_target_tokens"] == sum(x != IGNORE_INDEX for row in lab for x in row)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("explicit_mask", [False, True])
def test_packed_logits_and_loss_equal_per_example(attn, explicit_mask):
    model = tiny_llama(attn)
    exs = fake_examples(LENGTHS)
    rows = [[exs[i] for i in b] for b in pack_bfd(LENGTHS, 128)]
    batch = collate_packed(rows, pad_id=0)
    assert batch["input_ids"].shape[0] > 1  # several rows, not one flattened row
    kwargs = model_inputs(batch)
    if explicit_mask:
        kwargs["attention_mask"] = block_causal_mask(batch["example_index"])
    with torch.no_grad():
        packed = model(**kwargs, use_cache=False)
        max_diff, weighted, n_total = 0.0, 0.0, 0
        for r, row in enumerate(rows):
            at = 0
            for ex in row:
                ids = torch.tensor([ex["input_ids"]])
                single = model(ids, labels=torch.tensor([ex["labels"]]))
                n = len(ex["input_ids"])
                max_diff = max(max_diff, (packed.logits[r, at:at + n] - single.logits[0]).abs().max().item())
                n_tgt = sum(lab != IGNORE_INDEX for lab in ex["labels"][1:])
                weighted, n_total, at = weighted + single.loss.item() * n_tgt, n_total + n_tgt, at + n
    print(f"{attn} explicit_mask={explicit_mask}: max |packed - single| logit diff {max_diff:.2e}")
    assert max_diff <= 1e-5
    assert batch["n_target_tokens"] == n_total
    assert packed.loss.item() == pytest.approx(weighted / n_total, abs=1e-6)


def test_without_restarting_positions_examples_do_leak():
    """The check above can fail: plain positions (one sequence per row) let examples attend to each other."""
    model = tiny_llama("sdpa")
    exs = fake_examples([20, 20])
    batch = collate_packed([exs], pad_id=0)
    with torch.no_grad():
        leaky = model(batch["input_ids"], use_cache=False).logits[0, 20:]
        single = model(torch.tensor([exs[1]["input_ids"]])).logits[0]
    assert (leaky - single).abs().max().item() > 1e-3


def test_padded_collation_matches_per_example():
    model = tiny_llama("sdpa")
    exs = fake_examples([9, 30, 4])
    batch = collate_padded(exs, pad_id=0)
    assert batch["attention_mask"].sum(1).tolist() == [9, 30, 4]
    with torch.no_grad():
        padded = model(**model_inputs(batch)).logits
        for r, ex in enumerate(exs):
            single = model(torch.tensor([ex["input_ids"]])).logits[0]
            assert (padded[r, :len(ex["input_ids"])] - single).abs().max().item() <= 1e-5
        packed = model(**model_inputs(collate_packed([[e] for e in exs], 0)), use_cache=False)
    assert summed_ce(padded, batch["labels"]).item() == pytest.approx(
        summed_ce(packed.logits, batch["labels"]).item(), rel=1e-5)


@pytest.mark.parametrize("packing", [True, False])
def test_grad_accum_4x2_equals_8x1(packing):
    """Summed token losses / n_step_target_tokens over micro-batches give the one-batch gradient exactly."""
    model = tiny_llama("sdpa").train()
    rows = fake_examples(LENGTHS[:8], seed=1)
    tset = build_sft_rows([], None, DataConfig())
    tset.rows = rows

    def step_grads(grad_accum: int) -> list[torch.Tensor]:
        model.zero_grad()
        micro = batches_for_step(tset, list(range(8)), grad_accum, max_seq_len=128, pad_id=0, packing=packing)
        assert len(micro) == grad_accum and sum(len(b["ids"]) for b in micro) == 8
        for b in micro:
            logits = model(**model_inputs(b, with_labels=False), use_cache=False).logits
            (summed_ce(logits, b["labels"]) / b["n_step_target_tokens"]).backward()
        return [p.grad.clone() for p in model.parameters()]

    one, accum = step_grads(1), step_grads(4)
    assert max((a - b).abs().max().item() for a, b in zip(one, accum)) <= 1e-6
    assert any(g.abs().sum() > 0 for g in one)


def test_build_sft_rows_counts_truncation_and_carries_metadata():
    tok = build_tiny_tokenizer()
    long_answer = " ".join(["Ann has 12 apples."] * 40)
    examples = [
        {"id": "a", "source": "s1", "ability": "math", "task_type": 0,
         "messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "Ann has 3 pens."}]},
        {"id": "b", "source": "s2", "ability": "knowledge", "task_type": 1,
         "messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": long_answer}]},
        {"id": "c", "source": "s2", "ability": "general", "task_type": 0,
         "messages": [{"role": "user", "content": "Who are you? " * 30}, {"role": "assistant", "content": "Me."}]},
    ]
    tset = build_sft_rows(examples, tok, DataConfig(template="chatml", max_seq_len=64))
    assert [r["id"] for r in tset.rows] == ["a", "b"]
    assert tset.truncated == ["b", "c"] and tset.no_target == ["c"]
    assert all(len(r["input_ids"]) <= 64 for r in tset.rows)
    summary = tset.summary()
    assert summary["per_source"]["s2"]["examples"] == 1 and summary["no_target"] == 1
    micro = batches_for_step(tset, [0, 1], grad_accum=1, max_seq_len=64, pad_id=tok.pad_token_id)[0]
    assert micro["task_type"].tolist() == [1, 0] and micro["ids"] == ["b", "a"]  # BFD puts the longer first
    assert micro["input_ids"].shape[0] == 2  # 64 + short > 64: two rows
    assert split_micro_batches(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert split_micro_batches([0], 4) == [[0]]


def test_build_sft_rows_cache_tokenises_each_example_once(monkeypatch):
    """Stages of one run share a cache: an example trained or replayed again is not tokenised again."""
    import mixtune.data.sft_dataset as sd

    calls = []
    real = sd.tokenize_example
    monkeypatch.setattr(sd, "tokenize_example", lambda ex, *a: calls.append(ex["id"]) or real(ex, *a))
    tok = build_tiny_tokenizer()
    examples = [{"id": f"a/{i}", "source": "a", "messages": [{"role": "user", "content": f"q {i}"},
                                                             {"role": "assistant", "content": f"answer {i}"}]}
                for i in range(4)]
    cache: dict = {}
    first = sd.build_sft_rows(examples, tok, DataConfig(template="chatml"), cache)
    again = sd.build_sft_rows(examples[:2], tok, DataConfig(template="chatml"), cache)
    assert calls == ["a/0", "a/1", "a/2", "a/3"]
    assert again.rows[1]["input_ids"] == first.rows[1]["input_ids"]
