"""One DPO-family stage: DPO, conservative DPO (label smoothing), IPO or hinge on preference pairs (METHODS.md §6).

The `dpo` stage kind (`train/stages.py`), on the skeleton of every stage file: setup (tokenise the pairs, optimizer,
schedule, the reference log-probs, resume), loop, evaluate (held-out pairs; abilities mid-stage as a plain call),
save (checkpoints). The loss is `train.losses.dpo_loss` on response-only log-prob sums under the SFT chat template
(`data/pair_dataset.py`). The reference log-probs are computed once per pair before the first step, from the
policy as the stage starts or from the base with the adapter disabled (`preference.reference`), and cached: no
reference forward in the loop and no second model in memory (`train/pair_forward.py`). They are computed before a
resumed stage loads its checkpoint, so they are the start model's whatever step the stage resumes at.

Each optimizer step draws `batch_size` pairs from the epoch's seeded permutation, splits them into `grad_accum`
micro-batches and packs each micro-batch's 2·P sequences into rows without cross-sequence attention, one forward
pass per micro-batch. The step loss is Σ_p w_p·loss_p / Σ_p w_p over the step's pairs (w = 1, or 1/C(K,2) for
ranked lists). Logged (metrics.jsonl and `StageResult.metrics`): loss, the implicit rewards β(log π − log π_ref)
of chosen and rejected, their margin and the share of pairs whose chosen reward is higher (accuracy).
"""

from __future__ import annotations

import random
import time

import torch

from mixtune.data.pair_dataset import PairSet, build_pair_rows, pair_micro_batches
from mixtune.data.preference import is_pair
from mixtune.runs import atomic_write_json
from mixtune.train import engine
from mixtune.train.pair_forward import (
    capacity,
    dpo_micro_loss,
    mean_stats,
    packs,
    pad_id,
    reduce_stats,
    reference_logps,
    step_pair_micros,
)
from mixtune.train.stages import StageContext, StageResult, evaluate_abilities


def stage_pairs(ctx: StageContext) -> tuple[PairSet, dict[str, PairSet]]:
    """(training pairs, held-out pairs per source): the stage's pair examples tokenised, minus a seeded
    `preference.eval_fraction` held out as `heldout`, plus the sources' eval_count pairs."""
    recipe = ctx.recipe
    build = lambda exs: build_pair_rows(exs, ctx.tokenizer, recipe.data, recipe.preference.max_prompt_len,
                                        ctx.token_cache)
    pairs = build([ex for ex in ctx.examples if is_pair(ex)])
    held = {name: build(exs) for name, exs in ctx.eval_sets.items() if exs and all(is_pair(ex) for ex in exs)}
    fraction = recipe.preference.eval_fraction
    if fraction and len(pairs) > 1:
        k = min(len(pairs) - 1, max(1, round(fraction * len(pairs))))
        out = set(random.Random(f"{recipe.train.seed}:heldout:{ctx.name}").sample(range(len(pairs)), k))
        held["heldout"] = pairs.subset(sorted(out))
        train = pairs.subset([i for i in range(len(pairs)) if i not in out])
        train.truncated, train.dropped, train.dropped_sources = pairs.truncated, pairs.dropped, pairs.dropped_sources
        pairs = train
    if not len(pairs):
        raise ValueError(f"stage {ctx.name}: no preference pair to train on ({len(pairs.dropped)} dropped: the "
                         f"prompt fills data.max_seq_len; raise it or set preference.max_prompt_len)")
    return pairs, held


