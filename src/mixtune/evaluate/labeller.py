"""AI labellers (RLAIF, Lee et al. 2023, arXiv 2309.00267; METHODS.md §6): a model's next-token probabilities as
soft preference labels, read after "Preferred Response=", position-debiased by averaging both candidate orders.

A labeller answers one question, `next_token_probs(conversations, continuation)`: for each conversation (ending
with the user turn to reply to), the probability of the reply's next token after the reply has begun with
`continuation`, keyed by the token's text without surrounding spaces (" 1" and "1" are summed), for the number
tokens "0".."10" (what the preference and score prompts ask for). Two kinds:

- `LocalLabeller`: a local causal LM (a checkpoint or a mixtune run folder): the conversation rendered with the
  model's own chat template up to the assistant's turn, plus `continuation`; one forward pass per batch, softmax
  over the whole vocabulary at the last position (left padding with matching position ids).
- `EndpointLabeller`: any OpenAI-compatible chat endpoint that returns logprobs: a greedy reply of 2 tokens with
  `logprobs: true, top_logprobs: 20`; position 1's top-20 give the first token, position 2's give the next one
  when the greedy first token is `continuation` (else None: the endpoint cannot be asked to continue a reply).
  A candidate outside the top 20 has probability 0 (as far as the endpoint tells).

Soft preference (`soft_preferences`): the pair shown as (chosen, rejected) and as (rejected, chosen); in each order
P(chosen) = P(its number) / (P("1") + P("2")), and the label is the mean over the two orders. A label needs both
orders to give "1" or "2" some probability (else invalid, counted). Position bias is reported: the share of pairs
whose two orders prefer different answers, and how often the answer shown first wins.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any, Protocol

import torch

NUMBER_TEXTS = tuple(str(i) for i in range(11))
"""The token texts a labeller reports ("0".."10": the preference's "1"/"2", the direct score's "1".."10")."""

PREFERENCE_PROMPT = """A good response is correct, helpful, and follows every instruction of the request.

Given a request and two possible responses to it, output 1 or 2 to say which response is better.

Request - {request}

Response 1 - {first}

Response 2 - {second}

Preferred Response="""
"""The labelling prompt (the shape of Lee et al. 2023's: preamble, the candidates numbered, "Preferred Response=")."""


class Labeller(Protocol):
    """Next-token probabilities of a labelling model (see the module docstring)."""

    name: str

    def next_token_probs(self, conversations: Sequence[list[dict]], continuation: str = ""
                         ) -> list[dict[str, float] | None]:
        ...


def fill(template: str, **values: str) -> str:
    """`template` with each {name} replaced by its value, in one pass (values are inserted verbatim)."""
    return re.sub(r"\{(" + "|".join(values) + r")\}", lambda m: values[m.group(1)], template)


def request_text(prompt: Sequence[dict]) -> str:
    """The request a labeller reads: the prompt's turns, the last user turn alone when it is the only one."""
    if len(prompt) == 1:
        return prompt[0]["content"]
    return "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in prompt)


def preference_conversation(prompt: Sequence[dict], first: str, second: str) -> list[dict]:
    return [{"role": "user", "content": fill(PREFERENCE_PROMPT, request=request_text(prompt), first=first,
                                             second=second)}]


class LocalLabeller:
    """A local causal LM as the labeller. `model`, `tokenizer` loaded; `template` as `data.template`."""

    name = "local"

    def __init__(self, model: Any, tokenizer: Any, template: str = "tokenizer", batch_size: int = 8):
        self.model, self.tokenizer, self.template, self.batch_size = model, tokenizer, template, batch_size
        vocab = tokenizer.get_vocab()
        groups: dict[str, list[int]] = {}
        for token_id in vocab.values():
            text = tokenizer.decode([token_id]).strip()
            if text in NUMBER_TEXTS:
                groups.setdefault(text, []).append(token_id)
        self.groups = {k: torch.tensor(sorted(v)) for k, v in groups.items()}

    @classmethod
    def load(cls, path: str, batch_size: int = 8) -> LocalLabeller:
        """A checkpoint or a mixtune run folder (its final/), with its own tokenizer and chat template."""
        from mixtune.model.folders import resolve_final
        from mixtune.model.load import load_checkpoint, load_tokenizer
        from mixtune.model.reward_head import is_reward_model

        folder = resolve_final(path, what="preference.labeller")
        model = load_checkpoint(folder).eval()
        if is_reward_model(model):
            raise ValueError(f"preference.labeller {path}: a reward model has no next-token probabilities; give a "
                             f"causal LM (a generating checkpoint or run folder)")
        return cls(model, load_tokenizer(folder), "tokenizer", batch_size)

    @torch.no_grad()
    def next_token_probs(self, conversations: Sequence[list[dict]], continuation: str = ""
                         ) -> list[dict[str, float] | None]:
        from mixtune.data.templates import render_prompt

        texts = [render_prompt(list(c), self.tokenizer, self.template) + continuation for c in conversations]
        out: list[dict[str, float] | None] = []
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        for start in range(0, len(texts), self.batch_size):
            ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts[start:start + self.batch_size]]
            width = max(map(len, ids))
            input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in ids], device=device)
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in ids], device=device)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: each row's positions start at 0
            logits = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions).logits[:, -1]
            probs = torch.softmax(logits.float(), dim=-1).cpu()  # (B, V)
            out += [{text: float(row[idx].sum()) for text, idx in self.groups.items()} for row in probs]
        return out


