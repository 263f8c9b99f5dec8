"""The `grpo` stage: Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath §4.1.2), RLOO and Dr. GRPO.

Each RL step samples `rl.n_samples` answers for each of `train.batch_size` prompts (`rl_step.collect`), rewards
them, and turns every answer's reward into one advantage within its group: (r − mean) / std (GRPO), r − mean
(Dr. GRPO, `rl.scale_rewards: none`), or r − mean of the others (RLOO, `rl.baseline: rloo`; Ahmadian et al.
2024). The update makes `rl.ppo_epochs` passes over the rollouts in `rl.minibatches` shuffled minibatches (one
optimizer step each): the clipped-ratio surrogate with π_old = the rollout's own log-probs, aggregated per
sequence (GRPO), per token (DAPO) or by a constant (Dr. GRPO), plus β times a per-token KL(π‖π_ref) estimate (k3 by
default, GRPO eq. 4) against the policy at the stage's start (`rl_batch.Reference`). No value model.
StepCoder's CCCS and FGO apply to code prompts (`stepcoder.py`).
"""

from __future__ import annotations

import time

import torch

from mixtune.config import RecipeError
from mixtune.train import engine
from mixtune.train.losses import KL_ESTIMATORS, aggregate_tokens, clipped_policy_tokens, group_advantages, masked_mean
from mixtune.train.rl_batch import Reference, RolloutBatch, build_batch, minibatch_indices, token_logprobs
from mixtune.train.rl_step import Collected, collect, finish_stage, rollout_metrics, setup_rl
from mixtune.train.stages import StageContext, StageResult


def advantages(c: Collected, n: int, baseline: str, scale: str) -> torch.Tensor:
    """One advantage per sample (S,), groups of n in order; dropped samples (c.kept False) get 0 and are left out
    of their group's baseline and std (a group with fewer than 2 kept samples has no signal)."""
    rewards = torch.tensor(c.rewards, dtype=torch.float32).view(-1, n)  # (G, n)
    kept = torch.tensor(c.kept).view(-1, n)
    if kept.all():
        return group_advantages(rewards, baseline, scale).reshape(-1)
    out = torch.zeros_like(rewards)
    for g in range(rewards.size(0)):
        if int(kept[g].sum()) >= 2:
            out[g, kept[g]] = group_advantages(rewards[g, kept[g]][None], baseline, scale)[0]
    return out.reshape(-1)


def grpo_update(model, optimizer, scheduler, batch: RolloutBatch, ctx: StageContext, step: int) -> dict[str, float]:
    """`rl.ppo_epochs` passes of `rl.minibatches` optimizer steps over one rollout batch; the step's mean loss,
    clip fraction, entropy, KL term, grad norm and update tokens/s."""
    rl, cfg = ctx.recipe.rl, ctx.recipe.train
    device = engine.model_device(model)
    sums = {"loss": 0.0, "clip_fraction": 0.0, "entropy": 0.0, "kl_loss": 0.0, "grad_norm": 0.0}
    n_updates, tokens, t0 = 0, 0, time.perf_counter()
    for epoch in range(rl.ppo_epochs):
        for rows in minibatch_indices(batch.input_ids.shape[0], rl.minibatches, cfg.seed * 7919 + step * 31 + epoch):
            mb = batch.rows(rows.to(device))
            with engine.autocast(cfg, device):
                logp, entropy = token_logprobs(model, mb, rl.temperature, ctx.recipe.adapter.type, entropy=True)
            per_token, clipped = clipped_policy_tokens(logp, mb.old_logprobs, mb.advantages[:, None], rl.clip_eps)
            loss = aggregate_tokens(per_token, mb.loss_mask, rl.loss_agg, rl.max_new_tokens)
            kl_mask = mb.response_mask * mb.kept[:, None]
            if mb.ref_logprobs is not None:  # GRPO eq. 4: β·KL estimate as a loss term, not in the reward
                kl = aggregate_tokens(KL_ESTIMATORS[rl.kl_estimator](logp, mb.ref_logprobs), kl_mask, rl.loss_agg,
                                      rl.max_new_tokens)
                loss = loss + rl.kl_coef * kl
                sums["kl_loss"] += float(kl.detach())
            loss.backward()
            engine.check_finite(float(loss.detach()), step + 1, ctx.folder)
            sums["grad_norm"] += engine.clip_and_step(model, optimizer, scheduler, cfg)
            sums["loss"] += float(loss.detach())
            sums["clip_fraction"] += float(masked_mean(clipped.float(), mb.loss_mask))
            sums["entropy"] += float(masked_mean(entropy, kl_mask))
            n_updates, tokens = n_updates + 1, tokens + mb.n_tokens
    out = {k: v / max(n_updates, 1) for k, v in sums.items()}
    out["update_tokens_per_s"] = tokens / max(time.perf_counter() - t0, 1e-9)
    return out


