"""The `ppo` stage: InstructGPT's PPO (Ouyang et al. 2022; Stiennon et al. 2020; METHODS.md §5), optionally PPO-ptx.

Each RL step samples answers (`rl_step.collect`), rewards them, and builds per-token rewards r_t = −β·k1_t with
k1_t = log π_old(a_t) − log π_ref(a_t), the sequence's reward added on its last token. GAE (γ, λ) over the answer
tokens with the critic's values gives advantages (whitened over the batch's tokens) and returns. The update makes
`rl.ppo_epochs` passes in `rl.minibatches` shuffled minibatches: clipped policy loss + c_v · clipped value loss
(+ γ_ptx · the LM loss of `rl.ptx_source`), one AdamW over the policy's and the critic's trainable parameters.
β is fixed, or adapted towards `rl.kl_target` (Ziegler et al. 2019's controller) after every step.

The critic is a separate model in the reward model's layout (backbone + scalar `score` head, read at every
position): a copy of the reward model of the first `reward_model` reward term when there is one (InstructGPT
initialises the value function from the reward model), else the policy's backbone with a new head
(`model/reward_head.reward_model_from_causal`, which also copies a LoRA adapter). Separate rather than a head on
the policy's hidden states, because the value loss would otherwise pull on the policy's own features (InstructGPT
and OpenRLHF train separate critics); the cost is a second model, its gradients and optimizer state.
"""

from __future__ import annotations

import time

import torch

from mixtune.data.sft_dataset import batches_for_step, build_sft_rows
from mixtune.train import engine
from mixtune.train.losses import (
    adaptive_kl_coef,
    gae,
    kl_k1,
    masked_mean,
    masked_token_ce,
    masked_whiten,
    ppo_policy_loss,
    ppo_value_loss,
)
from mixtune.train.rl_batch import Reference, RolloutBatch, build_batch, minibatch_indices, token_logprobs, token_values
from mixtune.train.rl_step import Collected, collect, finish_stage, rollout_metrics, setup_rl
from mixtune.train.stages import StageContext, StageResult


def make_critic(ctx: StageContext):
    """The value model (module docstring), trainable, on the policy's device."""
    from mixtune.model.load import load_checkpoint
    from mixtune.model.reward_head import reward_model_from_causal

    rl = ctx.recipe.rl
    reward_model = next((s for s in rl.rewards if s.kind == "reward_model"), None)
    device = engine.model_device(ctx.model)
    if rl.critic_init == "auto" and reward_model is not None:
        critic = load_checkpoint(reward_model.path)
        critic.requires_grad_(True)
    else:
        pad = ctx.tokenizer.pad_token_id if ctx.tokenizer.pad_token_id is not None else 0
        critic = reward_model_from_causal(ctx.model, pad, seed=ctx.recipe.train.seed)
    return critic.to(device).train()


def token_rewards(c: Collected, batch: RolloutBatch, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-token rewards (B, L − 1), per-token k1 (B, L − 1)): r_t = −β·k1_t, plus the sequence's reward on its
    last answer token (InstructGPT eq. 2)."""
    mask = batch.response_mask
    k1 = kl_k1(batch.old_logprobs, batch.ref_logprobs) * mask if batch.ref_logprobs is not None else torch.zeros_like(
        mask)
    rewards = -beta * k1
    last = mask.shape[1] - 1 - mask.flip(1).argmax(dim=1)  # (B,) position of each row's last answer token
    score = torch.tensor(c.rewards, dtype=rewards.dtype, device=rewards.device)
    rewards[torch.arange(mask.shape[0], device=mask.device), last] += score
    return rewards, k1


def ptx_loss(model, ptx_rows, ctx: StageContext, seed: int) -> torch.Tensor:
    """PPO-ptx's LM term: mean target-token cross-entropy of `rl.ptx_batch_size` seeded examples of the ptx source."""
    rl, device = ctx.recipe.rl, engine.model_device(model)
    pick = torch.randint(len(ptx_rows), (rl.ptx_batch_size,), generator=torch.Generator().manual_seed(seed)).tolist()
    pad = ctx.tokenizer.pad_token_id or 0
    micro = engine.to_device(batches_for_step(ptx_rows, pick, 1, ctx.recipe.data.max_seq_len, pad, packing=False)[0],
                             device)
    logits = model(input_ids=micro["input_ids"], attention_mask=micro["attention_mask"], use_cache=False).logits
    loss_sum, n = masked_token_ce(logits.float(), micro["labels"])
    return loss_sum / n.clamp(min=1)


