"""The serving engine without HTTP: `generate_details` token counts and finish reasons checked against transformers'
own `generate` output, which requests share a batch key, and the worker splitting a queue into compatible calls
whose results go back to the right requests."""

from __future__ import annotations

import pytest
import torch

from mixtune.evaluate.generate import _generation_config, generate, generate_details
from mixtune.serve import engine as engine_module
from mixtune.serve.engine import BatchEngine, Sampling, load_served

PROMPTS = ["USER: the city of 12 ASSISTANT:", "USER: how many apples ASSISTANT:", "USER: yes ASSISTANT:"]


@pytest.fixture(scope="module")
def loaded(base_dir):
    return load_served(base_dir)


def raw_new_tokens(loaded, prompt: str, max_new_tokens: int) -> list[int]:
    """transformers' greedy continuation of one prompt, with generate's end tokens, no stop strings."""
    cfg = _generation_config(loaded.model, loaded.tokenizer, max_new_tokens, 0.0, 1.0)
    ids = torch.tensor([loaded.tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    with torch.inference_mode():
        out = loaded.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=cfg)
    return out[0, ids.shape[1]:].tolist()


def test_token_counts_and_finish_reasons_match_transformers(loaded):
    end_ids = set(_generation_config(loaded.model, loaded.tokenizer, 8, 0.0, 1.0).eos_token_id)
    details = generate_details(loaded.model, loaded.tokenizer, PROMPTS, max_new_tokens=8, batch_size=3, progress=False)
    assert [d.text for d in details] == generate(loaded.model, loaded.tokenizer, PROMPTS, max_new_tokens=8,
                                                 batch_size=3, progress=False)
    for prompt, d in zip(PROMPTS, details):
        raw = raw_new_tokens(loaded, prompt, 8)
        ended = next((k + 1 for k, t in enumerate(raw) if t in end_ids), None)
        assert d.n_tokens == (ended or 8) and d.finish_reason == ("stop" if ended else "length")
        assert d.text == loaded.tokenizer.decode(raw[:ended - 1] if ended else raw, skip_special_tokens=True)
    # a stop string inside the continuation: cut before it, "stop", fewer tokens than the budget (rows that finish
    # early are padded by transformers; the padding is not counted)
    full = details[0].text
    stop = next(full[k:k + 2] for k in range(1, len(full) - 1) if full[k:k + 2].isascii() and full[k:k + 2].strip())
    cut = generate_details(loaded.model, loaded.tokenizer, PROMPTS, max_new_tokens=8, batch_size=3, stop=[stop],
                           progress=False)
    assert cut[0].text == full[:full.find(stop)] and cut[0].finish_reason == "stop" and cut[0].n_tokens < 8
    assert [c.text for c in cut[1:]] == [d.text.split(stop)[0] for d in details[1:]]


def test_an_end_token_counts_and_finishes_with_stop(base_dir):
    loaded = load_served(base_dir)  # its own copy: the head gets a bias
    eos = loaded.tokenizer.eos_token_id
    bias = torch.zeros(loaded.model.lm_head.out_features)
    bias[eos] = 1e4  # eos wins from the first step
    loaded.model.lm_head.bias = torch.nn.Parameter(bias)
    out = generate_details(loaded.model, loaded.tokenizer, PROMPTS[:2], max_new_tokens=8, progress=False)
    assert [(g.text, g.n_tokens, g.finish_reason) for g in out] == [("", 1, "stop")] * 2


def test_batch_keys():
    greedy = [Sampling(8), Sampling(8, temperature=0.0, top_p=0.5), Sampling(8, seed=3)]
    assert len({s.batch_key(i) for i, s in enumerate(greedy)}) == 1  # greedy ignores top_p and seed
    assert Sampling(9).batch_key(0) != Sampling(8).batch_key(0)  # max_tokens differ
    assert Sampling(8, stop=("x",)).batch_key(0) != Sampling(8).batch_key(0)
    assert Sampling(8, add_special_tokens=True).batch_key(0) != Sampling(8).batch_key(0)  # completion vs chat
    hot = Sampling(8, temperature=0.7, top_p=0.9)
    assert hot.batch_key(1) == hot.batch_key(2) != Sampling(8, temperature=0.8, top_p=0.9).batch_key(1)
    seeded = Sampling(8, temperature=0.7, seed=5)
    assert seeded.batch_key(1) != seeded.batch_key(2)  # a seeded request runs alone, so it reproduces


def test_worker_splits_the_queue_into_compatible_calls(loaded, monkeypatch):
    calls: list[tuple[int, int]] = []
    real = engine_module.generate_details

    def spy(model, tokenizer, prompts, **kwargs):
        calls.append((len(prompts), kwargs["max_new_tokens"]))
        return real(model, tokenizer, prompts, **kwargs)

    monkeypatch.setattr(engine_module, "generate_details", spy)
    engine = BatchEngine(loaded, max_batch=3, window_s=0.5)  # a long window: every job below is pending at once
    try:
        jobs = [(PROMPTS[0:1], Sampling(6)), (PROMPTS[1:2], Sampling(4)), (PROMPTS[1:3], Sampling(6)),
                (PROMPTS[2:3], Sampling(6))]
        futures = [engine.submit(p, s) for p, s in jobs]
        results = [[g.text for g in f.result(timeout=60)] for f in futures]
    finally:
        engine.close()
    # the first job's key (max 6) takes jobs 0 and 2 (3 rows = max_batch); job 3 waits for the next call
    assert calls == [(3, 6), (1, 4), (1, 6)]
    for (prompts, s), texts in zip(jobs, results):
        assert texts == generate(loaded.model, loaded.tokenizer, prompts, max_new_tokens=s.max_new_tokens,
                                 progress=False)
    assert engine.snapshot()["generate_calls"] == 3 and engine.snapshot()["max_requests_per_call"] == 2