@torch.no_grad()
def evaluate_pairs(model, held: dict[str, PairSet], recipe, reference: dict[str, torch.Tensor]) -> dict[str, float]:
    """DPO loss, reward margin and accuracy on held-out pairs (their own cached reference log-probs)."""
    model.eval()
    out = {}
    for name, pairs in held.items():
        n = max(1, recipe.train.batch_size // recipe.train.grad_accum)
        sums = []
        for start in range(0, len(pairs), n):
            (micro,) = pair_micro_batches(pairs, list(range(start, min(start + n, len(pairs)))), 1,
                                          capacity(recipe), pad_id(model), packs(recipe))
            sums.append(dpo_micro_loss(model, micro, reference[name], recipe)[1])
        out.update({f"eval/{name}/{k}" if k == "loss" else f"eval/{name}/rewards/{k}": v
                    for k, v in mean_stats(sums).items()})
    model.train()
    return out


def run_stage(ctx: StageContext) -> StageResult:
    """Train one DPO-family stage in place on `ctx.model` (pair examples in `ctx.examples`); checkpoints and
    metrics go to `ctx.folder`. Reusable by iterated methods: each call takes its own reference at its start."""
    # ---- setup
    model, recipe, cfg = ctx.model, ctx.recipe, ctx.recipe.train
    dist = engine.dist_setup()  # one process, or a rank of torchrun / accelerate launch
    t0 = time.perf_counter()
    pairs, held = stage_pairs(ctx)
    n_tokens = sum(v["tokens"] for v in pairs.per_source().values())
    ctx.log(f"stage {ctx.name}: {len(pairs)} pairs, {n_tokens} tokens, {len(pairs.truncated)} truncated, "
            f"{len(pairs.dropped)} dropped with no answer token left; loss {recipe.preference.loss}, "
            f"beta {recipe.preference.beta}, reference {recipe.preference.reference}")
    step_size = cfg.batch_size * dist.world_size  # batch_size is per process
    total_steps = engine.stage_steps(cfg, len(pairs), dist.world_size)
    forward = dist.wrap(model)  # DDP / FSDP (which shards the parameters: before the optimizer is made)
    optimizer = engine.make_optimizer(model, cfg, carried=ctx.optimizer_state)
    scheduler = engine.make_scheduler(optimizer, cfg, total_steps)
    reference = forward(reference_logps, pairs, recipe)  # (P, 2): the start model's, once, before any resume
    held_reference = {name: forward(reference_logps, p, recipe) for name, p in held.items()}
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
            loss, sums = forward(dpo_micro_loss, micro, reference, recipe)
            (weight * dist.world_size * loss).backward()  # x world_size: DDP / FSDP average over ranks
            step_sums.append((sums, weight))
            step_tokens += int(weight) * int((micro["example_index"] >= 0).sum())  # real tokens, not padding
        window.append(reduce_stats(dist, step_sums))  # the whole step's, over all ranks
        step_tokens = dist.all_reduce_sum(step_tokens)
        engine.check_finite(window[-1]["loss"], step + 1, ctx.folder)
        grad_norm = engine.clip_and_step(model, optimizer, scheduler, cfg)
        speed.step_done(step_tokens)
        state.step = step + 1
        if state.step % cfg.log_every == 0 or state.step == total_steps:
            last = {f"rewards/{k}" if k != "loss" else k: v for k, v in mean_stats(window).items()}
            log.log(state.step, **last, lr=scheduler.get_last_lr()[0], grad_norm=grad_norm,
                    tokens_per_s=speed.window_rate(), epoch=epoch)
            bar.set_postfix(loss=f"{last['loss']:.3f}", acc=f"{last['rewards/accuracy']:.2f}")
            window = []
            speed.reset_window()
        # ---- evaluate (mid-stage) and save (checkpoints)
        if cfg.eval_every and state.step % cfg.eval_every == 0 and held:
            log.log(state.step, **forward(evaluate_pairs, held, recipe, held_reference))
        if recipe.eval.every_n_steps and state.step % recipe.eval.every_n_steps == 0:
            evaluate_abilities(ctx, step=state.step)
        if cfg.save_every and state.step % cfg.save_every == 0:
            engine.save_checkpoint(ctx.folder, model, optimizer, scheduler, state, full=full)
    bar.close()
    finished = state.step >= total_steps
    held_metrics = forward(evaluate_pairs, held, recipe, held_reference) if finished and held else {}
    result = StageResult(ctx.name, ctx.kind, state.step, finished, len(pairs), n_tokens,
                         train_loss=last.get("loss"), wall_s=time.perf_counter() - t0,
                         tokens_per_s=speed.overall_rate(), metrics={**last, **held_metrics},
                         eval_loss={k.split("/")[1]: v for k, v in held_metrics.items() if k.endswith("/loss")},
                         dropped={"prompt fills max_seq_len: no answer token": list(pairs.dropped)})
    log.log(state.step, **held_metrics, stage_done=ctx.name)
    log.close()
    if dist.is_main:
        atomic_write_json(ctx.folder / "stage.json", result.record())
    if not cfg.fresh_optimizer:
        result.optimizer_state = optimizer.state_dict()
    return result
