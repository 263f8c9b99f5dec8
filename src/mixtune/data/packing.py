"""Packing without cross-contamination (METHODS §4, Flan / Chung et al. 2022) and padded collation.

Best-fit-decreasing bin packing puts examples into rows of at most `capacity` tokens. `collate_packed` then builds
rows whose `position_ids` restart at 0 for every example and passes **no attention_mask**: transformers 5 (checked
on 5.23 with sdpa and eager) detects the restarts (`masking_utils.find_packed_sequence_indices`) and builds a
block-diagonal causal mask, but only when no KV cache exists, so training must call the model with
`use_cache=False` (with a cache the examples silently attend to each other). Where that detection cannot run (a
prefix-tuning cache, a custom kernel) `block_causal_mask` gives the explicit 4-D additive mask (0 / dtype min; eager
attention needs a float mask, not a bool one).

The loss shift: transformers predicts label p from position p-1, so the first token of every example gets label
IGNORE_INDEX; it is then never a target predicted from the previous example's last token, and a packed row's loss is
exactly the token-weighted mean of the per-example losses (an unpacked example never predicts its token 0 either).
Padding sits at the end of a row with its own restarting positions and label IGNORE_INDEX.

Flash-attention-2 (`model.attn_implementation: flash_attention_2`) never gets a mask: transformers runs its varlen
kernel (no attention across examples) only for a batch of ONE row whose position ids restart, or when the varlen
kwargs `cu_seq_lens_q/k`, `max_length_q/k` are passed (`modeling_flash_attention_utils._flash_attention_forward`,
5.23); a multi-row packed batch would otherwise run as plain causal rows and attend across examples. So on that path
`flatten_packed` lays the micro-batch out as one row of its examples end to end (padding dropped) and
`varlen_kwargs` gives the cumulative example lengths, passed to the model with the position ids.

Our own code: TRL's BFD packer works on `datasets` columns and flattens to one row; we need per-step packing into
several rows plus the per-example bookkeeping (example_index, task_type) LoRAMoE needs.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import torch

from mixtune.data.templates import IGNORE_INDEX


def pack_bfd(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing: indices of `lengths` per bin, each bin's total ≤ capacity.

    Items are taken longest first (ties by index, so the result is deterministic) and each goes into the open bin
    with the least room that still fits it. O(n log n) lookups. Raises ValueError for an item longer than capacity.
    """
    if capacity < 1:
        raise ValueError(f"capacity must be ≥ 1, got {capacity}")
    too_long = [i for i, n in enumerate(lengths) if n > capacity]
    if too_long:
        raise ValueError(f"{len(too_long)} item(s) longer than capacity {capacity}: "
                         f"index {too_long[0]} has {lengths[too_long[0]]} tokens")
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, bin id), sorted
    for i in sorted(range(len(lengths)), key=lambda j: (-lengths[j], j)):
        n = lengths[i]
        k = bisect.bisect_left(free, (n, -1))
        if k == len(free):
            bins.append([i])
            bisect.insort(free, (capacity - n, len(bins) - 1))
        else:
            room, b = free.pop(k)
            bins[b].append(i)
            bisect.insort(free, (room - n, b))
    return bins


def pack_stats(lengths: Sequence[int], bins: list[list[int]], capacity: int) -> dict[str, float]:
    """rows, tokens, fill = tokens / (rows × capacity), and fill_to_longest = tokens / (rows × longest row)."""
    tokens = sum(lengths)
    longest = max((sum(lengths[i] for i in b) for b in bins), default=0)
    rows = len(bins)
    return {"rows": rows, "tokens": tokens, "fill": tokens / (rows * capacity) if rows else 0.0,
            "fill_to_longest": tokens / (rows * longest) if rows else 0.0}


