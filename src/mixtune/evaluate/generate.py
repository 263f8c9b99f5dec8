"""Batched generation shared by every benchmark: transformers `generate` with the KV cache, or a served model.

transformers does the decoding (greedy or nucleus sampling, KV cache); ours is only the batching and stopping
around it:
- left padding, so every row's last prompt token sits at the same position and new tokens append in lockstep
  (decoder-only models generate wrong continuations from right-padded batches);
- length-sorted batches (longest first, so an out-of-memory error shows in the first batch) with the input order
  restored, which cuts padding work;
- per-row stopping: generation ends for a row at any end-of-turn token (the tokenizer's eos, the model's
  generation-config eos ids, and `<|im_end|>` when the vocabulary has it) or when a stop string appears in the
  row's *continuation*; the decoded continuation is then cut before the first stop string. The stop-string
  criterion is ours (as lm-evaluation-harness's `MultiTokenEOSCriteria`): transformers' `StopStringCriteria`
  also fires on a stop string that spans the prompt/continuation boundary, ending a row whose output holds no
  stop string at all;
- seeded sampling: batch `b` is sampled under `torch.manual_seed(seed + b)`, so a rerun with the same prompts and
  batch size gives the same texts.

Backends (`GenerationBackend`): `HFBackend` (a loaded model; chat prompts rendered with
`mixtune.data.templates.render_prompt`) and `OpenAIBackend` (an OpenAI-compatible server; messages in, text out).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

log = logging.getLogger(__name__)

Message = dict[str, str]
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>")


def end_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Token ids that end a reply: tokenizer eos, the model's generation-config eos ids, known end-of-turn tokens."""
    ids: list[int] = []
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (tokenizer.eos_token_id, gen_eos):
        ids += value if isinstance(value, list) else ([value] if value is not None else [])
    vocab = tokenizer.get_vocab()
    ids += [vocab[tok] for tok in END_OF_TURN_TOKENS if tok in vocab]
    return sorted(set(ids))


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to the earliest occurrence of any stop string."""
    cut = len(text)
    for s in stop:
        if s:
            pos = text.find(s)
            if pos != -1:
                cut = min(cut, pos)
    return text[:cut]


class StopOnStrings(StoppingCriteria):
    """Ends a row once any stop string appears in its generated tokens (the prompt is never looked at).

    Only the last `lookback` generated tokens are decoded each step: a stop string of k UTF-8 bytes spans at most
    k tokens (every non-special token holds at least one byte), plus two for merges at its edges.
    """

    def __init__(self, stop: Sequence[str], tokenizer: Any, prompt_len: int):
        self.stop = [s for s in stop if s]
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len
        self.lookback = max((len(s.encode()) for s in self.stop), default=0) + 2

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        tails = self.tokenizer.batch_decode(input_ids[:, self.prompt_len:][:, -self.lookback:])
        done = [any(s in text for s in self.stop) for text in tails]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)  # (B,)


def _max_prompt_tokens(model: Any, max_new_tokens: int) -> int | None:
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return None if limit is None else max(1, limit - max_new_tokens)


@dataclass(frozen=True)
class Generated:
    """One continuation: `text` (special tokens dropped, cut before the first stop string), `n_tokens` generated
    for it (its end token included, the padding after the row finished excluded) and `finish_reason`: "stop" (an
    end token or a stop string) or "length" (`max_new_tokens` reached)."""

    text: str
    n_tokens: int
    finish_reason: str


def generate(model: Any, tokenizer: Any, prompts: Sequence[str], **kwargs: Any) -> list[str]:
    """The continuations' texts of `generate_details` (same arguments), in input order."""
    return [g.text for g in generate_details(model, tokenizer, prompts, **kwargs)]


