"""One SFT stage: response-only loss on chat examples, packed without cross-example attention.

Skeleton shared with every stage file: setup (tokenise, optimizer, schedule, resume), loop, evaluate, save.
Each optimizer step draws `batch_size` examples from the epoch's seeded permutation, splits them into `grad_accum`
micro-batches and packs each into rows ≤ max_seq_len (best-fit decreasing). The loss is the sum over the step's
target tokens divided by their count, so accumulation 4×2 equals 8×1 exactly. LoRAMoE adds β·L_lbc (Dou et al. 2023)
from the per-sample task types the rows carry.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from mixtune.config import Recipe
from mixtune.data.sft_dataset import batches_for_step, build_sft_rows
from mixtune.model.adapters import unwrap_base
from mixtune.runs import MetricsLog, atomic_write_json
from mixtune.train import engine
from mixtune.train.losses import chunked_target_token_ce, masked_token_ce, target_token_ce

EvalHook = Callable[[torch.nn.Module, str, int], dict]
PROMPT_LEARNING = ("prefix", "prompt")
"""peft adapters that put virtual tokens (prompt) or virtual keys/values (prefix) before each row: they need one
example per padded row with an attention mask, not packed rows whose position ids restart per example."""


@dataclass
class StageResult:
    """What a finished (or interrupted) stage reports."""

    name: str
    steps: int
    finished: bool
    n_examples: int = 0
    n_tokens: int = 0
    train_loss: float | None = None
    eval_loss: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0
    tokens_per_s: float = 0.0
    optimizer_state: dict | None = field(default=None, repr=False)

    def record(self) -> dict:
        """The JSON-able summary (without the optimizer state)."""
        return {k: v for k, v in self.__dict__.items() if k != "optimizer_state"}


def _forward_loss(model, micro: dict, recipe: Recipe) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of target-token CE, auxiliary loss) of one micro-batch."""
    micro = engine.to_device(micro, engine.model_device(model))
    inputs = {k: micro[k] for k in ("input_ids", "position_ids", "attention_mask") if k in micro}
    adapter = recipe.adapter
    if adapter.type == "loramoe" and adapter.lbc_weight > 0 and model.training:
        from mixtune.model.loramoe import loramoe_balance_loss, loramoe_batch

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
    packed = engine.packed_attention(base, recipe.train.packed_attention and "attention_mask" not in inputs)
    if not _plain_head(base, head):
        with engine.autocast(recipe.train, device), packed:
            logits = model(**inputs, use_cache=False).logits  # (B, T, V)
        return masked_token_ce(logits.float(), micro["labels"])[0]
    ce = chunked_target_token_ce if recipe.train.fused_ce else target_token_ce  # same value up to rounding
    with engine.autocast(recipe.train, device), packed:  # logits only where there is a target (most of the FLOPs)
        hidden = base.base_model(**inputs, use_cache=False).last_hidden_state  # (B, T, H)
        return ce(hidden, micro["labels"], head.weight, head.bias)[0]


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