class EndpointLabeller:
    """An OpenAI-compatible chat endpoint with logprobs as the labeller (greedy, 2 reply tokens, top 20)."""

    name = "endpoint"

    def __init__(self, base_url: str, model: str, api_key_env: str | None = "OPENAI_API_KEY", concurrency: int = 8,
                 timeout_s: float = 60.0, max_retries: int = 3):
        from mixtune.evaluate.openai_client import ChatClient

        self.client = ChatClient(base_url, model, api_key_env=api_key_env, concurrency=concurrency,
                                 timeout_s=timeout_s, max_retries=max_retries)
        self._replies: dict[str, list[tuple[str, dict[str, float]]]] = {}

    def _reply(self, conversation: list[dict]) -> list[tuple[str, dict[str, float]]]:
        key = json.dumps(conversation, sort_keys=True)
        if key not in self._replies:
            self._replies[key] = self.client.complete_logprobs(conversation, max_tokens=2, top_logprobs=20)
        return self._replies[key]

    def next_token_probs(self, conversations: Sequence[list[dict]], continuation: str = ""
                         ) -> list[dict[str, float] | None]:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=self.client.concurrency) as pool:
            replies = list(pool.map(self._reply, [list(c) for c in conversations]))
        out: list[dict[str, float] | None] = []
        for reply in replies:
            position = 0
            if continuation:
                position = 1 if reply and reply[0][0].strip() == continuation and len(reply) > 1 else -1
            out.append(None if position < 0 or position >= len(reply) else _number_probs(reply[position][1]))
        return out

    def close(self) -> None:
        self.client.close()


def _number_probs(top: dict[str, float]) -> dict[str, float]:
    """{"0".."10": probability} from one position's top log-probs (spaces stripped, variants summed)."""
    out: dict[str, float] = {}
    for token, logprob in top.items():
        text = token.strip()
        if text in NUMBER_TEXTS:
            out[text] = out.get(text, 0.0) + math.exp(logprob)
    return out


def load_labeller(pref: Any) -> Labeller:
    """The labeller a `preference` section names: `labeller` (local) or `labeller_url` + `labeller_model`."""
    if pref.labeller:
        return LocalLabeller.load(pref.labeller, pref.labeller_batch_size)
    if pref.labeller_url:
        labeller = EndpointLabeller(pref.labeller_url, pref.labeller_model, pref.labeller_api_key_env,
                                    concurrency=pref.labeller_batch_size)
        labeller.client.check(fix="start the labeller's server or fix preference.labeller_url")
        return labeller
    raise ValueError("no AI labeller: set preference.labeller (a local model) or preference.labeller_url")


def order_preference(probs: dict[str, float] | None, chosen_first: bool) -> float | None:
    """P(chosen preferred) from one order's probabilities of "1" and "2" (renormalised), None without either."""
    if not probs:
        return None
    p1, p2 = probs.get("1", 0.0), probs.get("2", 0.0)
    if p1 + p2 <= 0:
        return None
    return (p1 if chosen_first else p2) / (p1 + p2)


def soft_preferences(labeller: Labeller, pairs: Sequence[dict]) -> tuple[list[float | None], dict[str, float]]:
    """(label = P(chosen preferred) averaged over both orders, or None; statistics: labelled, invalid,
    position_disagreement (the two orders prefer different answers), first_position_wins, agreement_with_data
    (label > 1/2: the labeller sides with the data's chosen answer), mean_label)."""
    forward = [preference_conversation(p["messages"], p["chosen"], p["rejected"]) for p in pairs]
    backward = [preference_conversation(p["messages"], p["rejected"], p["chosen"]) for p in pairs]
    probs = labeller.next_token_probs(forward + backward)
    labels: list[float | None] = []
    disagree, first_wins, orders = 0, 0, 0
    for k in range(len(pairs)):
        a, b = order_preference(probs[k], True), order_preference(probs[len(pairs) + k], False)
        if a is None or b is None:
            labels.append(None)
            continue
        labels.append((a + b) / 2)
        disagree += (a > 0.5) != (b > 0.5)
        first_wins += (a > 0.5) + (b < 0.5)  # the answer shown first got more than half
        orders += 2
    valid = [x for x in labels if x is not None]
    stats = {"pairs": len(pairs), "labelled": len(valid), "invalid": len(pairs) - len(valid)}
    if valid:
        stats.update(position_disagreement=disagree / len(valid), first_position_wins=first_wins / orders,
                     agreement_with_data=sum(x > 0.5 for x in valid) / len(valid), mean_label=sum(valid) / len(valid))
    return labels, stats
