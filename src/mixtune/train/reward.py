"""One reward-model stage: the LM with a scalar head on the last real token, trained on preference pairs with the
pairwise loss −log σ(r_w − r_l − m) (InstructGPT eq. 1; margin m as Llama 2; METHODS.md §5).

The `reward` stage kind (`train/stages.py`), on the skeleton of every stage file. The stage changes the model's
class: `output_model` builds the reward model (`model/reward_head.py`: transformers' sequence-classification layout,
the causal LM's backbone and, with LoRA, its adapter continued with `modules_to_save=["score"]`), the loop trains it,
and the result hands it back (`StageResult.model`) so the run saves it as the final model
(`AutoModelForSequenceClassification.from_pretrained(final)`, or the peft adapter on the base). Pairs are packed
as in DPO, one forward pass per micro-batch; each sequence's reward is the head at its last token
(`evaluate/reward_model.reward_scores`, the scorer `mixtune eval rank` and the RL stages use). The step loss is
Σ_p w_p·loss_p / Σ_p w_p (w = 1/C(K,2) for the pairs of a K-answer ranked list). One epoch by default
(`preference.reward_epochs`; more overfits, InstructGPT §3.5). Reported: train and held-out pair accuracy (held-out:
the sources' eval_count pairs and `preference.eval_fraction`). With `preference.soft_label` the pairs' soft labels
(P(chosen preferred), RLAIF: `train/rlaif.py`) are the targets of a cross-entropy loss instead.
"""

from __future__ import annotations

import time

import torch

from mixtune.config import Recipe
from mixtune.data.pair_dataset import PairSet, pair_micro_batches
from mixtune.evaluate.reward_model import reward_scores
from mixtune.model.reward_head import reward_model_from_causal
from mixtune.runs import atomic_write_json
from mixtune.train import engine
from mixtune.train.dpo import stage_pairs
from mixtune.train.losses import reward_pairwise_loss, soft_pairwise_loss
from mixtune.train.pair_forward import capacity, mean_stats, packs, pad_id, reduce_stats, step_pair_micros
from mixtune.train.stages import StageContext, StageResult


def output_model(model, recipe: Recipe, tokenizer):
    """The reward model this stage trains and leaves: built from `model` (the causal LM as the stage starts)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with engine.dist_setup().whole_params(model):  # ZeRO-3: the backbone gathered on every rank for the copy
        return reward_model_from_causal(model, pad, seed=recipe.train.seed)


def reward_micro_loss(model, micro: dict, recipe: Recipe) -> tuple[torch.Tensor, dict]:
    """(Σ_p w_p·loss_p / step weight, sums for logging: loss, accuracy (the reward order agrees with the pair's
    label: r_w > r_l for a hard label), margin r_w − r_l, weight). With `preference.soft_label` the loss is the
    soft-label cross-entropy on each pair's `label` (RLAIF); else −log σ(r_w − r_l − m)."""
    with engine.autocast(recipe.train, engine.model_device(model)):
        rewards = reward_scores(model, micro)  # (S,)
    device = rewards.device
    r_chosen, r_rejected = rewards[micro["chosen_index"].to(device)], rewards[micro["rejected_index"].to(device)]
    label = micro["labels_soft"].to(device)  # (P,) P(chosen preferred): 1 unless a pair carries a soft label
    if recipe.preference.soft_label:
        losses = soft_pairwise_loss(r_chosen, r_rejected, label)  # (P,)
    else:
        losses = reward_pairwise_loss(r_chosen, r_rejected, recipe.preference.margin)  # (P,)
    weights = micro["weights"].to(device)
    margin = (r_chosen - r_rejected).detach()
    # agreement with the label's side (a soft label of exactly 1/2 has none: half credit)
    agree = torch.where(label == 0.5, 0.5, ((margin > 0) == (label > 0.5)).float())
    stats = {"loss": float((weights * losses.detach()).sum()), "accuracy": float((weights * agree).sum()),
             "margin": float((weights * margin).sum()), "weight": float(weights.sum())}
    return (weights * losses).sum() / micro["step_weight"], stats


