"""Tokenised preference pairs and the packed micro-batches of one optimizer step (reward model, DPO family).

A pair is tokenised with the SFT chat template and its segmentation (`templates.segment_conversation`): the prompt
turns rendered up to the generation prompt are the prompt tokens, the answer plus its end-of-turn token are the
answer tokens, each piece encoded on its own, exactly as `tokenize_example` does for an SFT answer. Earlier
assistant turns of a multi-turn prompt are prompt (not trained); text the template renders after the answer's
end-of-turn token is dropped (it carries no signal). Chosen and rejected share the prompt tokens.

A micro-batch holds 2·P sequences (prompt + chosen, prompt + rejected for each of its P pairs). Packed (default),
they go into best-fit-decreasing rows with position ids restarting per sequence and no attention mask
(`packing.collate_packed`, call the model with `use_cache=False`), so one forward pass covers the micro-batch and no
sequence attends to another; `chosen_index` / `rejected_index` say which sequence (in `example_index` numbering)
holds each pair's answers. Labels are the answer tokens (IGNORE_INDEX elsewhere), so the sum of a sequence's
token log-probs over its labels is log π(answer | prompt), the quantity of DPO (Rafailov et al. 2023 eq. 7).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch

from mixtune.config import DataConfig
from mixtune.data.packing import collate_packed, collate_padded, pack_bfd
from mixtune.data.sft_dataset import split_micro_batches
from mixtune.data.templates import IGNORE_INDEX, segment_conversation


def tokenize_completion(messages: list[dict], answer: str, tokenizer: Any, template: str,
                        system_prompt: str | None = None) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) of `answer` as the assistant reply to `messages` (the prompt turns): the answer
    ids end with the template's end-of-turn token. The rendering and encoding of `tokenize_example`."""
    conversation = [*messages, {"role": "assistant", "content": answer}]
    pieces = segment_conversation(conversation, tokenizer, template, system_prompt)
    last = max(i for i, (_, trained) in enumerate(pieces) if trained)  # the reply; earlier answers are prompt
    texts = [text for text, _ in pieces[:last + 1]]
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    prompt = [t for ids in encoded[:last] for t in ids]
    return prompt, list(encoded[last])


def tokenize_pair(example: dict, tokenizer: Any, data_cfg: DataConfig, max_prompt_len: int | None = None) -> dict:
    """`{prompt_ids, chosen_ids, rejected_ids, n_tokens (both sequences, before truncation), truncated}`.

    The prompt keeps its last `max_prompt_len` tokens; then each answer is cut so prompt + answer fit
    `data_cfg.max_seq_len`. Raises ValueError when chosen and rejected render different prompts (a template that
    does not render prefixes consistently)."""
    args = (tokenizer, data_cfg.template, data_cfg.system_prompt)
    prompt, chosen = tokenize_completion(example["messages"], example["chosen"], *args)
    other, rejected = tokenize_completion(example["messages"], example["rejected"], *args)
    if prompt != other:
        raise ValueError(f"pair {example['id']}: chosen and rejected render different prompt tokens")
    n_tokens = 2 * len(prompt) + len(chosen) + len(rejected)
    truncated = False
    if max_prompt_len is not None and len(prompt) > max_prompt_len:
        prompt, truncated = prompt[-max_prompt_len:], True
    room = max(data_cfg.max_seq_len - len(prompt), 0)
    if len(chosen) > room or len(rejected) > room:
        chosen, rejected, truncated = chosen[:room], rejected[:room], True
    return {"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected, "n_tokens": n_tokens,
            "truncated": truncated}


