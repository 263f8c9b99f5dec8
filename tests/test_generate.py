"""Batched generation: batched greedy equals one-by-one greedy, stop strings cut, sampling is seeded, and the
OpenAI-compatible backend talks to a real loopback server."""

from __future__ import annotations

import pytest
import torch
from judge_server import JudgeServer
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from mixtune.evaluate.generate import OpenAIBackend, cut_at_stop, end_token_ids, generate

torch.set_num_threads(1)  # one thread per test process on the shared machine (conftest sets it too)

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]
TEXT = [
    "the cat sat on the mat and the dog ran to the park",
    "alice has 3 apples and bob has 12 pears, how many fruits in all",
    "def add(a, b):\n    return a + b\n",
    "write a short poem about the sea in four lines",
] * 20


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE (~300 tokens) with the mini-lab's special tokens and a ChatML chat template."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(TEXT, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|pad|>", additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    fast.chat_template = CHATML
    return fast


def tiny_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> LlamaForCausalLM:
    """A 2-layer random Llama; eos is <|im_end|> as in the mini-lab chat models."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                      pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"), tie_word_embeddings=True)
    cfg._attn_implementation = "sdpa"
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def tok_model():
    tok = tiny_tokenizer()
    return tok, tiny_model(tok)


PROMPTS = ["the cat", "alice has 3 apples and bob has", "def add(a, b):", "write a poem", "the dog ran to the park and"]


def test_batched_greedy_equals_one_by_one(tok_model):
    tok, model = tok_model
    batched = generate(model, tok, PROMPTS, max_new_tokens=12, batch_size=3, progress=False)
    single = [generate(model, tok, [p], max_new_tokens=12, batch_size=1, progress=False)[0] for p in PROMPTS]
    assert batched == single
    assert any(len(t) > 0 for t in batched)  # a random model still emits text: the comparison is not vacuous
    # Prompts of different lengths really got padded together: the batch size mattered for the padding only.
    assert len({len(tok(p)["input_ids"]) for p in PROMPTS}) > 1


def test_order_restored_and_new_tokens_bounded(tok_model):
    tok, model = tok_model
    out = generate(model, tok, PROMPTS, max_new_tokens=5, batch_size=2, progress=False)
    for prompt, text in zip(PROMPTS, out):
        assert text == generate(model, tok, [prompt], max_new_tokens=5, progress=False)[0]
        assert len(tok(text, add_special_tokens=False)["input_ids"]) <= 6  # BPE may re-merge at most ~1 token


def test_stop_strings_cut_output(tok_model):
    tok, model = tok_model
    full = generate(model, tok, PROMPTS, max_new_tokens=20, progress=False)
    # Pick, for each prompt, a stop string from inside its own greedy continuation.
    stops = [t[3:5] for t in full if len(t) >= 6]
    assert stops, "random model produced only short outputs"
    cut = generate(model, tok, PROMPTS, max_new_tokens=20, stop=stops, progress=False)
    for f, c in zip(full, cut):
        assert c == cut_at_stop(f, stops)
        assert not any(s in c for s in stops)
    assert any(len(c) < len(f) for f, c in zip(full, cut))


def test_stop_string_across_prompt_boundary_does_not_end_the_row(tok_model):
    """"s " spans the prompt's last token ("has") and the first new one (" has"): only the continuation counts."""
    tok, model = tok_model
    prompt = "alice has 3 apples and bob has"
    full = generate(model, tok, [prompt], max_new_tokens=6, progress=False)[0]
    assert full.startswith(" has has")  # what this seeded random model does; the premise of the test
    out = generate(model, tok, [prompt], max_new_tokens=6, stop=["s "], progress=False)[0]
    assert out == " ha"


def test_sampling_is_seeded(tok_model):
    tok, model = tok_model
    kw = {"max_new_tokens": 10, "temperature": 1.0, "top_p": 0.95, "batch_size": 2, "progress": False}
    a = generate(model, tok, PROMPTS, seed=1, **kw)
    b = generate(model, tok, PROMPTS, seed=1, **kw)
    c = generate(model, tok, PROMPTS, seed=2, **kw)
    greedy = generate(model, tok, PROMPTS, max_new_tokens=10, progress=False)
    assert a == b
    assert a != c
    assert a != greedy


def test_checkpoint_generation_config_does_not_leak_in(tok_model):
    """A checkpoint's generation_config.json (repetition penalty, top-k, sampling on) must not change decoding."""
    tok, model = tok_model
    kw = {"max_new_tokens": 10, "progress": False}
    greedy = generate(model, tok, PROMPTS, **kw)
    sampled = generate(model, tok, PROMPTS, temperature=1.0, seed=3, **kw)
    saved = model.generation_config
    model.generation_config = saved.__class__(do_sample=True, temperature=0.01, repetition_penalty=5.0, top_k=1,
                                              no_repeat_ngram_size=1)
    try:
        assert generate(model, tok, PROMPTS, **kw) == greedy
        assert generate(model, tok, PROMPTS, temperature=1.0, seed=3, **kw) == sampled
    finally:
        model.generation_config = saved


def test_end_tokens_include_im_end(tok_model):
    tok, model = tok_model
    ids = end_token_ids(model, tok)
    assert tok.convert_tokens_to_ids("<|im_end|>") in ids and tok.eos_token_id in ids


def test_generation_stops_at_end_of_turn(tok_model):
    """Force the model to emit <|im_end|>: generation ends after one step instead of running 8."""
    tok, model = tok_model
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    calls = []
    hook = model.register_forward_hook(lambda *_: calls.append(1))
    bias = torch.zeros(len(tok))
    bias[im_end] = 1e4
    model.lm_head.bias = torch.nn.Parameter(bias)
    try:
        out = generate(model, tok, PROMPTS[:2], max_new_tokens=8, progress=False)
    finally:
        model.lm_head.bias = None
        hook.remove()
    assert out == ["", ""]
    assert len(calls) == 1  # the prefill step only


def test_openai_backend_over_http():
    with JudgeServer(delay_s=0.0) as server:
        backend = OpenAIBackend(server.base_url, "served-model", api_key_env=None, concurrency=2, backoff_s=0.01)
        try:
            convs = [[{"role": "user", "content": f"<<verdict:answer {i} STOP tail>>"}] for i in range(5)]
            out = backend.chat(convs, max_new_tokens=7, stop=["STOP"])
        finally:
            backend.close()
    assert out == [f"answer {i} " for i in range(5)]
    assert all(r["model"] == "served-model" and r["max_tokens"] == 7 and r["stop"] == ["STOP"]
               for r in server.requests)