@torch.inference_mode()
def generate_details(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    stop: Sequence[str] = (),
    batch_size: int = 16,
    seed: int = 0,
    add_special_tokens: bool = False,
    progress: bool = True,
    desc: str = "generate",
) -> list[Generated]:
    """Continue each prompt; returns the decoded continuations with their token counts, in input order.

    `temperature == 0` is greedy; otherwise sampling with `temperature` and `top_p`. `add_special_tokens=False`
    suits chat-rendered prompts, which already hold their special tokens (a second BOS would shift the model).
    A prompt longer than `max_position_embeddings - max_new_tokens` keeps its last tokens (logged).
    """
    if not prompts:
        return []
    encoded = [tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"] for p in prompts]
    keep = _max_prompt_tokens(model, max_new_tokens)
    if keep is not None and any(len(ids) > keep for ids in encoded):
        n_long = sum(len(ids) > keep for ids in encoded)
        log.warning("%d prompt(s) longer than %d tokens keep only their last %d tokens", n_long, keep, keep)
        encoded = [ids[-keep:] for ids in encoded]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    gen_cfg = _generation_config(model, tokenizer, max_new_tokens, temperature, top_p)
    end_ids = set(gen_cfg.eos_token_id)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    outputs: list[Generated] = [Generated("", 0, "stop")] * len(prompts)
    bar = tqdm(total=len(prompts), desc=desc, disable=not progress, leave=True)  # stays: the record of each pass
    try:
        for b, start in enumerate(range(0, len(order), batch_size)):
            rows = order[start:start + batch_size]
            input_ids, attention_mask = _left_pad([encoded[i] for i in rows], gen_cfg.pad_token_id, device)
            if gen_cfg.do_sample:
                torch.manual_seed(seed + b)
            criteria = StoppingCriteriaList([StopOnStrings(stop, tokenizer, input_ids.shape[1])] if stop else [])
            out = model.generate(
                input_ids=input_ids, attention_mask=attention_mask, generation_config=gen_cfg,
                stopping_criteria=criteria,
            )  # (B, T_prompt + T_new)
            for row, i in enumerate(rows):
                new = out[row, input_ids.shape[1]:].tolist()
                outputs[i] = _finish_row(new, end_ids, gen_cfg.pad_token_id, tokenizer, stop, max_new_tokens)
            bar.update(len(rows))
    finally:
        bar.close()
        model.train(was_training)
    return outputs


def _finish_row(new: list[int], end_ids: set[int], pad_id: int, tokenizer: Any, stop: Sequence[str],
                max_new_tokens: int) -> Generated:
    """A row's continuation up to its first end token; without one, up to the padding transformers appends to a
    row that a stop string finished before the rest of the batch."""
    end = next((k for k, t in enumerate(new) if t in end_ids), None)
    if end is not None:
        return Generated(cut_at_stop(tokenizer.decode(new[:end], skip_special_tokens=True), stop), end + 1, "stop")
    n = len(new)
    while n and new[n - 1] == pad_id:
        n -= 1
    text = tokenizer.decode(new[:n], skip_special_tokens=True)
    cut = cut_at_stop(text, stop)
    return Generated(cut, n, "stop" if len(cut) < len(text) or n < max_new_tokens else "length")


def _left_pad(rows: list[list[int]], pad_id: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), each (B, T), padded on the left."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for k, r in enumerate(rows):
        if r:
            input_ids[k, width - len(r):] = torch.tensor(r, dtype=torch.long)
            attention_mask[k, width - len(r):] = 1
    return input_ids.to(device), attention_mask.to(device)


def _generation_config(model: Any, tokenizer: Any, max_new_tokens: int, temperature: float,
                       top_p: float) -> GenerationConfig:
    end_ids = end_token_ids(model, tokenizer)
    if not end_ids:
        raise ValueError("generation needs an end token: the tokenizer has no eos_token and no <|im_end|>")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end_ids[0]
    # transformers fills every field left unset from the checkpoint's generation_config.json (Qwen2.5 ships
    # repetition_penalty 1.05, top_k 20, ...): spell out neutral values so decoding is exactly what the recipe says.
    # (Sampling-only fields are set only when sampling: greedy ignores them, and transformers warns about them.)
    neutral: dict[str, Any] = {"num_beams": 1, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
                               "min_new_tokens": 0}
    sampling: dict[str, Any] = {"do_sample": False}
    if temperature > 0:
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0, "min_p": 0.0,
                    "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0}
    return GenerationConfig(
        max_new_tokens=max_new_tokens, eos_token_id=end_ids, pad_token_id=pad_id, use_cache=True,
        **neutral, **sampling,
    )


# ---------------------------------------------------------------------------------------------------- backends
class GenerationBackend(Protocol):
    """What the runner needs from a generator: chat conversations and raw prompts in, texts out."""

    name: str

    def chat(self, conversations: Sequence[Sequence[Message]], **kwargs: Any) -> list[str]:
        """One assistant reply per conversation (kwargs: max_new_tokens, temperature, top_p, stop, seed)."""
        ...

    def complete(self, prompts: Sequence[str], **kwargs: Any) -> list[str]:
        """One continuation per completion-style prompt."""
        ...


class HFBackend:
    """A loaded transformers model. Chat prompts go through `render_prompt(messages, tokenizer, template)` and
    generation also stops at the template's stop strings."""

    name = "hf"

    def __init__(self, model: Any, tokenizer: Any, template: str = "tokenizer", batch_size: int = 16,
                 progress: bool = True):
        from mixtune.data.templates import stop_strings

        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.batch_size = batch_size
        self.progress = progress
        self.template_stop = list(stop_strings(template, tokenizer))

    def render(self, messages: Sequence[Message]) -> str:
        from mixtune.data.templates import render_prompt

        return render_prompt(list(messages), self.tokenizer, self.template)

    def chat(self, conversations: Sequence[Sequence[Message]], *, stop: Sequence[str] = (), **kwargs: Any) -> list[str]:
        prompts = [self.render(c) for c in conversations]
        return generate(self.model, self.tokenizer, prompts, stop=[*self.template_stop, *stop],
                        batch_size=self.batch_size, progress=self.progress, **kwargs)

    def complete(self, prompts: Sequence[str], **kwargs: Any) -> list[str]:
        # Raw text prompts get the tokenizer's BOS like any document the model was trained on.
        return generate(self.model, self.tokenizer, list(prompts), add_special_tokens=True,
                        batch_size=self.batch_size, progress=self.progress, **kwargs)


class OpenAIBackend:
    """A model served behind an OpenAI-compatible server (vLLM, TGI, llama.cpp, `mixtune serve`, ...).

    Chat prompts go to `/chat/completions` (the server applies its chat template); completion-style prompts go to
    `/completions` as raw text, as `HFBackend.complete` prompts an in-process model.
    """

    name = "openai"

    def __init__(self, base_url: str, model: str, *, api_key_env: str | None = "OPENAI_API_KEY",
                 concurrency: int = 8, max_retries: int = 5, timeout_s: float = 300.0, backoff_s: float = 1.0):
        from mixtune.evaluate.openai_client import ChatClient

        self.client = ChatClient(base_url, model, api_key_env=api_key_env, concurrency=concurrency,
                                 max_retries=max_retries, timeout_s=timeout_s, backoff_s=backoff_s)

    def chat(self, conversations: Sequence[Sequence[Message]], **kwargs: Any) -> list[str]:
        return self._many([list(c) for c in conversations], raw=False, **kwargs)

    def complete(self, prompts: Sequence[str], **kwargs: Any) -> list[str]:
        return self._many(list(prompts), raw=True, **kwargs)

    def _many(self, items: list, *, raw: bool, max_new_tokens: int = 256, temperature: float = 0.0,
              top_p: float = 1.0, stop: Sequence[str] = (), seed: int = 0, desc: str = "", **_: Any) -> list[str]:
        texts = self.client.complete_many(
            items, raw=raw, max_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
            stop=list(stop) or None, seed=seed,
        )
        return [cut_at_stop(str(t), stop) for t in texts]  # servers honour at most 4 stop strings

    def close(self) -> None:
        self.client.close()