def sft_stage(model, tokenizer, recipe: Recipe, train_examples: list[dict], stage_dir: Path, *,
              eval_examples: dict[str, list[dict]] | None = None, stage: str = "sft", resume: bool = False,
              evaluate: EvalHook | None = None, stop_at_step: int | None = None,
              optimizer_state: dict | None = None, token_cache: dict | None = None) -> StageResult:
    """Train one stage in place on `model`; checkpoints and metrics go to `stage_dir`.

    `optimizer_state`: AdamW moments carried over from the previous stage (train.fresh_optimizer: false); the
    schedule always starts anew. The finished result carries the optimizer state for the next stage."""
    cfg = recipe.train
    t0 = time.perf_counter()
    rows = build_sft_rows(train_examples, tokenizer, recipe.data, token_cache)
    eval_sets = {k: build_sft_rows(v, tokenizer, recipe.data, token_cache) for k, v in (eval_examples or {}).items()}
    stats = rows.summary()
    n_tokens = sum(v["tokens"] for v in stats["per_source"].values())
    print(f"stage {stage}: {len(rows)} examples, {n_tokens} tokens, {len(rows.truncated)} truncated to "
          f"{recipe.data.max_seq_len}, {len(rows.no_target)} dropped with no target token left")
    if recipe.data.packing and recipe.adapter.type in PROMPT_LEARNING:
        print(f"stage {stage}: adapter {recipe.adapter.type} trains on padded rows (one example each), not packed")
    steps_per_epoch = max(1, math.ceil(len(rows) / cfg.batch_size))
    # Rounded once over all epochs, so fractions of a dataset get proportional steps (matched-steps protocol).
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * len(rows) / cfg.batch_size))
    optimizer = engine.make_optimizer(model, cfg)
    if optimizer_state is not None:  # before the scheduler exists, so it starts from the peak lr as usual
        optimizer.load_state_dict(optimizer_state)
        for group in optimizer.param_groups:  # moments carry over; the learning rate follows the new schedule
            group["lr"] = cfg.lr
            group.pop("initial_lr", None)
    scheduler = engine.make_scheduler(optimizer, cfg, total_steps)
    state = engine.TrainState()
    full = recipe.adapter.type == "none"
    if resume and (ckpt := engine.latest_checkpoint(stage_dir)):
        state = engine.load_checkpoint_into(ckpt, model, optimizer, scheduler)
        print(f"stage {stage}: resumed from {ckpt} at step {state.step}")
    log = MetricsLog(stage_dir, tensorboard=cfg.tensorboard)
    if cfg.compile and not engine.compile_layers(model, recipe.adapter.type):
        print(f"stage {stage}: train.compile skipped for adapter {recipe.adapter.type} ({engine.COMPILED_ADAPTERS})")
    model.train()
    pad_id = _pad_id(model)
    order, order_epoch, window, tokens_done, last_loss = [], -1, [], 0, None
    t_loop = time.perf_counter()
    bar = tqdm(range(state.step, total_steps), initial=state.step, total=total_steps, desc=stage, unit="step")
    for step in bar:
        if stop_at_step is not None and step >= stop_at_step:
            break
        epoch, pos = divmod(step, steps_per_epoch)
        if epoch != order_epoch:  # reshuffled every epoch from (seed, epoch): logged, reproducible on resume
            order, order_epoch = engine.epoch_order(len(rows), cfg.seed, epoch), epoch
            log.log(step, epoch=epoch, shuffle_seed=cfg.seed * 1_000_003 + epoch)
        picked = order[pos * cfg.batch_size:(pos + 1) * cfg.batch_size]
        micros = _micro_batches(rows, picked, cfg.grad_accum, recipe, pad_id)
        n_targets = micros[0]["n_step_target_tokens"]
        step_loss = 0.0
        for micro in micros:
            loss_sum, aux = _forward_loss(model, micro, recipe)
            share = len(micro["task_type"]) / len(picked)  # aux losses are means: weight by sample share
            (loss_sum / max(n_targets, 1) + aux * share).backward()
            step_loss += float(loss_sum.detach()) / max(n_targets, 1)
            tokens_done += int((micro["example_index"] >= 0).sum())  # real tokens, not padding
        engine.check_finite(step_loss, step + 1, stage_dir)
        grad_norm = engine.clip_and_step(model, optimizer, scheduler, cfg)
        state.step = step + 1
        window.append(step_loss)
        if state.step % cfg.log_every == 0 or state.step == total_steps:
            rate = tokens_done / (time.perf_counter() - t_loop)
            log.log(state.step, loss=sum(window) / len(window), lr=scheduler.get_last_lr()[0], grad_norm=grad_norm,
                    tokens_per_s=rate, epoch=epoch)
            bar.set_postfix(loss=f"{sum(window) / len(window):.3f}", tok_s=f"{rate:.0f}")
            last_loss, window = sum(window) / len(window), []
        if cfg.eval_every and state.step % cfg.eval_every == 0 and eval_sets:
            log.log(state.step, **{f"eval_loss/{k}": v for k, v in eval_losses(model, eval_sets, recipe).items()})
        if recipe.eval.every_n_steps and evaluate and state.step % recipe.eval.every_n_steps == 0:
            evaluate(model, stage, state.step)
        if cfg.save_every and state.step % cfg.save_every == 0:
            engine.save_checkpoint(stage_dir, model, optimizer, scheduler, state, full=full)
    bar.close()
    if cfg.compile:
        engine.uncompile_layers(model)
    result = StageResult(stage, state.step, state.step >= total_steps, len(rows), n_tokens,
                         train_loss=last_loss)
    if not result.finished:
        return result
    result.eval_loss = eval_losses(model, eval_sets, recipe) if eval_sets else {}
    result.wall_s = time.perf_counter() - t0
    result.tokens_per_s = tokens_done / max(time.perf_counter() - t_loop, 1e-9)
    log.log(state.step, **{f"eval_loss/{k}": v for k, v in result.eval_loss.items()}, stage_done=stage)
    log.close()
    atomic_write_json(stage_dir / "stage.json", result.record())
    if not cfg.fresh_optimizer:
        result.optimizer_state = optimizer.state_dict()
    return result
