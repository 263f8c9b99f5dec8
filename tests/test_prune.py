"""Pruning: Wanda and magnitude pick the weights worked out by hand; unstructured pruning keeps shapes with exact zeros
at the requested sparsity; structured pruning shrinks the layers, saves a normal smaller HF checkpoint that loads with
AutoModelForCausalLM and generates; removing a unit that contributes nothing leaves the logits unchanged."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import chat_examples, tiny_model_section
from transformers import AutoModelForCausalLM

from mixtune.analysis.prune import (
    decoder_linears,
    global_keep_masks,
    input_norms,
    keep_mask,
    linear_sparsity,
    prune_unstructured,
    wanda_scores,
)
from mixtune.analysis.prune_structured import (
    channel_importance,
    groups_to_remove,
    head_importance,
    prune_structured,
)
from mixtune.config import DataConfig, Recipe
from mixtune.data.sft_dataset import batches_for_step, build_sft_rows
from mixtune.evaluate.generate import generate
from mixtune.model.load import build_llama, load_tokenizer

W = torch.tensor([[1.0, -2.0, 3.0, 0.5],
                  [4.0, 1.0, -1.0, 3.0]])  # (out 2, in 4)
X = torch.tensor([[3.0, 0.0, 0.0, 0.0],
                  [0.0, 1.0, 0.0, 0.0],
                  [4.0, 0.0, 2.0, 1.0]])  # 3 calibration tokens: ‖X_j‖₂ = [5, 1, 2, 1]


def test_wanda_picks_the_weights_computed_by_hand():
    norm = X.norm(dim=0)
    assert norm.tolist() == [5.0, 1.0, 2.0, 1.0]
    scores = wanda_scores(W, norm)
    # row 0: [1·5, 2·1, 3·2, 0.5·1] = [5, 2, 6, 0.5] → 50% per row drops inputs 3 and 1
    # row 1: [4·5, 1·1, 1·2, 3·1] = [20, 1, 2, 3]   → drops inputs 1 and 2
    assert scores.tolist() == [[5.0, 2.0, 6.0, 0.5], [20.0, 1.0, 2.0, 3.0]]
    assert keep_mask(scores, 0.5, "row").tolist() == [[True, False, True, False], [True, False, False, True]]
    # magnitude over the matrix drops the four smallest |W| (0.5, then the three 1s): it drops W[0,0] = 1, which
    # Wanda keeps because its input is the largest
    assert keep_mask(W.abs(), 0.5, "matrix").tolist() == [[False, True, True, False], [True, False, False, True]]


def test_global_magnitude_uses_one_threshold_over_matrices():
    a, b = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[0.1, 0.2, 5.0, 6.0]])
    masks = global_keep_masks({"a": a, "b": b}, 0.5)  # the 4 smallest of 8: 0.1, 0.2, 1, 2
    assert masks["a"].tolist() == [[False, False], [True, True]] and masks["b"].tolist() == [[False, False, True, True]]


@pytest.fixture()
def tiny(tiny_tokenizer_dir):
    tok = load_tokenizer(tiny_tokenizer_dir)
    section = {**tiny_model_section(tiny_tokenizer_dir), "num_heads": 4, "num_kv_heads": 2, "hidden_size": 32}
    model = build_llama(Recipe.model_validate({"name": "p", "model": section}).model, tok, seed=3)
    rows = build_sft_rows(chat_examples(12, seed=4), tok, DataConfig(max_seq_len=128))
    batches = batches_for_step(rows, list(range(len(rows))), 2, 128, tok.pad_token_id)
    return model.eval(), tok, batches


def test_input_norms_match_the_layer_inputs_computed_directly(tiny):
    model, _, batches = tiny
    q = decoder_linears(model, 0)["layers.0.self_attn.q_proj"]
    (norm,) = input_norms(model, batches, {"q": q}).values()
    with torch.no_grad():  # block 0's q_proj sees input_layernorm(embeddings) at every real token
        xs = [model.model.layers[0].input_layernorm(model.model.embed_tokens(b["input_ids"]))[b["example_index"] >= 0]
              for b in batches]
    assert torch.allclose(norm, torch.cat(xs).norm(dim=0), rtol=1e-4)


@pytest.mark.parametrize("method", ["magnitude_layer", "magnitude_global", "wanda"])
def test_unstructured_keeps_shapes_with_exact_zeros(tiny, method):
    model, _, batches = tiny
    shapes = {n: m.weight.shape for n, m in decoder_linears(model).items()}
    masks = prune_unstructured(model, method, 0.5, batches)
    linears = decoder_linears(model)
    assert {n: m.weight.shape for n, m in linears.items()} == shapes
    assert linear_sparsity(model) == pytest.approx(0.5, abs=1e-3)
    for name, m in linears.items():
        assert torch.equal(m.weight == 0, ~masks[name])  # zeros exactly where the mask drops
        if method == "magnitude_layer":
            assert (m.weight == 0).float().mean().item() == pytest.approx(0.5, abs=1e-3)
        if method == "wanda":  # per output row
            assert ((m.weight == 0).sum(1) == round(0.5 * m.in_features)).all()


def test_structured_shrinks_saves_loads_and_generates(tiny, tmp_path):
    model, tok, batches = tiny
    before = sum(p.numel() for p in model.parameters())
    info = prune_structured(model, "heads", 0.5, batches)  # 2 key-value groups -> 1 (2 query heads of 4)
    assert info == {"units_before": 2.0, "units_after": 1.0}
    prune_structured(model, "channels", 0.5, batches)  # 64 -> 32
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    assert attn.q_proj.weight.shape == (16, 32) and attn.k_proj.weight.shape == (8, 32)
    assert attn.o_proj.weight.shape == (32, 16) and mlp.down_proj.weight.shape == (32, 32)
    assert sum(p.numel() for p in model.parameters()) < before
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m", local_files_only=True).eval()
    assert (loaded.config.num_attention_heads, loaded.config.num_key_value_heads,
            loaded.config.intermediate_size, loaded.config.head_dim) == (2, 1, 32, 8)
    ids = batches[0]["input_ids"][:1, :20]
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5)
    (text,) = generate(loaded, tok, ["the answer is"], max_new_tokens=5, progress=False)
    assert isinstance(text, str)


def test_removing_a_silent_head_or_channel_changes_nothing(tiny):
    model, _, batches = tiny
    with torch.no_grad():  # group 1 (query heads 2, 3) writes nothing; MLP channel 5 writes nothing, in every block
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[:, 16:] = 0
            layer.mlp.down_proj.weight[:, 5] = 0
    heads, channels = head_importance(model, batches), channel_importance(model, batches)
    assert (heads[:, 1] == 0).all() and (heads[:, 0] > 0).all()
    assert (channels[:, 5] == 0).all() and (channels.argmin(dim=1) == 5).all()
    ids = batches[0]["input_ids"][:1, :20]
    with torch.no_grad():
        dense = model(input_ids=ids).logits
    pruned = copy.deepcopy(model)
    prune_structured(pruned, "heads", 0.5, batches)
    prune_structured(pruned, "channels", 1 / 64, batches)  # exactly one channel: the silent one
    assert pruned.config.intermediate_size == 63
    with torch.no_grad():
        assert torch.allclose(pruned(input_ids=ids).logits, dense, atol=1e-5)


def test_head_counts_that_transformers_refuses_round_to_the_next_valid_one(tiny_tokenizer_dir, tmp_path):
    # 4 heads at hidden 32: removing 1 leaves 3, which does not divide 32 (LlamaConfig refuses it): 2 are removed
    tok = load_tokenizer(tiny_tokenizer_dir)
    section = {**tiny_model_section(tiny_tokenizer_dir), "num_heads": 4, "hidden_size": 32}
    model = build_llama(Recipe.model_validate({"name": "p", "model": section}).model, tok, seed=3).eval()
    rows = build_sft_rows(chat_examples(6, seed=4), tok, DataConfig(max_seq_len=128))
    batches = batches_for_step(rows, list(range(len(rows))), 1, 128, tok.pad_token_id)
    assert groups_to_remove(model, 0.25) == 2 and groups_to_remove(model, 0.75) == 3
    assert prune_structured(model, "heads", 0.25, batches) == {"units_before": 4.0, "units_after": 2.0}
    model.save_pretrained(tmp_path / "m")
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "m").config.num_attention_heads == 2
