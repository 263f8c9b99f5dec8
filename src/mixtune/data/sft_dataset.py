"""Tokenised SFT examples and the micro-batches of one optimizer step.

`build_sft_rows` tokenises a stage's examples once (chat template + response-only labels, truncation counted) and
keeps each example's id, source, ability and task type. The SFT trainer draws `batch_size` example indices per
optimizer step; `batches_for_step` splits them into `grad_accum` micro-batches and packs each into rows of at most
`max_seq_len` tokens (or pads them, one example per row). Every micro-batch carries the step's total target-token
count, so summing token losses and dividing by `n_step_target_tokens` makes grad-accum 4×2 equal 8×1 exactly.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from mixtune.config import DataConfig
from mixtune.data.packing import collate_packed, collate_padded, pack_bfd
from mixtune.data.templates import tokenize_example


@dataclass
class TokenizedSet:
    """Tokenised examples of one stage, in input order minus those left without a target token.

    rows[i]: {id, source, ability, task_type, input_ids, labels, n_tokens, n_target_tokens, truncated}.
    truncated: ids of examples cut to max_seq_len (kept). no_target: ids dropped because truncation left no
    assistant token to train on (reported, never silently).
    """

    rows: list[dict]
    truncated: list[str] = field(default_factory=list)
    no_target: list[str] = field(default_factory=list)
    no_target_sources: list[str] = field(default_factory=list)
    """The source of each `no_target` id (ids are unique within a source, not across sources)."""

    def __len__(self) -> int:
        return len(self.rows)

    def no_target_by_source(self) -> dict[str, list[str]]:
        """source -> ids of its drawn examples dropped for having no target token."""
        out: dict[str, list[str]] = {}
        for source, ex_id in zip(self.no_target_sources, self.no_target):
            out.setdefault(source, []).append(ex_id)
        return out

    def summary(self) -> dict[str, Any]:
        """Counts for logs and the run manifest: examples, tokens and target tokens per source and per ability."""
        out: dict[str, Any] = {"examples": len(self.rows), "truncated": len(self.truncated),
                               "no_target": len(self.no_target)}
        for key in ("source", "ability"):
            ex, tok, tgt = Counter(), Counter(), Counter()
            for r in self.rows:
                ex[r[key]] += 1
                tok[r[key]] += len(r["input_ids"])
                tgt[r[key]] += r["n_target_tokens"]
            out[f"per_{key}"] = {k: {"examples": ex[k], "tokens": tok[k], "target_tokens": tgt[k]} for k in ex}
        return out


def build_sft_rows(examples: list[dict], tokenizer: Any, data_cfg: DataConfig,
                   cache: dict | None = None) -> TokenizedSet:
    """Tokenise `examples` (data-contract records) with data_cfg.template / system_prompt / max_seq_len.

    `cache`, shared by the stages of one run (same tokenizer and data config), maps (source, id) to the tokenised
    example, so an example drawn once is tokenised once however many stages train or replay it."""
    rows, truncated, no_target, no_target_sources = [], [], [], []
    for ex in examples:
        key = (ex.get("source", ""), ex["id"])
        tok = cache.get(key) if cache is not None else None
        if tok is None:
            tok = tokenize_example(ex, tokenizer, data_cfg.template, data_cfg.max_seq_len, data_cfg.system_prompt)
            if cache is not None:
                cache[key] = tok
        if tok["truncated"]:
            truncated.append(ex["id"])
        if tok["n_target_tokens"] == 0:
            no_target.append(ex["id"])
            no_target_sources.append(ex.get("source", ""))
            continue
        rows.append({"id": ex["id"], "source": ex.get("source", ""), "ability": ex.get("ability", ""),
                     "task_type": int(ex.get("task_type", 0)), **tok})
    return TokenizedSet(rows=rows, truncated=truncated, no_target=no_target, no_target_sources=no_target_sources)


def split_micro_batches(indices: list[int], grad_accum: int) -> list[list[int]]:
    """`indices` in grad_accum contiguous chunks of near-equal size (sizes differ by ≤ 1); empty chunks dropped."""
    base, extra = divmod(len(indices), grad_accum)
    chunks, at = [], 0
    for k in range(grad_accum):
        size = base + (k < extra)
        chunks.append(indices[at:at + size])
        at += size
    return [c for c in chunks if c]


def batches_for_step(tset: TokenizedSet, indices: list[int], grad_accum: int, max_seq_len: int, pad_id: int,
                     packing: bool = True) -> list[dict]:
    """Micro-batches of one optimizer step over `tset.rows[indices]`.

    Packing: each micro-batch's examples go into BFD rows of ≤ max_seq_len tokens (collate_packed: no attention_mask,
    call the model with use_cache=False). Padding: one example per row (collate_padded, with attention_mask).
    Each dict: input_ids, labels, position_ids, example_index (B, T); task_type (N,); n_target_tokens (this
    micro-batch); n_step_target_tokens (the whole step: normalise the summed token loss by it); ids, source,
    ability (lists of N, in example_index order).
    """
    micro = []
    for chunk in split_micro_batches(list(indices), grad_accum):
        examples = [tset.rows[i] for i in chunk]
        if packing:
            bins = pack_bfd([len(ex["input_ids"]) for ex in examples], max_seq_len)
            ordered = [[examples[j] for j in b] for b in bins]
            batch = collate_packed(ordered, pad_id)
            examples = [ex for row in ordered for ex in row]
        else:
            batch = collate_padded(examples, pad_id)
        batch.update(ids=[ex["id"] for ex in examples], source=[ex["source"] for ex in examples],
                     ability=[ex["ability"] for ex in examples])
        micro.append(batch)
    step_targets = sum(b["n_target_tokens"] for b in micro)
    for b in micro:
        b["n_step_target_tokens"] = step_targets
    return micro
