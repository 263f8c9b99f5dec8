"""The process reward model: step positions are each line's last token, the head learns step labels with BCE,
min / product aggregation by hand, and a saved PRM loads as a normal token-classification checkpoint."""

from __future__ import annotations

import pytest
from conftest import tiny_model_section
from transformers import AutoModelForTokenClassification

from mixtune.analysis.prm import aggregate, encode_solution, prm_from_causal, score_solutions, train_prm
from mixtune.config import Recipe, TrainConfig
from mixtune.model.load import build_llama, load_tokenizer

PROMPT = [{"role": "user", "content": "how many apples?"}]


@pytest.fixture()
def tok(tiny_tokenizer_dir):
    return load_tokenizer(tiny_tokenizer_dir)


@pytest.fixture()
def prm(tok, tiny_tokenizer_dir):
    causal = build_llama(Recipe.model_validate({"name": "p", "model": tiny_model_section(tiny_tokenizer_dir)}).model,
                         tok, seed=1)
    return prm_from_causal(causal, tok.pad_token_id)


def test_step_positions_are_each_lines_last_token(tok):
    answer = "12 + 30 = 42\n\n42 / 6 = 7\n#### 7"
    ids, ends = encode_solution(tok, PROMPT, answer)
    assert len(ends) == 3  # the blank line is no step
    assert [tok.decode(ids[e]).strip()[-1] for e in ends] == ["2", "7", "7"]
    assert [tok.decode(ids[:e + 1]).endswith(end) for e, end in zip(ends, ("= 42", "= 7", "#### 7"))] == [True] * 3
    _, cut = encode_solution(tok, PROMPT, answer, max_len=ends[1])  # steps cut off by max_len are left out
    assert len(cut) == 1


def test_aggregates_by_hand():
    assert aggregate([0.9, 0.5, 0.8], "min") == 0.5
    assert aggregate([0.9, 0.5, 0.8], "prod") == pytest.approx(0.36)
    assert aggregate([], "min") == 0.0
    with pytest.raises(ValueError, match="min, prod"):
        aggregate([0.5], "mean")


def test_prm_learns_step_labels_and_reloads(prm, tok, tmp_path):
    # a learnable rule at the step's last token: a line ending in an even digit is "correct"
    sols = []
    for i in range(48):
        lines = [f"{i} + {k} = {i + k}" for k in range(1, 4)]
        sols.append({"prompt": PROMPT, "answer": "\n".join(lines), "labels": [(i + k) % 2 == 0 for k in range(1, 4)]})
    cfg = TrainConfig(lr=3e-3, batch_size=8, warmup_ratio=0.0, bf16=False, seed=0)
    before = score_solutions(prm, tok, [s["prompt"] for s in sols], [s["answer"] for s in sols])
    stats = train_prm(prm, tok, sols, cfg, epochs=6, log=lambda _: None)
    after = score_solutions(prm, tok, [s["prompt"] for s in sols], [s["answer"] for s in sols])
    acc = sum((p > 0.5) == lab for s, ps in zip(sols, after) for p, lab in zip(ps, s["labels"])) / (48 * 3)
    assert stats["prm/steps"] == 144 and acc > 0.9
    assert before != after
    prm.save_pretrained(tmp_path / "prm")
    loaded = AutoModelForTokenClassification.from_pretrained(tmp_path / "prm", local_files_only=True)
    again = score_solutions(loaded, tok, [PROMPT], [sols[0]["answer"]])
    assert again[0] == pytest.approx(after[0], abs=1e-5)
    assert score_solutions(loaded, tok, [PROMPT], ["   "]) == [[]]
