"""Forward passes of the preference stages over pair micro-batches (`data/pair_dataset.py`): sequence log-probs of
the policy, the cached reference log-probs, and the DPO-family step loss. Shared by `dpo` and the stages built on
it (SPIN, self-rewarding: a DPO stage per iteration with the iteration's start model as reference).

Log-probs are response-only sums (Rafailov et al. 2023 eq. 7): the output layer runs only at answer positions, as
`losses.target_token_ce` does for SFT (the same value as full logits; prompt-learning adapters and heads with logit
scaling take the full-logits path). The reference log-probs are computed ONCE per pair before training, in eval mode
(no dropout), from the model as the stage starts (`preference.reference: start`) or, with a peft adapter, from the
same model with the adapter disabled (`base`): no second model in memory either way.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F

from mixtune.config import Recipe
from mixtune.data.packing import model_inputs
from mixtune.data.pair_dataset import PairSet, pair_micro_batches
from mixtune.data.templates import IGNORE_INDEX
from mixtune.model.adapters import unwrap_base
from mixtune.train import engine
from mixtune.train.losses import dpo_loss, per_sequence_logps
from mixtune.train.sft import PROMPT_LEARNING, _plain_head


def packs(recipe: Recipe) -> bool:
    """Whether pair sequences are packed (else padded, one per row: prompt-learning adapters need that)."""
    return recipe.data.packing and recipe.adapter.type not in PROMPT_LEARNING


def capacity(recipe: Recipe) -> int:
    """Packed row length (a micro-batch's longest sequence raises it)."""
    return recipe.data.pack_len or recipe.data.max_seq_len


def sequence_logps(model, micro: dict, recipe: Recipe) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ answer-token log-probs (S,) fp32, answer tokens (S,)) of the micro-batch's S sequences, with grad."""
    device = engine.model_device(model)
    labels = micro["labels"].to(device)
    shift = labels[:, 1:]  # (B, T-1): position t predicts token t+1
    mask = shift != IGNORE_INDEX
    sequence = micro["example_index"].to(device)[:, 1:][mask]  # (N,) the sequence of each target
    inputs = {k: v.to(device) for k, v in model_inputs(micro, with_labels=False).items()}
    base = unwrap_base(model)
    head = base.get_output_embeddings()
    with engine.autocast(recipe.train, device):
        if recipe.adapter.type in PROMPT_LEARNING or not _plain_head(base, head):
            if recipe.adapter.type in PROMPT_LEARNING:  # peft numbers positions itself, after the virtual tokens
                inputs.pop("position_ids", None)
            logits = model(**inputs, use_cache=False).logits[:, -labels.shape[1]:]  # (B, T, V)
            target_logits = logits[:, :-1][mask]  # (N, V)
        else:
            hidden = base.base_model(**inputs, use_cache=False).last_hidden_state  # (B, T, H)
            target_logits = F.linear(hidden[:, :-1][mask], head.weight, head.bias)  # (N, V)
    return per_sequence_logps(target_logits, shift[mask], sequence, micro["n_sequences"])


def reference_context(model, reference: str):
    """The context the reference forward runs in: the model as it is (`start`), or its adapter off (`base`)."""
    if reference == "start":
        return nullcontext()
    if not hasattr(model, "disable_adapter"):
        raise ValueError("preference.reference: base needs a peft adapter (lora, prefix, prompt); with full "
                         "fine-tuning or our own adapters use reference: start")
    return model.disable_adapter()