@dataclass
class PairSet:
    """Tokenised pairs of one stage, in input order minus those left without an answer token.

    rows[i]: {id, source, weight, label, prompt_ids, chosen_ids, rejected_ids, n_tokens, truncated} (label:
    P(chosen preferred), 1 unless the pair carries a soft label). truncated: ids cut to
    fit (kept). dropped: ids whose prompt fills data.max_seq_len, so an answer has no token left (reported)."""

    rows: list[dict]
    truncated: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    dropped_sources: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    def subset(self, indices: list[int]) -> PairSet:
        """The pairs at `indices` (held-out splits); truncation and drop records stay with the full set."""
        return PairSet([self.rows[i] for i in indices])

    def per_source(self) -> dict[str, dict[str, int]]:
        """source -> {examples, tokens, target_tokens} (both sequences of every pair), as `TokenizedSet.summary`."""
        ex, tok, tgt = Counter(), Counter(), Counter()
        for r in self.rows:
            answers = len(r["chosen_ids"]) + len(r["rejected_ids"])
            ex[r["source"]] += 1
            tok[r["source"]] += 2 * len(r["prompt_ids"]) + answers
            tgt[r["source"]] += answers
        return {k: {"examples": ex[k], "tokens": tok[k], "target_tokens": tgt[k]} for k in ex}

    def dropped_by_source(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for source, pair_id in zip(self.dropped_sources, self.dropped):
            out.setdefault(source, []).append(pair_id)
        return out


def build_pair_rows(examples: list[dict], tokenizer: Any, data_cfg: DataConfig, max_prompt_len: int | None = None,
                    cache: dict | None = None) -> PairSet:
    """Tokenise pair examples once (`cache`, shared by the stages of a run, is keyed ("pair", source, id))."""
    rows, truncated, dropped, dropped_sources = [], [], [], []
    for ex in examples:
        key = ("pair", ex.get("source", ""), ex["id"])
        tok = cache.get(key) if cache is not None else None
        if tok is None:
            tok = tokenize_pair(ex, tokenizer, data_cfg, max_prompt_len)
            if cache is not None:
                cache[key] = tok
        if tok["truncated"]:
            truncated.append(ex["id"])
        if not tok["chosen_ids"] or not tok["rejected_ids"]:
            dropped.append(ex["id"])
            dropped_sources.append(ex.get("source", ""))
            continue
        rows.append({"id": ex["id"], "source": ex.get("source", ""), "weight": float(ex.get("weight", 1.0)),
                     "label": float(ex.get("label", 1.0)), **tok})
    return PairSet(rows, truncated, dropped, dropped_sources)


def pair_sequences(row: dict) -> tuple[dict, dict]:
    """(chosen, rejected) as packable sequences: prompt + answer ids, labels on the answer only."""
    prompt = row["prompt_ids"]
    return tuple({"input_ids": prompt + row[key], "labels": [IGNORE_INDEX] * len(prompt) + row[key]}
                 for key in ("chosen_ids", "rejected_ids"))


def pair_batch(rows: list[dict], capacity: int, pad_id: int, packing: bool = True) -> dict:
    """One micro-batch of the pairs `rows`: collated sequences (see the module docstring) plus
    chosen_index / rejected_index (P,) long: each pair's sequences in example_index numbering; weights (P,) float;
    labels_soft (P,) float: P(chosen preferred) of each pair (1 for a hard label);
    n_sequences int (2P)."""
    sequences = [seq for row in rows for seq in pair_sequences(row)]  # 2k: chosen of pair k, 2k+1: its rejected
    if packing:
        bins = pack_bfd([len(s["input_ids"]) for s in sequences], capacity)
        batch = collate_packed([[sequences[j] for j in b] for b in bins], pad_id)
        order = [j for b in bins for j in b]
    else:
        batch = collate_padded(sequences, pad_id)
        order = list(range(len(sequences)))
    where = {j: pos for pos, j in enumerate(order)}
    batch["chosen_index"] = torch.tensor([where[2 * k] for k in range(len(rows))], dtype=torch.long)
    batch["rejected_index"] = torch.tensor([where[2 * k + 1] for k in range(len(rows))], dtype=torch.long)
    batch["weights"] = torch.tensor([r["weight"] for r in rows], dtype=torch.float32)
    batch["labels_soft"] = torch.tensor([r.get("label", 1.0) for r in rows], dtype=torch.float32)
    batch["n_sequences"] = len(sequences)
    return batch


def pair_micro_batches(pairs: PairSet, indices: list[int], grad_accum: int, capacity: int, pad_id: int,
                       packing: bool = True) -> list[dict]:
    """The micro-batches of one optimizer step over `pairs.rows[indices]`: `grad_accum` near-equal chunks, each a
    `pair_batch` plus `pair_rows` (P,) long (indices into pairs.rows, for cached reference log-probs) and
    `step_weight` (the summed pair weights of the whole step: divide weighted loss sums by it, so accumulation
    4×2 equals 8×1)."""
    micro = []
    for chunk in split_micro_batches(list(indices), grad_accum):
        rows = [pairs.rows[i] for i in chunk]
        longest = max(len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"])) for r in rows)
        batch = pair_batch(rows, max(capacity, longest), pad_id, packing)
        batch["pair_rows"] = torch.tensor(chunk, dtype=torch.long)
        micro.append(batch)
    step_weight = float(sum(pairs.rows[i]["weight"] for i in indices))
    for b in micro:
        b["step_weight"] = step_weight
    return micro
