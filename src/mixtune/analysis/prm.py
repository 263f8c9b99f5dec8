"""A process reward model (Lightman et al. 2023, "Let's Verify Step by Step"): a token-level classifier that scores
every step of a solution, trained with binary cross-entropy on step labels.

Layout: transformers' token classification (`AutoModelForTokenClassification`, `num_labels=1`, head `score`), the
backbone copied from a causal LM (the policy), so a saved PRM loads with
`AutoModelForTokenClassification.from_pretrained(folder)`. A solution is the chat prompt (rendered as for generation)
followed by the answer, encoded on its own as generation produces it; a step is one line of the answer and its score
is the head's logit at the step's last token (the last character before its newline), where the model has read the
whole step and nothing after it. Step labels come from `analysis/tts.step_labels` (recomputed arithmetic).
A solution's score aggregates its steps' probabilities σ(logit): `min` (the weakest step, our default) or `prod`
(Lightman et al. §3.1: the probability that every step is correct); a solution without a step scores 0.

The training loop is ours and small (AdamW from train/engine, one pass per epoch over seeded shuffles, padded rows):
step labels are not a data-contract record any stage kind trains on.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch

from mixtune.data.packing import collate_padded
from mixtune.data.templates import render_prompt
from mixtune.train import engine
from mixtune.train.losses import step_bce_loss

AGGREGATES = ("min", "prod")


def prm_from_causal(causal, pad_token_id: int, seed: int = 0):
    """A token-classification model holding `causal`'s backbone and a fresh scalar head (no classifier dropout)."""
    from transformers import AutoModelForTokenClassification

    config = copy.deepcopy(causal.config)
    config.num_labels, config.pad_token_id, config.architectures = 1, pad_token_id, None
    config.classifier_dropout = 0.0
    torch.manual_seed(seed)
    prm = AutoModelForTokenClassification.from_config(config, dtype=torch.float32)
    prm.model.load_state_dict(causal.model.state_dict(), strict=True)
    return prm


def encode_solution(tokenizer, prompt: Sequence[dict], answer: str, template: str = "tokenizer",
                    max_len: int | None = None) -> tuple[list[int], list[int]]:
    """(token ids of prompt + answer, the index of each step's last token), steps = the answer's non-blank lines.
    Steps cut off by `max_len` are left out."""
    prompt_ids = tokenizer(render_prompt(list(prompt), tokenizer, template), add_special_tokens=False)["input_ids"]
    enc = tokenizer(answer, add_special_tokens=False, return_offsets_mapping=True)
    ends, at = [], 0
    for line in answer.split("\n"):
        stripped = line.rstrip()
        if stripped.strip():
            last_char = at + len(stripped) - 1
            token = next(t for t, (s, e) in enumerate(enc["offset_mapping"]) if s <= last_char < e)
            ends.append(len(prompt_ids) + token)
        at += len(line) + 1
    ids = prompt_ids + enc["input_ids"]
    if max_len is not None:
        ids, ends = ids[:max_len], [e for e in ends if e < max_len]
    return ids, ends


def _batch(encoded: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Padded batch, and the (row, position) of every step in it."""
    batch = collate_padded([{"input_ids": ids, "labels": ids} for ids, _ in encoded], pad_id)
    rows = torch.tensor([r for r, (_, ends) in enumerate(encoded) for _ in ends], dtype=torch.long)
    cols = torch.tensor([e for _, ends in encoded for e in ends], dtype=torch.long)
    return batch, rows, cols


def step_logits(prm, batch: dict, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """The head's logit at every step position: (S,)."""
    device = next(prm.parameters()).device
    out = prm(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
              use_cache=False).logits  # (B, T, 1)
    return out[rows.to(device), cols.to(device), 0]


def train_prm(prm, tokenizer, solutions: list[dict], train_cfg, *, epochs: float = 2.0, template: str = "tokenizer",
              max_len: int = 512, log=print) -> dict[str, float]:
    """Train `prm` in place on solutions {prompt (messages), answer, labels (one bool per step)}; returns the last
    logged loss and the training step accuracy. `train_cfg` (a TrainConfig) gives lr, batch size, schedule, seed."""
    encoded, labels = [], []
    for sol in solutions:
        ids, ends = encode_solution(tokenizer, sol["prompt"], sol["answer"], template, max_len)
        if ends:
            encoded.append((ids, ends))
            labels.append(sol["labels"][:len(ends)])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    total_steps = max(1, math.ceil(epochs * len(encoded) / train_cfg.batch_size))
    optimizer = engine.make_optimizer(prm, train_cfg)
    scheduler = engine.make_scheduler(optimizer, train_cfg, total_steps)
    prm.train()
    window, hits, seen, order = [], 0, 0, engine.EpochOrder(len(encoded), train_cfg.batch_size, train_cfg.seed)
    for step in range(total_steps):
        _, picked = order.pick(step)
        batch, rows, cols = _batch([encoded[i] for i in picked], pad_id)
        target = torch.tensor([float(x) for i in picked for x in labels[i]])
        logits = step_logits(prm, batch, rows, cols)  # (S,)
        loss = step_bce_loss(logits, target.to(logits.device)) / max(len(target), 1)
        if not math.isfinite(loss.item()):
            raise ValueError(f"PRM loss is {loss.item()} at step {step + 1}; lower tts.prm_lr")
        loss.backward()
        engine.clip_and_step(prm, optimizer, scheduler, train_cfg)
        window.append(loss.item())
        hits += int(((logits.detach() > 0).float().cpu() == target).sum())
        seen += len(target)
        if (step + 1) % max(1, total_steps // 5) == 0 or step + 1 == total_steps:
            log(f"prm step {step + 1}/{total_steps}: loss {sum(window) / len(window):.4f}")
            window = window[-1:]
    prm.eval()
    return {"prm/train_loss": window[-1] if window else float("nan"), "prm/train_step_accuracy": hits / max(seen, 1),
            "prm/solutions": float(len(encoded)), "prm/steps": float(sum(len(x) for x in labels))}


@torch.no_grad()
def score_solutions(prm, tokenizer, prompts: Sequence[Sequence[dict]], answers: Sequence[str], *,
                    template: str = "tokenizer", batch_size: int = 32, max_len: int = 512) -> list[list[float]]:
    """Per solution, the probability σ(logit) the PRM gives each of its steps (in order; [] without a step)."""
    prm.eval()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    encoded = [encode_solution(tokenizer, p, a, template, max_len) for p, a in zip(prompts, answers)]
    out: list[list[float]] = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start:start + batch_size]
        if not any(ends for _, ends in chunk):
            out += [[] for _ in chunk]
            continue
        batch, rows, cols = _batch(chunk, pad_id)
        probs = torch.sigmoid(step_logits(prm, batch, rows, cols).float()).tolist()
        it = iter(probs)
        out += [[next(it) for _ in ends] for _, ends in chunk]
    return out


def aggregate(step_probs: Sequence[float], how: str = "min") -> float:
    """A solution's PRM score from its step probabilities: `min` or `prod`; 0 without a step."""
    if how not in AGGREGATES:
        raise ValueError(f"unknown PRM aggregate {how!r}; valid: {', '.join(AGGREGATES)}")
    if not step_probs:
        return 0.0
    return min(step_probs) if how == "min" else math.prod(step_probs)