def collate_packed(examples_in_rows: list[list[dict]], pad_id: int) -> dict:
    """Rows of examples → one packed micro-batch, rows right-padded to the longest row (T).

    Each example needs `input_ids` and `labels` (lists, same length); optional `task_type` (default 0).
    Returns:
      input_ids     (B, T) long, pad_id at padding
      labels        (B, T) long, IGNORE_INDEX at padding and at every example's first token
      position_ids  (B, T) long, restarting at 0 per example (and at the start of the padding)
      example_index (B, T) long, index of the token's example in this micro-batch (row-major order), -1 at padding
      task_type     (N,)   long, per example (LoRAMoE: Q[m, n] sums router weights over example_index == m)
      n_target_tokens int, labels != IGNORE_INDEX (the targets the loss is summed over)
    Call the model with `use_cache=False` and no attention_mask (see the module docstring).
    """
    width = max(sum(len(ex["input_ids"]) for ex in row) for row in examples_in_rows)
    shape = (len(examples_in_rows), width)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    example_index = torch.full(shape, -1, dtype=torch.long)
    task_type = []
    for r, row in enumerate(examples_in_rows):
        at = 0
        for ex in row:
            n = len(ex["input_ids"])
            if n == 0 or len(ex["labels"]) != n:
                raise ValueError(f"example {ex.get('id', '?')}: {n} input_ids and {len(ex['labels'])} labels")
            input_ids[r, at:at + n] = torch.tensor(ex["input_ids"])
            labels[r, at:at + n] = torch.tensor(ex["labels"])
            labels[r, at] = IGNORE_INDEX  # never a target predicted from the previous example's last token
            position_ids[r, at:at + n] = torch.arange(n)
            example_index[r, at:at + n] = len(task_type)
            task_type.append(int(ex.get("task_type", 0)))
            at += n
        position_ids[r, at:] = torch.arange(width - at)
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids, "example_index": example_index,
            "task_type": torch.tensor(task_type, dtype=torch.long),
            "n_target_tokens": int((labels != IGNORE_INDEX).sum())}


def collate_padded(examples: list[dict], pad_id: int) -> dict:
    """One example per row, right-padded to the longest (T). Same keys as collate_packed plus
    attention_mask (B, T) long (1 real, 0 padding); position_ids are 0..n-1 per row (0 at padding)."""
    width = max(len(ex["input_ids"]) for ex in examples)
    batch = collate_packed([[ex] for ex in examples], pad_id)
    batch["attention_mask"] = (batch["example_index"] >= 0).long()
    batch["position_ids"] = torch.arange(width).expand(len(examples), -1) * batch["attention_mask"]
    return batch


def block_causal_mask(example_index: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Explicit additive mask (B, 1, T, T): 0 where query t may attend key s (same example, s ≤ t), dtype min
    elsewhere. Padding (example_index -1) attends only to itself so no row is fully masked (no NaN in softmax)."""
    seg = example_index.clone()  # (B, T)
    pad = seg < 0
    seg[pad] = -1 - torch.arange(seg.shape[1], device=seg.device).expand_as(seg)[pad]  # a segment per pad token
    same = seg[:, :, None] == seg[:, None, :]  # (B, T, T)
    causal = torch.ones(seg.shape[1], seg.shape[1], dtype=torch.bool, device=seg.device).tril()
    allowed = same & causal
    mask = torch.zeros(allowed.shape, dtype=dtype, device=seg.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


VARLEN_ATTENTION = {"flash_attention_2", "flash_attention_3", "flash_attention_4"}
"""Attention implementations that take packed rows as one flattened row plus varlen kwargs (no mask)."""

FLATTENED_KEYS = ("input_ids", "labels", "position_ids", "example_index")


def flatten_packed(batch: dict) -> dict:
    """A packed micro-batch (no attention_mask) as one row (1, N) of its N real tokens, examples end to end in
    row-major order (padding dropped); bookkeeping keys are kept. Every example still starts at position 0 with
    label IGNORE_INDEX, so no target is predicted across an example boundary."""
    real = batch["example_index"] >= 0  # (B, T)
    return {**batch, **{k: batch[k][real].unsqueeze(0) for k in FLATTENED_KEYS}}


def varlen_kwargs(position_ids: torch.Tensor) -> dict:
    """transformers' FlashAttentionKwargs for one flattened row: `cu_seq_lens_q/k` (int32, (n_examples + 1,)), the
    offsets where each example starts (its position id is 0) plus the total length, and `max_length_q/k` (int), the
    longest example. position_ids (1, N)."""
    pos = position_ids.reshape(-1)
    starts = (pos == 0).nonzero().view(-1)
    cu = torch.cat([starts, torch.tensor([pos.numel()], device=pos.device)]).to(torch.int32)
    longest = int(cu.diff().max())
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}


MODEL_KEYS = ("input_ids", "labels", "position_ids", "attention_mask")
"""Keys of a collated batch the model takes; the others (example_index, task_type, counts, ids) are bookkeeping."""


def model_inputs(batch: dict, with_labels: bool = True) -> dict:
    """The model's keyword arguments from a collated batch (labels left out when the caller computes the loss)."""
    keys = MODEL_KEYS if with_labels else tuple(k for k in MODEL_KEYS if k != "labels")
    return {k: batch[k] for k in keys if k in batch}
