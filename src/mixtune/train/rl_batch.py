"""The tensors of an RL update: rollout samples as padded rows, the policy's token log-probs and entropies, and
the reference policy π_ref (the policy at the stage's start).

Layout (every per-token tensor is (B, L − 1)): row b holds prompt + answer, right-padded to L; position t holds the
prediction of token t + 1 (the transformers shift), so `response_mask[b, t]` is 1 where token t + 1 is an answer
token. Log-probs are those of log_softmax(logits / temperature), the distribution rollouts sample from (see
`evaluate.generate.SampledLogprobs`); only the answer positions go through the output layer.

The reference (`Reference`), chosen per model so no second copy exists where none is needed:
- `adapter_off`: a peft LoRA whose B matrices are all zero at the stage's start (the stage starts from the base)
  is the base itself: the reference is the same model under `disable_adapter()`; no memory.
- `swap`: any other adapter: the start values of the trainable (adapter) parameters are kept and swapped in for the
  reference forward; memory = one copy of the adapter's parameters.
- `copy`: full fine-tuning: a frozen copy of the start model; memory = one more set of weights (4 bytes per
  parameter in fp32: 2 GB for a 0.5B model), without gradients or optimizer state (a quarter of what the policy
  costs with AdamW).
The reference's log-probs of each rollout are computed once, right after the rollout (one extra no-grad forward).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

from mixtune.model.adapters import unwrap_base
from mixtune.train.losses import token_entropy

PROMPT_LEARNING = ("prefix", "prompt")
"""peft adapters that prepend virtual tokens or keys/values: their forward must go through peft."""


@dataclass
class RolloutBatch:
    """The rows of one RL step (or a minibatch of them). Per-token tensors are (B, L − 1); per-sample (B,)."""

    input_ids: Tensor  # (B, L)
    attention_mask: Tensor  # (B, L)
    response_mask: Tensor  # (B, L-1) float
    loss_mask: Tensor  # (B, L-1) float: response ∧ kept sample ∧ FGO keep
    old_logprobs: Tensor  # (B, L-1)
    kept: Tensor  # (B,) float: 1 for samples in the update (0: a dropped reward failure)
    group: Tensor | None = None  # (B,) long: the prompt of each row (rows of one group share their prompt)
    prompt_len: Tensor | None = None  # (B,) long
    ref_logprobs: Tensor | None = None  # (B, L-1)
    advantages: Tensor | None = None  # (B,) or (B, L-1)
    returns: Tensor | None = None  # (B, L-1): ppo
    old_values: Tensor | None = None  # (B, L-1): ppo

    def rows(self, index: Tensor) -> RolloutBatch:
        """The sub-batch of rows `index` (a minibatch)."""
        return replace(self, **{f.name: getattr(self, f.name)[index] for f in fields(self)
                                if getattr(self, f.name) is not None})

    @property
    def n_tokens(self) -> int:
        """Real (non-padding) tokens of the rows: what one forward processes."""
        return int(self.attention_mask.sum())


def build_batch(samples: Sequence, pad_id: int, device: torch.device, kept: Sequence[bool] | None = None,
                token_keep: Sequence[Sequence[bool] | None] | None = None) -> RolloutBatch:
    """Right-padded rows from samples (`rollout.Sample`: prompt_ids, token_ids, logprobs). `kept[i]` False drops
    sample i from the loss; `token_keep[i]` (FGO) per generated token, None = all."""
    width = max(len(s.prompt_ids) + len(s.token_ids) for s in samples)
    b = len(samples)
    input_ids = torch.full((b, width), pad_id, dtype=torch.long)
    attention = torch.zeros((b, width), dtype=torch.long)
    response = torch.zeros((b, width - 1))
    loss_mask = torch.zeros((b, width - 1))
    old = torch.zeros((b, width - 1))
    for i, s in enumerate(samples):
        p, n = len(s.prompt_ids), len(s.token_ids)
        input_ids[i, :p + n] = torch.tensor([*s.prompt_ids, *s.token_ids], dtype=torch.long)
        attention[i, :p + n] = 1
        response[i, p - 1:p - 1 + n] = 1.0  # position t predicts token t + 1
        keep = torch.ones(n) if token_keep is None or token_keep[i] is None else torch.tensor(
            [float(k) for k in token_keep[i]])
        loss_mask[i, p - 1:p - 1 + n] = keep * float(kept is None or kept[i])
        if s.logprobs is not None:
            old[i, p - 1:p - 1 + n] = torch.tensor(s.logprobs)
    kept_rows = torch.tensor([float(k) for k in (kept if kept is not None else [True] * b)])
    group = torch.tensor([s.prompt for s in samples], dtype=torch.long)
    prompt_len = torch.tensor([len(s.prompt_ids) for s in samples], dtype=torch.long)
    return RolloutBatch(*(t.to(device) for t in (input_ids, attention, response, loss_mask, old, kept_rows, group,
                                                 prompt_len)))


def token_logprobs(model, batch: RolloutBatch, temperature: float, adapter: str = "none",
                   entropy: bool = False, shared: bool = True) -> tuple[Tensor, Tensor | None]:
    """(log π(token t+1 | ≤ t) at answer positions, and their entropies if asked), both (B, L − 1), 0 elsewhere.
    Gradients flow into the log-probs; entropies are detached. `shared`: rows of one group run their common prompt
    once (`_shared_prompt_hidden`; the same numbers, less compute)."""
    mask = batch.response_mask.bool()
    targets = batch.input_ids[:, 1:][mask]  # (N,)
    base = unwrap_base(model)
    head = base.get_output_embeddings()
    plain = (adapter not in PROMPT_LEARNING and isinstance(head, torch.nn.Linear) and base.base_model is not base
             and not getattr(base.config, "final_logit_softcapping", None)
             and getattr(base.config, "logit_scale", None) in (None, 1.0))
    if plain and shared and batch.group is not None and len(torch.unique(batch.group)) < len(batch.group):
        logits = head(_shared_prompt_hidden(base.base_model, batch)[mask])  # (N, V)
    elif plain:  # only the N answer positions go through the output layer
        hidden = base.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                 use_cache=False).last_hidden_state  # (B, L, H)
        logits = head(hidden[:, :-1][mask])  # (N, V)
    else:
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
        logits = out[:, -batch.input_ids.shape[1]:][:, :-1][mask]  # prompt tuning: drop virtual positions
    logits = logits.float() / temperature
    logp = torch.log_softmax(logits, dim=-1).gather(1, targets[:, None])[:, 0]  # (N,)
    full = torch.zeros(mask.shape, dtype=logp.dtype, device=logp.device).masked_scatter(mask, logp)
    if not entropy:
        return full, None
    ent = torch.zeros_like(full).masked_scatter(mask, token_entropy(logits.detach()))
    return full, ent


def _shared_prompt_hidden(backbone, batch: RolloutBatch) -> Tensor:
    """The hidden states `backbone(input_ids)` would give at positions 0 … L − 2, (B, L − 1, H), computing each
    group's prompt once: the distinct prompts (left-padded, positions from 0) go through the backbone with a KV
    cache, the cache rows are repeated for the group's answers (an index, so gradients reach the shared prompt), and
    the answers (right-padded, positions continuing their prompt's) attend to it. Only answer-predicting positions
    are filled (the last prompt position and the answer positions); the others are 0. GRPO's n answers per prompt
    then cost one prompt forward instead of n (backward included)."""
    from transformers import DynamicCache

    groups, row_group = torch.unique(batch.group, return_inverse=True)  # (G,), (B,)
    rep = torch.zeros(len(groups), dtype=torch.long, device=row_group.device).scatter_(
        0, row_group, torch.arange(len(row_group), device=row_group.device))  # one row per group
    plen, device = batch.prompt_len, batch.input_ids.device
    width = int(plen[rep].max())
    prompt_ids = torch.zeros((len(groups), width), dtype=torch.long, device=device)
    prompt_mask = torch.zeros_like(prompt_ids)
    for g, r in enumerate(rep.tolist()):  # left padding: every prompt ends at the last column
        n = int(plen[r])
        prompt_ids[g, width - n:], prompt_mask[g, width - n:] = batch.input_ids[r, :n], 1
    cache = DynamicCache()
    out = backbone(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=(prompt_mask.cumsum(1) - 1).clamp(
        min=0), past_key_values=cache, use_cache=True)
    cache.batch_select_indices(row_group)  # (G, ...) -> (B, ...): differentiable indexing
    answer_len = batch.attention_mask.sum(1) - plen  # (B,)
    a_width = int(answer_len.max())
    cols = torch.arange(a_width, device=device)
    at = (plen[:, None] + cols[None]).clamp(max=batch.input_ids.shape[1] - 1)  # (B, A)
    answer_ids = batch.input_ids.gather(1, at)
    answer_mask = (cols[None] < answer_len[:, None]).long()
    answer = backbone(input_ids=answer_ids, attention_mask=torch.cat([prompt_mask[row_group], answer_mask], 1),
                      position_ids=plen[:, None] + cols[None], past_key_values=cache,
                      use_cache=True).last_hidden_state  # (B, A, H)
    hidden = answer.new_zeros((len(row_group), batch.input_ids.shape[1] - 1, answer.shape[-1]))
    rows = torch.arange(len(row_group), device=device)
    hidden[rows, plen - 1] = out.last_hidden_state[row_group, -1]  # the prompt's last position: first answer token
    inner = (cols[None, :-1] < (answer_len[:, None] - 1))  # answer positions that predict a next answer token
    index = (plen[:, None] + cols[None, :-1])[inner]
    hidden[rows[:, None].expand_as(inner)[inner], index] = answer[:, :-1][inner]
    return hidden


def _lora_is_identity(model) -> bool:
    """A peft LoRA whose every B matrix is zero: the adapted model equals its base."""
    config = getattr(model, "peft_config", None)
    if not config or config["default"].peft_type.value != "LORA":
        return False
    b_mats = [p for n, p in model.named_parameters() if "lora_B" in n]
    return bool(b_mats) and all(not p.detach().any() for p in b_mats)


class Reference:
    """π_ref: the policy as it was when the stage started (module docstring: adapter_off, swap or copy)."""

    def __init__(self, model, adapter: str):
        self.adapter = adapter
        self.frozen = None
        self.start: dict[str, Tensor] = {}
        if _lora_is_identity(model):
            self.mode = "adapter_off"
        elif adapter != "none":
            self.mode = "swap"
            self.start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        else:
            self.mode = "copy"
            self.frozen = copy.deepcopy(model).eval()
            self.frozen.requires_grad_(False)

    @property
    def extra_bytes(self) -> int:
        """Memory the reference costs beyond the policy."""
        tensors = list(self.start.values()) or (list(self.frozen.parameters()) if self.frozen is not None else [])
        return sum(t.numel() * t.element_size() for t in tensors)

    @torch.no_grad()
    def logprobs(self, model, batch: RolloutBatch, temperature: float) -> Tensor:
        """(B, L − 1) log π_ref of the batch's answer tokens."""
        if self.mode == "copy":
            return token_logprobs(self.frozen, batch, temperature, self.adapter)[0]
        if self.mode == "adapter_off":
            with model.disable_adapter():
                return token_logprobs(model, batch, temperature, self.adapter)[0]
        params = dict(model.named_parameters())
        for name, start in self.start.items():  # swap pointers, no copy
            params[name].data, self.start[name] = start, params[name].data
        try:
            return token_logprobs(model, batch, temperature, self.adapter)[0]
        finally:
            for name, current in self.start.items():
                params[name].data, self.start[name] = current, params[name].data


def minibatch_indices(n: int, minibatches: int, seed: int) -> list[Tensor]:
    """A seeded shuffle of n rows split into `minibatches` nearly equal parts (reproducible on resume)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return [part for part in torch.tensor_split(order, min(minibatches, n)) if len(part)]


def token_values(critic, batch: RolloutBatch) -> Tensor:
    """V(s_t) for every position, (B, L − 1): the critic's scalar `score` head on the backbone's hidden state at
    position t, the state before token t + 1 is chosen (aligned with `token_logprobs`). The critic is a
    sequence-classification model (a reward model's layout), whose head is read at every position, not only the last."""
    base = unwrap_base(critic)
    backbone = getattr(base, base.base_model_prefix)
    hidden = backbone(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                      use_cache=False).last_hidden_state  # (B, L, H)
    return base.score(hidden[:, :-1]).squeeze(-1).float()  # (B, L-1)
