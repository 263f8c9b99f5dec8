"""One SFT stage: response-only loss on chat examples, packed without cross-example attention.

The `sft` stage kind (`train/stages.py`), on the skeleton every stage file shares: setup (tokenise, optimizer,
schedule, resume), loop, evaluate (mid-stage, a plain call), save (checkpoints).
Each optimizer step draws `batch_size` examples from the epoch's seeded permutation, splits them into `grad_accum`
micro-batches and packs each into rows ≤ max_seq_len (best-fit decreasing). The loss is the sum over the step's
target tokens divided by their count, so accumulation 4×2 equals 8×1 exactly. LoRAMoE adds β·L_lbc (Dou et al. 2023)
from the per-sample task types the rows carry.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from mixtune.config import Recipe
from mixtune.data.packing import VARLEN_ATTENTION, flatten_packed, varlen_kwargs
from mixtune.data.preference import is_pair
from mixtune.data.sft_dataset import batches_for_step, build_sft_rows
from mixtune.model.adapters import unwrap_base
from mixtune.runs import atomic_write_json
from mixtune.train import engine, levers
from mixtune.train.losses import chunked_target_token_ce, masked_token_ce, target_token_ce
from mixtune.train.stages import StageContext, StageResult, evaluate_abilities

PROMPT_LEARNING = ("prefix", "prompt")
"""peft adapters that put virtual tokens (prompt) or virtual keys/values (prefix) before each row: they need one
example per padded row with an attention mask, not packed rows whose position ids restart per example."""


def _forward_loss(model, micro: dict, recipe: Recipe) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of target-token CE, auxiliary loss) of one micro-batch."""
    micro = engine.to_device(micro, engine.model_device(model))
    varlen = uses_varlen(model) and "attention_mask" not in micro  # flash-attention: one flattened row
    if varlen:
        micro = flatten_packed(micro)
    inputs = {k: micro[k] for k in ("input_ids", "position_ids", "attention_mask") if k in micro}
    if varlen:
        inputs.update(varlen_kwargs(micro["position_ids"]))
    adapter = recipe.adapter
    if adapter.type == "loramoe" and adapter.lbc_weight > 0 and model.training:
        from mixtune.model.loramoe import loramoe_batch
        from mixtune.train.adapter_losses import loramoe_balance_loss

        # L_lbc from per-sample task types (LoRAMoE §3.2): example_index maps each packed token to its sample.
        with loramoe_batch(model, micro["task_type"], micro["example_index"], micro["example_index"] >= 0):
            loss_sum = _ce_sum(model, inputs, micro, recipe)
            aux = adapter.lbc_weight * loramoe_balance_loss(model)
        return loss_sum, aux
    return _ce_sum(model, inputs, micro, recipe), torch.zeros(())


def _ce_sum(model, inputs: dict, micro: dict, recipe: Recipe) -> torch.Tensor:
    """Sum of target-token cross-entropy of one micro-batch."""
    device = engine.model_device(model)
    if recipe.adapter.type in PROMPT_LEARNING:  # peft numbers the positions itself, after the virtual tokens
        inputs = {k: v for k, v in inputs.items() if k != "position_ids"}
        with engine.autocast(recipe.train, device):
            logits = model(**inputs, use_cache=False).logits  # prompt tuning: (B, P + T, V)
        logits = logits[:, -micro["labels"].shape[1]:]  # drop prompt tuning's virtual-token positions
        return masked_token_ce(logits.float(), micro["labels"])[0]
    base = unwrap_base(model)
    head = base.get_output_embeddings()
    # per-example attention for packed rows (varlen flash-attention already attends per example)
    packed = levers.packed_attention(base, recipe.train.packed_attention and "attention_mask" not in inputs
                                    and not uses_varlen(model))
    if not _plain_head(base, head):
        with engine.autocast(recipe.train, device), packed:
            logits = model(**inputs, use_cache=False).logits  # (B, T, V)
        return masked_token_ce(logits.float(), micro["labels"])[0]
    ce = chunked_target_token_ce if recipe.train.fused_ce else target_token_ce  # same value up to rounding
    with engine.autocast(recipe.train, device), packed:  # logits only where there is a target (most of the FLOPs)
        hidden = base.base_model(**inputs, use_cache=False).last_hidden_state  # (B, T, H)
        return ce(hidden, micro["labels"], head.weight, head.bias)[0]


def uses_varlen(model) -> bool:
    """Whether the model attends through a varlen flash-attention kernel (packed rows are flattened for it)."""
    return getattr(unwrap_base(model).config, "_attn_implementation", None) in VARLEN_ATTENTION


