"""Rollouts: N sampled answers per prompt from the policy, with the sampled token ids and their log-probs.

The prompt is the example's conversation without its final assistant turn, rendered with the recipe's chat template
(`render_prompt`, as evaluation renders it) and encoded on its own; a given answer prefix (StepCoder's CCCS) is
encoded separately and appended, as training encodes the template and the answer as separate pieces. Generation is
`evaluate.generate.generate_details(..., return_tokens=True)`: transformers' `generate` with the KV cache, left
padding, the template's end-of-turn token and stop strings, and the log-prob of each sampled token read in the same
forward pass (π_old needs no second pass: `SampledLogprobs`).

The generator sits behind `RolloutBackend` (registry `ROLLOUT_BACKENDS`), so a GPU user can plug vLLM (docs/rl.md):
a backend gets token-id prompts and returns `Sample`s; one that cannot return log-probs returns `logprobs=None` and
the stage recomputes them (`rl.old_logprobs: recompute`). This module imports no torch (the registry is read when a
recipe is validated).
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

ROLLOUT_BACKENDS: dict[str, str] = {
    "hf": "mixtune.train.rollout:HFRollout",
}
"""name -> "module:Class" of a rollout backend, built as Class(model, tokenizer, rl_config)."""


@dataclass(frozen=True)
class Sample:
    """One sampled answer: `prompt` indexes the step's prompts; `token_ids` are the generated ids (end token
    included); `logprobs` their log-probs under the tempered policy (None: the backend has none); `text` the decoded
    answer cut before any stop string; `finish_reason` "stop" or "length"."""

    prompt: int
    prompt_ids: tuple[int, ...]
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...] | None
    text: str
    finish_reason: str


class RolloutBackend(Protocol):
    """What an RL stage needs from a generator."""

    name: str

    def sync(self, model: Any) -> None:
        """Make the generator sample from `model`'s current weights (in-process HF: nothing to do; vLLM: load the
        updated weights into the engine)."""
        ...

    def sample(self, prompt_ids: Sequence[Sequence[int]], *, n: int, max_new_tokens: int, temperature: float,
               top_p: float, stop: Sequence[str], seed: int) -> list[Sample]:
        """`n` samples of every prompt, grouped by prompt (prompt 0's n samples first), seeded by `seed`."""
        ...


class HFRollout:
    """The policy itself through transformers `generate` (KV cache), `rl.rollout_batch_size` sequences at a time."""

    name = "hf"

    def __init__(self, model: Any, tokenizer: Any, cfg: Any):
        self.model, self.tokenizer = model, tokenizer
        self.batch_size = cfg.rollout_batch_size

    def sync(self, model: Any) -> None:
        self.model = model

    def sample(self, prompt_ids: Sequence[Sequence[int]], *, n: int, max_new_tokens: int, temperature: float,
               top_p: float, stop: Sequence[str], seed: int) -> list[Sample]:
        from mixtune.evaluate.generate import generate_details

        repeated = [list(ids) for ids in prompt_ids for _ in range(n)]
        outs = generate_details(self.model, self.tokenizer, repeated, max_new_tokens=max_new_tokens,
                                temperature=temperature, top_p=top_p, stop=stop, batch_size=self.batch_size,
                                seed=seed, progress=False, return_tokens=True)
        return [Sample(k // n, g.prompt_ids, g.token_ids, g.logprobs, g.text, g.finish_reason)
                for k, g in enumerate(outs)]


def make_backend(name: str, model: Any, tokenizer: Any, cfg: Any) -> RolloutBackend:
    """The rollout backend registered as `name`; an unknown name lists the valid ones."""
    if name not in ROLLOUT_BACKENDS:
        raise ValueError(f"unknown rollout backend {name!r}; valid: {', '.join(ROLLOUT_BACKENDS)}")
    module, cls = ROLLOUT_BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)(model, tokenizer, cfg)


# --------------------------------------------------------------------------------------------------- prompts
@dataclass(frozen=True)
class RLPrompt:
    """An RL prompt: the example (gold fields for its reward), the prompt turns, and the reference answer (the
    example's last assistant turn, if any: CCCS takes its canonical code from it)."""

    example: dict
    messages: list[dict]
    reference: str | None = None


def rl_prompts(examples: list[dict]) -> tuple[list[RLPrompt], dict[str, list[str]]]:
    """The prompts of a stage's examples and what could not be one (reason -> ids): a record needs `messages` with
    a user turn; a trailing assistant turn is its reference answer, not part of the prompt."""
    prompts: list[RLPrompt] = []
    dropped: dict[str, list[str]] = {}
    for ex in examples:
        messages = list(ex.get("messages") or [])
        reference = None
        if messages and messages[-1]["role"] == "assistant":
            reference = messages[-1]["content"]
            messages = messages[:-1]
        if not any(m["role"] == "user" for m in messages):
            dropped.setdefault("no user turn to prompt with", []).append(str(ex.get("id")))
            continue
        prompts.append(RLPrompt(ex, messages, reference))
    return prompts, dropped


def encode_prompt(prompt: RLPrompt, tokenizer: Any, template: str, system_prompt: str | None = None,
                  given: str = "") -> list[int]:
    """Token ids of the rendered prompt (ending where the answer starts) followed by those of `given`, the start of
    the answer handed to the model (CCCS), each encoded on its own as training encodes template and answer."""
    from mixtune.data.templates import render_prompt

    ids = tokenizer(render_prompt(prompt.messages, tokenizer, template, system_prompt),
                    add_special_tokens=False)["input_ids"]
    return ids + (tokenizer(given, add_special_tokens=False)["input_ids"] if given else [])


def rollout_seed(seed: int, step: int) -> int:
    """The sampling seed of RL step `step`: rollouts are a function of (weights, seed, step), so a resumed stage
    samples exactly what the uninterrupted one would have (the only place this formula is written)."""
    return seed * 1_000_003 + 7919 * step


@dataclass
class RolloutClock:
    """Rollout throughput, kept apart from the update's: generated tokens / generation wall time."""

    tokens: int = 0
    seconds: float = 0.0
    _t: float = field(default=0.0, repr=False)

    def start(self) -> None:
        self._t = time.perf_counter()

    def stop(self, samples: list[Sample]) -> float:
        """Add one rollout; returns its tokens/s."""
        dt = time.perf_counter() - self._t
        n = sum(len(s.token_ids) for s in samples)
        self.tokens += n
        self.seconds += dt
        return n / max(dt, 1e-9)

    def rate(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)