@torch.no_grad()
def reference_logps(model, pairs: PairSet, recipe: Recipe, pairs_per_batch: int | None = None) -> torch.Tensor:
    """(P, 2) fp32 log π_ref(chosen), log π_ref(rejected) of every pair, computed once (eval mode, no grad), on the
    CPU. `pairs_per_batch` defaults to train.batch_size // train.grad_accum (the training micro-batch)."""
    cfg = recipe.train
    per_batch = pairs_per_batch or max(1, cfg.batch_size // cfg.grad_accum)
    out = torch.zeros(len(pairs), 2)
    pad = pad_id(model)
    was_training = model.training
    model.eval()
    try:
        with reference_context(model, recipe.preference.reference):
            for start in range(0, len(pairs), per_batch):
                indices = list(range(start, min(start + per_batch, len(pairs))))
                (micro,) = pair_micro_batches(pairs, indices, 1, capacity(recipe), pad, packs(recipe))
                logps, _ = sequence_logps(model, micro, recipe)
                out[indices, 0] = logps[micro["chosen_index"].to(logps.device)].cpu()
                out[indices, 1] = logps[micro["rejected_index"].to(logps.device)].cpu()
    finally:
        model.train(was_training)
    return out


def step_pair_micros(dist, pairs: PairSet, picked: list[int], recipe: Recipe, pad: int) -> list[tuple[dict, float]]:
    """This rank's (micro-batch, weight) pairs of one optimizer step over `picked` (every rank's pairs; weight 0: a
    repeat that keeps the ranks in step), each micro-batch's `step_weight` set to the summed pair weights of the
    whole step over all ranks. DDP and FSDP average gradients over ranks: backward `weight * world_size * loss` and
    the gradients are those of one process with the whole step (2 × b trains like 1 × 2b)."""
    micros = dist.micro_batches(picked, recipe.train.grad_accum, lambda ids, n: pair_micro_batches(
        pairs, ids, n, capacity(recipe), pad, packs(recipe)))
    total = dist.all_reduce_sum(sum(float(m["weights"].sum()) * w for m, w in micros))
    for micro, _ in micros:
        micro["step_weight"] = max(total, 1e-12)
    return micros


def reduce_stats(dist, weighted: list[tuple[dict, float]]) -> dict[str, float]:
    """The summed logging stats of one step, over all ranks: `weighted` holds each micro-batch's stats
    (`dpo_micro_loss`, `reward_micro_loss`) and its weight (0 for a repeat: counted as nothing). Every rank has at
    least one micro-batch, so every rank reduces the same keys."""
    keys = list(weighted[0][0])
    return dict(zip(keys, dist.all_reduce_sum([sum(s[k] * w for s, w in weighted) for k in keys])))


def pad_id(model) -> int:
    pad = getattr(unwrap_base(model).config, "pad_token_id", None)
    return 0 if pad is None else int(pad)


def dpo_micro_loss(model, micro: dict, reference: torch.Tensor, recipe: Recipe) -> tuple[torch.Tensor, dict]:
    """(Σ_p w_p·loss_p / step weight, sums for logging) of one micro-batch; `reference` is the (P_all, 2) cache.

    IPO compares per-token mean log-ratios (Azar et al. 2023 as TRL, whose length normalisation the IPO authors
    confirmed); the other losses sequence sums. Logged sums (weighted by pair weight): loss, chosen / rejected
    implicit rewards β(log π − log π_ref), margin, accuracy (chosen reward > rejected reward)."""
    pref = recipe.preference
    logps, counts = sequence_logps(model, micro, recipe)  # (S,)
    device = logps.device
    ci, ri = micro["chosen_index"].to(device), micro["rejected_index"].to(device)
    ref = reference[micro["pair_rows"]].to(device)  # (P, 2)
    pc, pr, rc, rr = logps[ci], logps[ri], ref[:, 0], ref[:, 1]
    if pref.loss == "ipo":
        nc, nr = counts[ci].clamp(min=1), counts[ri].clamp(min=1)
        pc, pr, rc, rr = pc / nc, pr / nr, rc / nc, rr / nr
    losses, chosen_rewards, rejected_rewards = dpo_loss(
        pc, pr, rc, rr, pref.beta, label_smoothing=pref.label_smoothing, ipo=pref.loss == "ipo",
        hinge=pref.loss == "hinge")
    weights = micro["weights"].to(device)  # (P,)
    loss = (weights * losses).sum() / micro["step_weight"]
    margin = chosen_rewards - rejected_rewards
    stats = {"loss": float((weights * losses.detach()).sum()), "chosen": float((weights * chosen_rewards).sum()),
             "rejected": float((weights * rejected_rewards).sum()), "margin": float((weights * margin).sum()),
             "accuracy": float((weights * (margin > 0).float()).sum()), "weight": float(weights.sum())}
    return loss, stats


def mean_stats(sums: list[dict]) -> dict[str, float]:
    """Weighted means of summed micro-batch stats (each divided by the total pair weight)."""
    total = sum(s["weight"] for s in sums) or 1.0
    return {k: sum(s[k] for s in sums) / total for k in sums[0] if k != "weight"} if sums else {}
