"""Rollouts: the log-probs kept from the sampling pass equal a teacher-forced forward of the same tokens (fp32),
the update's own forward gives the same numbers (so the first PPO ratio is 1), sampling is seeded by the step,
and the reference is the policy at the stage's start in all three of its forms."""

from __future__ import annotations

import pytest
import torch
from test_generate import tiny_model, tiny_tokenizer

from mixtune.config import AdapterConfig
from mixtune.evaluate.generate import generate_details
from mixtune.model.adapters import apply_adapter
from mixtune.train.rl_batch import Reference, build_batch, minibatch_indices, token_logprobs
from mixtune.train.rollout import HFRollout, RLPrompt, encode_prompt, rl_prompts, rollout_seed

torch.set_num_threads(1)
PROMPTS = ["the cat", "alice has 3 apples and bob has", "def add(a, b):", "write a poem"]


@pytest.fixture(scope="module")
def tok_model():
    tok = tiny_tokenizer()
    return tok, tiny_model(tok)


def teacher_forced(model, prompt_ids, token_ids, temperature):
    ids = torch.tensor([list(prompt_ids) + list(token_ids)])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt_ids) - 1:-1].float() / temperature
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(token_ids)[:, None])[:, 0]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_logprobs_equal_a_teacher_forced_forward(tok_model, temperature):
    tok, model = tok_model
    # left-padded batch of prompts of different lengths, sampled with the KV cache
    gens = generate_details(model, tok, PROMPTS, max_new_tokens=10, temperature=temperature, seed=3,
                            progress=False, return_tokens=True)
    for g in gens:
        assert len(g.token_ids) == len(g.logprobs) == g.n_tokens > 0
        ref = teacher_forced(model, g.prompt_ids, g.token_ids, temperature)
        torch.testing.assert_close(torch.tensor(g.logprobs), ref, atol=1e-5, rtol=0)


def test_update_forward_reproduces_rollout_logprobs(tok_model):
    tok, model = tok_model
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    samples = HFRollout(model, tok, type("C", (), {"rollout_batch_size": 3})()).sample(
        ids, n=2, max_new_tokens=8, temperature=1.0, top_p=1.0, stop=[], seed=5)
    assert [s.prompt for s in samples] == [0, 0, 1, 1, 2, 2, 3, 3]
    batch = build_batch(samples, tok.pad_token_id, torch.device("cpu"))
    with torch.no_grad():
        logp, entropy = token_logprobs(model, batch, 1.0, entropy=True)
    torch.testing.assert_close(logp, batch.old_logprobs, atol=1e-5, rtol=0)  # the first PPO ratio is exactly 1
    assert int(batch.response_mask.sum()) == sum(len(s.token_ids) for s in samples)
    assert (entropy[batch.response_mask.bool()] > 0).all() and (entropy[~batch.response_mask.bool()] == 0).all()


def test_rollouts_are_a_function_of_the_step_seed(tok_model):
    tok, model = tok_model
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    backend = HFRollout(model, tok, type("C", (), {"rollout_batch_size": 8})())

    def run(step):
        return [s.token_ids for s in backend.sample(ids, n=2, max_new_tokens=6, temperature=1.0, top_p=1.0,
                                                    stop=[], seed=rollout_seed(0, step))]

    torch.manual_seed(123)  # global RNG state elsewhere does not matter
    first = run(4)
    torch.rand(10)
    assert run(4) == first and run(5) != first


def test_prompts_drop_the_reference_answer_and_encode_a_given_prefix(tok_model):
    tok, _ = tok_model
    examples = [{"id": "a", "messages": [{"role": "user", "content": "the cat"},
                                         {"role": "assistant", "content": "sat"}]},
                {"id": "b", "messages": [{"role": "system", "content": "x"}]}]
    prompts, dropped = rl_prompts(examples)
    assert [p.reference for p in prompts] == ["sat"] and dropped == {"no user turn to prompt with": ["b"]}
    plain = encode_prompt(prompts[0], tok, "tokenizer")
    given = encode_prompt(prompts[0], tok, "tokenizer", given="the dog")
    assert tok.decode(plain).endswith("<|im_start|>assistant\n")
    assert given == plain + tok("the dog", add_special_tokens=False)["input_ids"]  # encoded apart, as training does
    assert isinstance(prompts[0], RLPrompt)


def _change(model):
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))


@pytest.mark.parametrize("adapter,mode", [("none", "copy"), ("lora", "adapter_off"), ("lora-trained", "swap")])
def test_reference_is_the_start_policy(tok_model, adapter, mode):
    tok, _ = tok_model
    model = tiny_model(tok, seed=1)
    if adapter != "none":
        model = apply_adapter(model, AdapterConfig(type="lora", r=4, target_modules=["q_proj", "v_proj"]))
    if adapter == "lora-trained":  # a stage that starts from an adapter a previous stage trained
        _change(model)
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    samples = HFRollout(model, tok, type("C", (), {"rollout_batch_size": 8})()).sample(
        ids, n=1, max_new_tokens=6, temperature=1.0, top_p=1.0, stop=[], seed=0)
    batch = build_batch(samples, tok.pad_token_id, torch.device("cpu"))
    start = token_logprobs(model, batch, 1.0)[0].detach()
    reference = Reference(model, "none" if adapter == "none" else "lora")
    assert reference.mode == mode
    assert (reference.extra_bytes > 0) == (mode != "adapter_off")
    _change(model)
    moved = token_logprobs(model, batch, 1.0)[0].detach()
    assert (moved - start).abs().max() > 1e-3
    torch.testing.assert_close(reference.logprobs(model, batch, 1.0), start, atol=1e-6, rtol=0)
    torch.testing.assert_close(token_logprobs(model, batch, 1.0)[0].detach(), moved)  # the policy is untouched


def test_minibatches_cover_every_row_once_and_are_seeded():
    parts = minibatch_indices(10, 3, seed=4)
    assert sorted(torch.cat(parts).tolist()) == list(range(10)) and [len(p) for p in parts] == [4, 3, 3]
    assert [p.tolist() for p in minibatch_indices(10, 3, seed=4)] == [p.tolist() for p in parts]


def test_shared_prompt_forward_equals_the_plain_one_in_value_and_gradient(tok_model):
    tok, _ = tok_model
    model = tiny_model(tok, seed=2)
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]  # prompts of 2 to 8 tokens
    samples = HFRollout(model, tok, type("C", (), {"rollout_batch_size": 16})()).sample(
        ids, n=3, max_new_tokens=7, temperature=1.0, top_p=1.0, stop=["e"], seed=1)  # answers of several lengths
    assert len({len(s.token_ids) for s in samples}) > 1
    batch = build_batch(samples, tok.pad_token_id, torch.device("cpu"))
    grads = []
    for shared in (False, True):
        model.zero_grad()
        logp, entropy = token_logprobs(model, batch, 0.8, entropy=True, shared=shared)
        (logp * torch.linspace(0.5, 1.5, logp.shape[1])).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        if not shared:
            plain = (logp.detach(), entropy)
    torch.testing.assert_close(logp.detach(), plain[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(entropy, plain[1], atol=1e-5, rtol=0)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    # a minibatch holding parts of groups, rows shuffled
    rows = torch.tensor([7, 0, 4, 3, 11])
    part = batch.rows(rows)
    torch.testing.assert_close(token_logprobs(model, part, 0.8)[0].detach(), plain[0][rows], atol=1e-5, rtol=0)