def _plain_head(base, head) -> bool:
    """An output layer that is a bare linear map (no logit scaling or soft-capping applied after it)."""
    cfg = base.config
    return (isinstance(head, torch.nn.Linear) and not getattr(cfg, "final_logit_softcapping", None)
            and getattr(cfg, "logit_scale", None) in (None, 1.0) and base.base_model is not base)


@torch.no_grad()
def eval_losses(model, eval_sets: dict[str, list[dict]], recipe: Recipe) -> dict[str, float]:
    """Mean target-token loss per held-out source."""
    model.eval()
    out = {}
    for name, rows in eval_sets.items():
        total, n = 0.0, 0
        for start in range(0, len(rows), recipe.train.batch_size):
            indices = list(range(start, min(start + recipe.train.batch_size, len(rows))))
            for micro in _micro_batches(rows, indices, 1, recipe, _pad_id(model)):
                loss_sum, _ = _forward_loss(model, micro, recipe)
                total, n = total + float(loss_sum), n + int(micro["n_target_tokens"])
        out[name] = total / max(n, 1)
    model.train()
    return out


def _micro_batches(rows, indices: list[int], grad_accum: int, recipe: Recipe, pad_id: int) -> list[dict]:
    packing = recipe.data.packing and recipe.adapter.type not in PROMPT_LEARNING
    capacity = recipe.data.max_seq_len
    if packing and recipe.data.pack_len:
        capacity = max(recipe.data.pack_len, *(len(rows.rows[i]["input_ids"]) for i in indices))
    if packing and recipe.train.packed_attention:  # attention per example: a long row costs nothing, padding does
        capacity = max(capacity, sum(len(rows.rows[i]["input_ids"]) for i in indices))  # one row per micro-batch
    return batches_for_step(rows, indices, grad_accum, capacity, pad_id, packing=packing)


def _pad_id(model) -> int:
    pad = getattr(model.config, "pad_token_id", None)
    return 0 if pad is None else int(pad)