def ppo_update(model, critic, params, optimizer, scheduler, batch: RolloutBatch, ptx_rows, ctx: StageContext,
               step: int) -> dict[str, float]:
    """`rl.ppo_epochs` passes of `rl.minibatches` optimizer steps; the step's mean losses, clip fraction, entropy,
    grad norm and update tokens/s. `params` holds policy and critic (one optimizer, clipped together)."""
    rl, cfg, device = ctx.recipe.rl, ctx.recipe.train, engine.model_device(model)
    sums = dict.fromkeys(("loss", "policy_loss", "value_loss", "ptx_loss", "clip_fraction", "entropy", "grad_norm"),
                         0.0)
    n_updates, tokens, t0 = 0, 0, time.perf_counter()
    for epoch in range(rl.ppo_epochs):
        for rows in minibatch_indices(batch.input_ids.shape[0], rl.minibatches, cfg.seed * 7919 + step * 31 + epoch):
            mb = batch.rows(rows.to(device))
            value_mask = mb.response_mask * mb.kept[:, None]
            with engine.autocast(cfg, device):
                logp, entropy = token_logprobs(model, mb, rl.temperature, ctx.recipe.adapter.type, entropy=True)
                values = token_values(critic, mb)
            policy, clip_fraction = ppo_policy_loss(logp, mb.old_logprobs, mb.advantages, mb.loss_mask, rl.clip_eps)
            value = ppo_value_loss(values, mb.old_values, mb.returns, value_mask, rl.value_clip)
            loss = policy + rl.vf_coef * value
            if rl.ptx_coef > 0:  # InstructGPT eq. 2's γ E_pretrain[log π]
                lm = ptx_loss(model, ptx_rows, ctx, seed=step * 131 + n_updates)
                loss = loss + rl.ptx_coef * lm
                sums["ptx_loss"] += float(lm.detach())
            loss.backward()
            engine.check_finite(float(loss.detach()), step + 1, ctx.folder)
            sums["grad_norm"] += engine.clip_and_step(params, optimizer, scheduler, cfg)
            for key, v in (("loss", loss), ("policy_loss", policy), ("value_loss", value),
                           ("clip_fraction", clip_fraction), ("entropy", masked_mean(entropy, value_mask))):
                sums[key] += float(v.detach())
            n_updates, tokens = n_updates + 1, tokens + 2 * mb.n_tokens  # policy and critic forwards
    out = {k: v / max(n_updates, 1) for k, v in sums.items()}
    out["update_tokens_per_s"] = tokens / max(time.perf_counter() - t0, 1e-9)
    return out


