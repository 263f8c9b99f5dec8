"""A trained reward model as a scorer: reward of each conversation's last answer, and best-of-N ranking.

`reward_scores(model, batch)` is the one definition of a reward: the `score` head of a sequence-classification model
(`model/reward_head.py`) applied to the backbone's hidden state at each sequence's last real token, for packed rows
(the reward stage trains on them) and padded rows alike. `score_texts(model, tokenizer, conversations)` tokenises
each conversation as the reward stage does (prompt turns + the last assistant answer and its end-of-turn token,
`data/pair_dataset.tokenize_completion`), so a reward at evaluation time is the reward the model was trained on.
The RL stages use it as their reward.

`mixtune eval rank --reward-model DIR --samples FILE --out FILE [--best FILE]` adds `reward` and `reward_rank`
(1 = highest reward within its task_id) to every row of a samples file that has `messages` (the prompt; as in the
`samples.jsonl` that `mixtune eval run` writes) and `completion`; `--best` also writes the highest-reward row of
each task_id, which `mixtune eval score --samples` then scores: best-of-N with the reward model as the ranker.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import torch

from mixtune.data.packing import collate_padded, model_inputs
from mixtune.data.pair_dataset import tokenize_completion
from mixtune.model.adapters import unwrap_base


def last_positions(example_index: torch.Tensor, n_sequences: int) -> torch.Tensor:
    """Flat index (into B·T) of each sequence's last token; example_index (B, T), -1 at padding → (S,)."""
    flat = example_index.reshape(-1)
    valid = flat >= 0
    positions = torch.arange(flat.numel(), device=flat.device)
    last = torch.full((n_sequences,), -1, dtype=torch.long, device=flat.device)
    return last.scatter_reduce(0, flat[valid], positions[valid], reduce="amax")


def reward_scores(model: Any, batch: dict) -> torch.Tensor:
    """Rewards (S,) fp32 of the S sequences of a collated batch (packed: no attention mask, positions restarting per
    sequence; padded: with attention_mask), read by the `score` head at each sequence's last token."""
    base = unwrap_base(model)
    if not hasattr(base, "score"):
        raise ValueError(f"{type(base).__name__} has no `score` head: not a reward model")
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in model_inputs(batch, with_labels=False).items()}
    hidden = getattr(base, base.base_model_prefix)(**inputs, use_cache=False).last_hidden_state  # (B, T, H)
    n = int(batch["example_index"].max()) + 1
    last = last_positions(batch["example_index"].to(device), n)  # (S,)
    return base.score(hidden.reshape(-1, hidden.shape[-1])[last]).squeeze(-1).float()  # (S,)


@torch.no_grad()
def score_texts(model: Any, tokenizer: Any, conversations: Sequence[Sequence[dict]], template: str = "tokenizer",
                system_prompt: str | None = None, batch_size: int = 16, max_seq_len: int | None = None) -> list[float]:
    """The reward of each conversation's last (assistant) message as the answer to the turns before it."""
    was_training = model.training
    model.eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    sequences = []
    for conv in conversations:
        if not conv or conv[-1]["role"] != "assistant":
            raise ValueError("score_texts: each conversation must end with the assistant answer to score")
        prompt, answer = tokenize_completion(list(conv[:-1]), conv[-1]["content"], tokenizer, template, system_prompt)
        ids = (prompt + answer)[-max_seq_len:] if max_seq_len else prompt + answer
        sequences.append({"input_ids": ids, "labels": ids})
    out: list[float] = []
    try:
        for start in range(0, len(sequences), batch_size):
            out += reward_scores(model, collate_padded(sequences[start:start + batch_size], pad)).tolist()
    finally:
        model.train(was_training)
    return out


def rank_rows(rows: list[dict], rewards: list[float]) -> tuple[list[dict], list[dict]]:
    """(every row with `reward` and `reward_rank` within its task_id, the best row of each task_id in first-seen
    order). Ties keep the earlier row."""
    scored = [{**r, "reward": float(x)} for r, x in zip(rows, rewards)]
    groups: dict[Any, list[int]] = {}
    for i, r in enumerate(scored):
        groups.setdefault(r["task_id"], []).append(i)
    best = []
    for members in groups.values():
        ordered = sorted(members, key=lambda i: (-scored[i]["reward"], i))
        for rank, i in enumerate(ordered, start=1):
            scored[i]["reward_rank"] = rank
        best.append(scored[ordered[0]])
    return scored, best


def main(argv: Sequence[str]) -> int:
    """`mixtune eval rank`: reward every sample of a samples file with a trained reward model."""
    from mixtune.jsonl import iter_jsonl
    from mixtune.model.load import load_checkpoint, load_tokenizer
    from mixtune.runs import write_jsonl

    parser = argparse.ArgumentParser(prog="mixtune eval rank", description=__doc__.split("\n")[0])
    parser.add_argument("--reward-model", required=True, help="reward model folder (a reward run's final/)")
    parser.add_argument("--samples", required=True, help="JSONL rows with task_id, messages (prompt), completion")
    parser.add_argument("--out", required=True, help="write every row with reward and reward_rank here")
    parser.add_argument("--best", help="also write the highest-reward row of each task_id here")
    parser.add_argument("--template", default="tokenizer", help="chat template the reward model was trained with")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(list(argv))
    rows = [obj for _, obj in iter_jsonl(args.samples, what="samples file")]
    bad = [i + 1 for i, r in enumerate(rows) if not {"task_id", "messages", "completion"} <= set(r)]
    if bad:
        print(f"mixtune eval rank: {args.samples}:{bad[0]}: a row needs task_id, messages and completion "
              f"({len(bad)} rows lack them)", file=sys.stderr)
        return 2
    model, tokenizer = load_checkpoint(args.reward_model), load_tokenizer(args.reward_model)
    conversations = [[*r["messages"], {"role": "assistant", "content": r["completion"]}] for r in rows]
    scored, best = rank_rows(rows, score_texts(model, tokenizer, conversations, args.template,
                                               batch_size=args.batch_size))
    write_jsonl(args.out, scored)
    if args.best:
        write_jsonl(args.best, best)
    print(f"mixtune eval rank: {len(rows)} samples over {len(best)} task ids rewarded -> {args.out}")
    return 0