def run_stage(ctx: StageContext) -> StageResult:
    """Train one SFT stage in place on `ctx.model`; checkpoints and metrics go to `ctx.folder`.

    `ctx.optimizer_state`: AdamW moments carried over from the previous stage (train.fresh_optimizer: false); the
    schedule always starts anew. The finished result carries the optimizer state for the next stage."""
    # ---- setup
    model, recipe, cfg = ctx.model, ctx.recipe, ctx.recipe.train
    dist = engine.dist_setup()  # one process, or a rank of torchrun / accelerate launch
    t0 = time.perf_counter()
    rows = build_sft_rows(ctx.examples, ctx.tokenizer, recipe.data, ctx.token_cache)
    eval_sets = {k: build_sft_rows(v, ctx.tokenizer, recipe.data, ctx.token_cache) for k, v in ctx.eval_sets.items()
                 if not any(is_pair(ex) for ex in v)}  # held-out preference pairs are the preference stages'

    stats = rows.summary()
    n_tokens = sum(v["tokens"] for v in stats["per_source"].values())
    ctx.log(f"stage {ctx.name}: {len(rows)} examples, {n_tokens} tokens, {len(rows.truncated)} truncated to "
            f"{recipe.data.max_seq_len}, {len(rows.no_target)} dropped with no target token left")
    if recipe.data.packing and recipe.adapter.type in PROMPT_LEARNING:
        ctx.log(f"stage {ctx.name}: adapter {recipe.adapter.type} trains on padded rows (one example each), not packed")
    step_size = cfg.batch_size * dist.world_size  # batch_size is per process (as in accelerate and the HF Trainer)
    total_steps = engine.stage_steps(cfg, len(rows), dist.world_size)
    engine.set_gradient_checkpointing(model, cfg.gradient_checkpointing)
    forward = dist.wrap(model)  # DDP / FSDP (which shards the parameters: before the optimizer is made)
    optimizer = engine.make_optimizer(model, cfg, carried=ctx.optimizer_state)
    scheduler = engine.make_scheduler(optimizer, cfg, total_steps)
    state, log = engine.resume_stage(ctx, model, optimizer, scheduler)  # the metrics log: rank 0
    full = recipe.adapter.type == "none"
    pad_id = _pad_id(model)
    speed = engine.Throughput()
    order, window, last_loss = engine.EpochOrder(len(rows), step_size, cfg.seed, log=log), [], None
    if cfg.compile and not levers.compile_layers(model, recipe.adapter.type):
        ctx.log(f"stage {ctx.name}: train.compile skipped for adapter {recipe.adapter.type} "
                f"(compiled only with {levers.COMPILED_ADAPTERS})")
    # ---- loop
    model.train()
    bar = engine.step_bar(ctx, state, total_steps)
    for step in bar:
        if ctx.stop_at_step is not None and step >= ctx.stop_at_step:
            break
        speed.step_start()
        epoch, picked = order.pick(step)  # every rank's examples; this rank packs its share
        micros = dist.micro_batches(picked, cfg.grad_accum, lambda ids, n: _micro_batches(rows, ids, n, recipe, pad_id))
        n_targets = max(dist.all_reduce_sum(sum(m["n_target_tokens"] * w for m, w in micros)), 1)  # the step's
        step_loss, step_tokens = 0.0, 0
        for micro, weight in micros:  # weight 0: a repeat that only keeps the ranks in step
            loss_sum, aux = forward(_forward_loss, micro, recipe)
            share = len(micro["task_type"]) / len(picked)  # aux losses are means: weight by sample share
            # DDP / FSDP average gradients over ranks: x world_size gives one process's gradient of the whole step
            (weight * dist.world_size * (loss_sum / n_targets + aux * share)).backward()
            step_loss += weight * float(loss_sum.detach()) / n_targets
            step_tokens += int(weight) * int((micro["example_index"] >= 0).sum())  # real tokens, not padding
        step_loss, step_tokens = dist.all_reduce_sum([step_loss, step_tokens])  # global: what every rank logs
        engine.check_finite(step_loss, step + 1, ctx.folder)
        grad_norm = engine.clip_and_step(model, optimizer, scheduler, cfg)
        speed.step_done(int(step_tokens))
        state.step = step + 1
        window.append(step_loss)
        if state.step % cfg.log_every == 0 or state.step == total_steps:
            last_loss = sum(window) / len(window)
            log.log(state.step, loss=last_loss, lr=scheduler.get_last_lr()[0], grad_norm=grad_norm,
                    tokens_per_s=speed.window_rate(), epoch=epoch)
            bar.set_postfix(loss=f"{last_loss:.3f}", tok_s=f"{speed.window_rate():.0f}")
            window = []
            speed.reset_window()
        # ---- evaluate (mid-stage) and save (checkpoints)
        if cfg.eval_every and state.step % cfg.eval_every == 0 and eval_sets:
            with dist.main_model(model) as plain:  # rank 0 alone (a whole copy under FSDP)
                losses = eval_losses(plain, eval_sets, recipe) if plain is not None else {}
            log.log(state.step, **{f"eval_loss/{k}": v for k, v in losses.items()})
        if recipe.eval.every_n_steps and state.step % recipe.eval.every_n_steps == 0:
            evaluate_abilities(ctx, step=state.step)
        if cfg.save_every and state.step % cfg.save_every == 0:
            engine.save_checkpoint(ctx.folder, model, optimizer, scheduler, state, full=full)
    bar.close()
    if cfg.compile:
        levers.uncompile_layers(model)
    result = StageResult(ctx.name, ctx.kind, state.step, state.step >= total_steps, len(rows), n_tokens,
                         train_loss=last_loss, dropped={"no target token after truncation": list(rows.no_target)}
                         if rows.no_target else {})
    if not result.finished:
        return result
    with dist.main_model(model) as plain:
        result.eval_loss = eval_losses(plain, eval_sets, recipe) if eval_sets and plain is not None else {}
    result.wall_s = time.perf_counter() - t0
    result.tokens_per_s = speed.overall_rate()
    log.log(state.step, **{f"eval_loss/{k}": v for k, v in result.eval_loss.items()}, stage_done=ctx.name)
    log.close()
    if dist.is_main:
        atomic_write_json(ctx.folder / "stage.json", result.record())
    if not cfg.fresh_optimizer:
        result.optimizer_state = optimizer.state_dict()
    return result


def sft_stage(model, tokenizer, recipe: Recipe, examples: list[dict], stage_dir: Path, *, name: str = "sft",
              eval_examples: dict[str, list[dict]] | None = None, resume: bool = False,
              stop_at_step: int | None = None, log=print) -> StageResult:
    """One SFT stage outside a run (benchmarks, tests): `run_stage` on a context built from these arguments."""
    ctx = StageContext(recipe=recipe, name=name, kind="sft", model=model, tokenizer=tokenizer, examples=examples,
                       folder=Path(stage_dir), run_dir=Path(stage_dir).parent, eval_sets=eval_examples or {},
                       resume=resume, stop_at_step=stop_at_step, log=log)
    return run_stage(ctx)