def run_stage(ctx: StageContext) -> StageResult:
    """Train one PPO stage in place on `ctx.model` (with its critic); checkpoints and metrics go to `ctx.folder`."""
    # ---- setup
    model, recipe, cfg, rl = ctx.model, ctx.recipe, ctx.recipe.train, ctx.recipe.rl
    t0 = time.perf_counter()
    setup = setup_rl(ctx)  # also refuses several processes
    ptx_rows = build_sft_rows(setup.ptx_examples, ctx.tokenizer, recipe.data, ctx.token_cache) if rl.ptx_coef else None
    if rl.ptx_coef and not len(ptx_rows):
        raise ValueError(f"stage {ctx.name}: rl.ptx_coef > 0 but rl.ptx_source {rl.ptx_source!r} gives no example "
                         f"of this stage (list it in the stage's sources)")
    n_prompts = len(setup.prompts)
    total_steps = engine.stage_steps(cfg, n_prompts)
    updates = rl.ppo_epochs * min(rl.minibatches, cfg.batch_size * rl.n_samples)
    reference = Reference(model, recipe.adapter.type) if rl.kl_coef > 0 else None  # before resume loads weights
    critic = make_critic(ctx)
    params = torch.nn.ModuleDict({"policy": model, "critic": critic})  # one optimizer, one checkpoint
    optimizer = engine.make_optimizer(params, cfg)  # the critic is new: no moments carried from a previous stage
    scheduler = engine.make_scheduler(optimizer, cfg, total_steps * updates)
    state, log = engine.resume_stage(ctx, params, optimizer, scheduler)
    if setup.schedule and "cccs" in state.extra:
        setup.schedule.load_state_dict(state.extra["cccs"])
    beta = float(state.extra.get("beta", rl.kl_coef))
    history: list[dict] = list(state.extra.get("history", []))
    device, pad_id = engine.model_device(model), ctx.tokenizer.pad_token_id or 0
    ctx.log(f"stage {ctx.name}: ppo on {n_prompts} prompts x {rl.n_samples} samples, {total_steps} steps, β {beta}"
            f"{' (adaptive)' if rl.adaptive_kl else ''}, reference {reference.mode if reference else 'none'}")
    order = engine.EpochOrder(n_prompts, cfg.batch_size, cfg.seed)
    # ---- loop
    bar = engine.step_bar(ctx, state, total_steps)
    for step in bar:
        if ctx.stop_at_step is not None and step >= ctx.stop_at_step:
            break
        step_t0 = time.perf_counter()
        c = collect(setup, ctx, order.pick(step)[1], step)
        batch = build_batch(c.samples, pad_id, device, c.kept, c.token_keep)
        model.eval()
        critic.eval()
        with torch.no_grad(), engine.autocast(cfg, device):  # the update's numerics (bf16 autocast or not)
            if rl.old_logprobs == "recompute" or any(s.logprobs is None for s in c.samples):
                batch.old_logprobs = token_logprobs(model, batch, rl.temperature, recipe.adapter.type)[0]
            if reference is not None:
                batch.ref_logprobs = reference.logprobs(model, batch, rl.temperature)
            batch.old_values = token_values(critic, batch) * batch.response_mask
        rewards, k1 = token_rewards(c, batch, beta)
        advantages, batch.returns = gae(rewards, batch.old_values, batch.response_mask, rl.gamma, rl.lam)
        batch.advantages = masked_whiten(advantages, batch.loss_mask) if rl.whiten_advantages else advantages
        model.train()
        critic.train()
        stats = ppo_update(model, critic, params, optimizer, scheduler, batch, ptx_rows, ctx, step)
        seq_kl = float((k1.sum(dim=1)).mean())  # nats per answer: what the adaptive controller tracks
        metrics = {**rollout_metrics(c), **stats, "kl": float(masked_mean(k1, batch.response_mask)),
                   "kl_per_answer": seq_kl, "beta": beta, "lr": scheduler.get_last_lr()[0],
                   "step_s": time.perf_counter() - step_t0}
        if rl.adaptive_kl:
            beta = adaptive_kl_coef(beta, seq_kl, rl.kl_target, len(c.samples), rl.kl_horizon)
        if setup.schedule:
            metrics["cccs_stage"] = float(setup.schedule.stage)
            setup.schedule.update(c.pass_rate)
        state.step = step + 1
        history.append(metrics)
        if state.step % cfg.log_every == 0 or state.step == total_steps:
            log.log(state.step, **metrics)
        bar.set_postfix(reward=f"{metrics['reward_mean']:.3f}", kl=f"{metrics['kl']:.3f}")
        # ---- save (checkpoints hold policy and critic, β, the curriculum and the metric history)
        state.extra = {"history": history, "beta": beta,
                       **({"cccs": setup.schedule.state_dict()} if setup.schedule else {})}
        if cfg.save_every and state.step % cfg.save_every == 0:
            engine.save_checkpoint(ctx.folder, params, optimizer, scheduler, state, full=recipe.adapter.type == "none")
    bar.close()
    return finish_stage(ctx, setup, history, state.step, total_steps, log, time.perf_counter() - t0)