def run_stage(ctx: StageContext) -> StageResult:
    """Train one GRPO / RLOO stage in place on `ctx.model`; checkpoints and metrics go to `ctx.folder`."""
    # ---- setup
    model, recipe, cfg, rl = ctx.model, ctx.recipe, ctx.recipe.train, ctx.recipe.rl
    t0 = time.perf_counter()
    if rl.n_samples < 2:
        raise RecipeError(f"stage {ctx.name} (grpo): rl.n_samples must be at least 2 (a group), got {rl.n_samples}")
    setup = setup_rl(ctx)  # also refuses several processes
    n_prompts = len(setup.prompts)
    total_steps = engine.stage_steps(cfg, n_prompts)
    updates = rl.ppo_epochs * min(rl.minibatches, cfg.batch_size * rl.n_samples)
    reference = Reference(model, recipe.adapter.type) if rl.kl_coef > 0 else None  # before resume loads weights
    optimizer = engine.make_optimizer(model, cfg, carried=ctx.optimizer_state)
    scheduler = engine.make_scheduler(optimizer, cfg, total_steps * updates)
    state, log = engine.resume_stage(ctx, model, optimizer, scheduler)
    if setup.schedule and "cccs" in state.extra:
        setup.schedule.load_state_dict(state.extra["cccs"])
    history: list[dict] = list(state.extra.get("history", []))
    device, pad_id = engine.model_device(model), ctx.tokenizer.pad_token_id or 0
    ctx.log(f"stage {ctx.name}: grpo on {n_prompts} prompts x {rl.n_samples} samples, {total_steps} steps, "
            f"baseline {rl.baseline}, scale {rl.scale_rewards}, loss {rl.loss_agg}, reference "
            f"{reference.mode if reference else 'none (kl_coef 0)'}")
    order = engine.EpochOrder(n_prompts, cfg.batch_size, cfg.seed)
    # ---- loop
    bar = engine.step_bar(ctx, state, total_steps)
    for step in bar:
        if ctx.stop_at_step is not None and step >= ctx.stop_at_step:
            break
        step_t0 = time.perf_counter()
        _, picked = order.pick(step)
        c = collect(setup, ctx, picked, step)
        batch = build_batch(c.samples, pad_id, device, c.kept, c.token_keep)
        model.eval()
        # π_old from the rollout itself unless asked (or the backend gave none); under the update's numerics
        with torch.no_grad(), engine.autocast(cfg, device):
            if rl.old_logprobs == "recompute" or any(s.logprobs is None for s in c.samples):
                batch.old_logprobs = token_logprobs(model, batch, rl.temperature, recipe.adapter.type)[0]
            if reference is not None:
                batch.ref_logprobs = reference.logprobs(model, batch, rl.temperature)
        batch.advantages = advantages(c, rl.n_samples, rl.baseline, rl.scale_rewards).to(device)
        model.train()
        stats = grpo_update(model, optimizer, scheduler, batch, ctx, step)
        kl = float(masked_mean(batch.old_logprobs - batch.ref_logprobs, batch.response_mask)) if reference else 0.0
        metrics = {**rollout_metrics(c), **stats, "kl": kl, "lr": scheduler.get_last_lr()[0],
                   "step_s": time.perf_counter() - step_t0}
        if setup.schedule:
            metrics["cccs_stage"] = float(setup.schedule.stage)
            setup.schedule.update(c.pass_rate)
        state.step = step + 1
        history.append(metrics)
        if state.step % cfg.log_every == 0 or state.step == total_steps:
            log.log(state.step, **metrics)
        bar.set_postfix(reward=f"{metrics['reward_mean']:.3f}", kl=f"{kl:.3f}")
        # ---- save (checkpoints carry the curriculum and the metric history)
        state.extra = {"history": history, **({"cccs": setup.schedule.state_dict()} if setup.schedule else {})}
        if cfg.save_every and state.step % cfg.save_every == 0:
            engine.save_checkpoint(ctx.folder, model, optimizer, scheduler, state, full=recipe.adapter.type == "none")
    bar.close()
    result = finish_stage(ctx, setup, history, state.step, total_steps, log, time.perf_counter() - t0)
    if result.finished and not cfg.fresh_optimizer:
        result.optimizer_state = optimizer.state_dict()
    return result