@torch.no_grad()
def evaluate_rewards(model, held: dict[str, PairSet], recipe: Recipe) -> dict[str, float]:
    """Pairwise loss, accuracy and mean margin on held-out pairs."""
    model.eval()
    out = {}
    for name, pairs in held.items():
        n = max(1, recipe.train.batch_size // recipe.train.grad_accum)
        sums = [reward_micro_loss(model, micro, recipe)[1] for start in range(0, len(pairs), n)
                for micro in pair_micro_batches(pairs, list(range(start, min(start + n, len(pairs)))), 1,
                                                capacity(recipe), pad_id(model), packs(recipe))]
        out.update({f"eval/{name}/{k}" if k == "loss" else f"eval/{name}/reward/{k}": v
                    for k, v in mean_stats(sums).items()})
    model.train()
    return out


def run_stage(ctx: StageContext) -> StageResult:
    """Build the reward model from `ctx.model`, train it on the pairs of `ctx.examples`; the result carries it."""
    # ---- setup
    recipe, cfg = ctx.recipe, ctx.recipe.train
    dist = engine.dist_setup()  # one process, or a rank of torchrun / accelerate launch
    t0 = time.perf_counter()
    pairs, held = stage_pairs(ctx)
    model = output_model(ctx.model, recipe, ctx.tokenizer)
    n_tokens = sum(v["tokens"] for v in pairs.per_source().values())
    ctx.log(f"stage {ctx.name}: reward model on {len(pairs)} pairs, {n_tokens} tokens, {len(pairs.truncated)} "
            f"truncated, {len(pairs.dropped)} dropped; margin {recipe.preference.margin}")
    step_size = cfg.batch_size * dist.world_size  # batch_size is per process
    total_steps = engine.stage_steps(cfg, len(pairs), dist.world_size, recipe.preference.reward_epochs)
    forward = dist.wrap(model)  # DDP / FSDP (which shards the parameters: before the optimizer is made)
    optimizer = engine.make_optimizer(model, cfg)  # a new model: the previous stage's moments do not apply
    scheduler = engine.make_scheduler(optimizer, cfg, total_steps)
    state, log = engine.resume_stage(ctx, model, optimizer, scheduler)  # the metrics log: rank 0
    full = recipe.adapter.type == "none"
    pad = pad_id(model)
    speed = engine.Throughput()
    order, window, last = engine.EpochOrder(len(pairs), step_size, cfg.seed, log=log), [], {}
    # ---- loop
    model.train()
    bar = engine.step_bar(ctx, state, total_steps)
    for step in bar:
        if ctx.stop_at_step is not None and step >= ctx.stop_at_step:
            break
        speed.step_start()
        epoch, picked = order.pick(step)  # every rank's pairs; this rank trains its share
        micros = step_pair_micros(dist, pairs, picked, recipe, pad)
        step_sums, step_tokens = [], 0
        for micro, weight in micros:  # weight 0: a repeat that only keeps the ranks in step
            loss, sums = forward(reward_micro_loss, micro, recipe)
            (weight * dist.world_size * loss).backward()  # x world_size: DDP / FSDP average over ranks
            step_sums.append((sums, weight))
            step_tokens += int(weight) * int((micro["example_index"] >= 0).sum())
        window.append(reduce_stats(dist, step_sums))  # the whole step's, over all ranks
        step_tokens = dist.all_reduce_sum(step_tokens)
        engine.check_finite(window[-1]["loss"], step + 1, ctx.folder)
        grad_norm = engine.clip_and_step(model, optimizer, scheduler, cfg)
        speed.step_done(step_tokens)
        state.step = step + 1
        if state.step % cfg.log_every == 0 or state.step == total_steps:
            last = {f"reward/{k}" if k != "loss" else k: v for k, v in mean_stats(window).items()}
            log.log(state.step, **last, lr=scheduler.get_last_lr()[0], grad_norm=grad_norm,
                    tokens_per_s=speed.window_rate(), epoch=epoch)
            bar.set_postfix(loss=f"{last['loss']:.3f}", acc=f"{last['reward/accuracy']:.2f}")
            window = []
            speed.reset_window()
        # ---- evaluate (mid-stage) and save (checkpoints)
        if cfg.eval_every and state.step % cfg.eval_every == 0 and held:
            log.log(state.step, **forward(evaluate_rewards, held, recipe))
        if cfg.save_every and state.step % cfg.save_every == 0:
            engine.save_checkpoint(ctx.folder, model, optimizer, scheduler, state, full=full)
    bar.close()
    finished = state.step >= total_steps
    held_metrics = forward(evaluate_rewards, held, recipe) if finished and held else {}
    result = StageResult(ctx.name, ctx.kind, state.step, finished, len(pairs), n_tokens,
                         train_loss=last.get("loss"), wall_s=time.perf_counter() - t0,
                         tokens_per_s=speed.overall_rate(), metrics={**last, **held_metrics},
                         eval_loss={k.split("/")[1]: v for k, v in held_metrics.items() if k.endswith("/loss")},
                         dropped={"prompt fills max_seq_len: no answer token": list(pairs.dropped)}, model=model)
    log.log(state.step, **held_metrics, stage_done=ctx.name)
    log.close()
    if dist.is_main:
        atomic_write_json(ctx.folder / "stage.json", result.record())
    return result
