"""One distillation stage: the run's model (the student) learns from a frozen teacher checkpoint (`distill.teacher`).

The `distill` stage kind (`train/stages.py`), on the skeleton every stage file shares. Two modes (`distill.mode`):

- logit (Hinton et al. 2015; GKD, Agarwal et al. 2024): the stage's chats are tokenised and packed exactly as the
  SFT stage does (`data/sft_dataset`: response-only labels, best-fit-decreasing rows without cross-example
  attention; the SFT stage's own micro-batcher), and every packed micro-batch goes through the student and the
  teacher unchanged, so both see identical rows. At each response token (a position with a target) the student's
  next-token distribution is pulled towards the teacher's by `losses.distill_divergence`: forward KL, reverse KL or
  the generalised JSD(β), at temperature τ with the τ² factor. With `distill.alpha` the hard-label CE is mixed in:
  step loss = Σ_t [(1 − α)·D_t + α·CE_t] / (the step's target tokens), SFT's normalisation (accumulation exact).
  The logits are computed at target positions only, for the student and the teacher (as `target_token_ce`).
- sequence (Kim & Rush 2016): the teacher answers every prompt of the stage (the conversation up to its last
  assistant turn; greedy, or `distill.samples` sampled answers each), the answers are saved in the stage folder
  (`teacher_answers.jsonl`, reused on resume), and the student is SFT'd on them by `train.sft.run_stage` itself.

The teacher is loaded once per stage, frozen (`requires_grad_(False)`, eval mode, no_grad forward). Teacher and
student must share the tokenizer: the divergence compares distributions over token ids one by one, so the stage
stops with one line when the vocabularies differ. The teacher may be larger than the student (that is the point)
or any other causal LM with the same tokenizer. Not supported in logit mode: prefix/prompt tuning (their virtual
tokens shift the student's positions against the teacher's); LoRAMoE trains without its balancing loss here.
"""

from __future__ import annotations

import dataclasses
import json
import time

import torch
import torch.nn.functional as F

from mixtune.config import Recipe, RecipeError
from mixtune.data.sft_dataset import build_sft_rows
from mixtune.jsonl import iter_jsonl
from mixtune.model.adapters import unwrap_base
from mixtune.model.load import load_checkpoint, load_tokenizer
from mixtune.runs import atomic_write_json, write_jsonl
from mixtune.train import engine
from mixtune.train.losses import distill_divergence
from mixtune.train.sft import PROMPT_LEARNING, _micro_batches, _pad_id, eval_losses
from mixtune.train.sft import run_stage as sft_run_stage
from mixtune.train.stages import StageContext, StageResult, check_teacher_path, evaluate_abilities

TEACHER_ANSWERS = "teacher_answers.jsonl"
"""Sequence mode: the teacher's answers the student is SFT'd on (in the stage folder; reused on resume)."""


# ------------------------------------------------------------------------------------------------------ teacher
def load_teacher(recipe: Recipe, tokenizer, device: torch.device, stage: str):
    """The frozen teacher of `recipe.distill.teacher`; RecipeError (one line) when it is missing, does not load or
    uses another tokenizer than the student."""
    path = check_teacher_path(recipe, stage)
    try:
        teacher_tok = load_tokenizer(path)
        teacher = load_checkpoint(path, recipe.model.attn_implementation)
    except ValueError as e:
        raise RecipeError(f"stage {stage} (distill): distill.teacher: {e}") from e
    problem = tokenizer_mismatch(tokenizer, teacher_tok)
    rows_t, rows_s = unwrap_base(teacher).get_output_embeddings().weight.shape[0], len(tokenizer)
    if problem is None and rows_t < rows_s:
        problem = f"its output layer has {rows_t} rows for a vocabulary of {rows_s}"
    if problem:
        raise RecipeError(f"stage {stage} (distill): the teacher {path} uses another tokenizer than the student "
                          f"({problem}); logit distillation compares token ids one by one, so distil from a "
                          f"teacher trained with the student's tokenizer")
    teacher.requires_grad_(False)
    return teacher.to(device).eval()


def tokenizer_mismatch(student_tok, teacher_tok) -> str | None:
    """Why two tokenizers give different token ids (vocabulary or special tokens), or None when they agree."""
    vs, vt = student_tok.get_vocab(), teacher_tok.get_vocab()
    if vs != vt:
        differ = sum(vt.get(tok) != i for tok, i in vs.items()) + len(set(vt) - set(vs))
        return f"vocabularies of {len(vs)} and {len(vt)} tokens, {differ} ids differ"
    for name in ("eos_token", "bos_token", "pad_token"):
        if getattr(student_tok, name) != getattr(teacher_tok, name):
            return f"{name} {getattr(student_tok, name)!r} vs {getattr(teacher_tok, name)!r}"
    return None


def target_logits(model, micro: dict, recipe: Recipe) -> torch.Tensor:
    """The model's next-token logits at the micro-batch's target positions, (N, V): position t where label t+1 is
    a target, in row-major order (the order `losses.target_token_ce` uses)."""
    device = engine.model_device(model)
    inputs = {k: micro[k].to(device) for k in ("input_ids", "position_ids", "attention_mask") if k in micro}
    mask = micro["labels"][:, 1:].to(device) != -100  # (B, T-1)
    base = unwrap_base(model)
    head = base.get_output_embeddings()
    with engine.autocast(recipe.train, device):
        if isinstance(head, torch.nn.Linear) and base.base_model is not base:
            hidden = base.base_model(**inputs, use_cache=False).last_hidden_state  # (B, T, H)
            return F.linear(hidden[:, :-1][mask], head.weight, head.bias).float()  # (N, V)
        return model(**inputs, use_cache=False).logits[:, :-1][mask].float()  # (N, V)


def distill_sums(student, teacher, micro: dict, recipe: Recipe) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ over targets of the divergence, Σ of the hard-label CE) of one micro-batch; the teacher runs in no_grad."""
    cfg = recipe.distill
    s_logits = target_logits(student, micro, recipe)  # (N, V)
    with torch.no_grad():
        t_logits = target_logits(teacher, micro, recipe)  # (N, V), same rows, same positions
    targets = micro["labels"][:, 1:][micro["labels"][:, 1:] != -100].to(s_logits.device)  # (N,)
    vocab = s_logits.shape[-1]
    kd = distill_divergence(s_logits, t_logits[:, :vocab], cfg.loss, cfg.temperature, cfg.beta).sum()
    ce = F.cross_entropy(s_logits, targets, reduction="sum")
    return kd, ce


@torch.no_grad()
def held_out_divergence(student, teacher, eval_sets: dict, recipe: Recipe) -> dict[str, float]:
    """Mean per-target divergence student ↔ teacher on each held-out source (the student's fidelity)."""
    student.eval()
    out = {}
    for name, rows in eval_sets.items():
        total, n = 0.0, 0
        for start in range(0, len(rows), recipe.train.batch_size):
            indices = list(range(start, min(start + recipe.train.batch_size, len(rows))))
            for micro in _micro_batches(rows, indices, 1, recipe, _pad_id(student)):
                kd, _ = distill_sums(student, teacher, micro, recipe)
                total, n = total + float(kd), n + int(micro["n_target_tokens"])
        out[name] = total / max(n, 1)
    student.train()
    return out


# ------------------------------------------------------------------------------------------------ sequence mode
def teacher_answers(teacher, tokenizer, examples: list[dict], recipe: Recipe, log=print) -> tuple[list[dict], dict]:
    """The stage's examples with the teacher's answers in place of their last assistant turn (`distill.samples`
    per prompt, ids `<id>/teacher<k>`), and {reason: ids} of examples left out (no prompt, empty answer)."""
    from mixtune.data.templates import render_prompt, stop_strings
    from mixtune.evaluate.generate import generate_details

    cfg, data = recipe.distill, recipe.data
    prompts, kept, dropped = [], [], {}
    for ex in examples:
        turns = ex.get("messages") or []
        last = max((i for i, m in enumerate(turns) if m["role"] == "assistant"), default=None)
        if last is None or not any(m["role"] == "user" for m in turns[:last]):
            dropped.setdefault("no prompt for the teacher to answer", []).append(ex["id"])
            continue
        kept.append((ex, turns[:last]))
        prompts.append(render_prompt(turns[:last], tokenizer, data.template, data.system_prompt))
    t0 = time.perf_counter()
    outs = generate_details(teacher, tokenizer, [p for p in prompts for _ in range(cfg.samples)],
                            max_new_tokens=cfg.max_new_tokens, temperature=cfg.sample_temperature, top_p=cfg.top_p,
                            stop=stop_strings(data.template, tokenizer), batch_size=cfg.batch_size,
                            seed=recipe.train.seed, desc="teacher answers")
    answers = []
    for j, out in enumerate(outs):
        ex, turns = kept[j // cfg.samples]
        new_id = f"{ex['id']}/teacher{j % cfg.samples}"
        if not out.text.strip():
            dropped.setdefault("teacher answer empty", []).append(new_id)
            continue
        answers.append({**ex, "id": new_id, "finish_reason": out.finish_reason, "n_answer_tokens": out.n_tokens,
                        "messages": [*turns, {"role": "assistant", "content": out.text}]})
    log(f"distill: teacher answered {len(kept)} prompts x {cfg.samples} in {time.perf_counter() - t0:.0f} s; "
        f"{sum(len(v) for v in dropped.values())} left out")
    return answers, dropped


def _sequence_stage(ctx: StageContext, teacher) -> StageResult:
    """Sequence-level KD: the teacher's answers (made once, kept in the stage folder), then the SFT stage on them."""
    path, left_out = ctx.folder / TEACHER_ANSWERS, ctx.folder / "teacher_answers_dropped.json"
    dist = engine.dist_setup()
    answers, dropped = None, None  # rank 0 samples the teacher and writes the files; the other ranks get its answers
    if dist.is_main and ctx.resume and path.exists() and left_out.exists():
        answers, dropped = [row for _, row in iter_jsonl(path)], json.loads(left_out.read_text())
        ctx.log(f"distill: {len(answers)} teacher answers reused from {path}")
    elif dist.is_main:
        answers, dropped = teacher_answers(teacher, ctx.tokenizer, ctx.examples, ctx.recipe, ctx.log)
        write_jsonl(path, answers)
        atomic_write_json(left_out, dropped)
    answers, dropped = dist.broadcast((answers, dropped))
    if not answers:
        raise RecipeError(f"stage {ctx.name} (distill): the teacher {ctx.recipe.distill.teacher} gave no non-empty "
                          f"answer to the stage's {len(ctx.examples)} prompts; is it a trained chat model?")
    result = sft_run_stage(dataclasses.replace(ctx, examples=answers))
    result.dropped = {**result.dropped, **dropped}
    truncated = sum(a.get("finish_reason") == "length" for a in answers)
    result.metrics.update({"distill/teacher_answers": float(len(answers)),
                           "distill/teacher_answer_tokens": sum(a.get("n_answer_tokens", 0) for a in answers)
                           / max(len(answers), 1),
                           "distill/teacher_answers_cut_at_max_new_tokens": float(truncated)})
    if result.finished and dist.is_main:
        atomic_write_json(ctx.folder / "stage.json", result.record())
    return result


# ------------------------------------------------------------------------------------------------------- stage
def run_stage(ctx: StageContext) -> StageResult:
    """Distil `distill.teacher` into `ctx.model` in place; checkpoints and metrics go to `ctx.folder`."""
    # ---- setup
    model, recipe, cfg, dcfg = ctx.model, ctx.recipe, ctx.recipe.train, ctx.recipe.distill
    dist = engine.dist_setup()  # one process, or a rank of torchrun / accelerate launch
    t0 = time.perf_counter()
    teacher = load_teacher(recipe, ctx.tokenizer, engine.model_device(model), ctx.name)
    if dcfg.mode == "sequence":
        return _sequence_stage(ctx, teacher)
    if recipe.adapter.type in PROMPT_LEARNING:
        raise RecipeError(f"stage {ctx.name} (distill): logit distillation cannot train adapter "
                          f"{recipe.adapter.type} (its virtual tokens shift the student against the teacher); "
                          f"use distill.mode=sequence or a lora adapter")
    rows = build_sft_rows(ctx.examples, ctx.tokenizer, recipe.data, ctx.token_cache)
    eval_sets = {k: build_sft_rows(v, ctx.tokenizer, recipe.data, ctx.token_cache) for k, v in ctx.eval_sets.items()}
    n_tokens = sum(len(r["input_ids"]) for r in rows.rows)
    ctx.log(f"stage {ctx.name}: distil {dcfg.loss} (tau {dcfg.temperature:g}, alpha {dcfg.alpha:g}) from "
            f"{dcfg.teacher} on {len(rows)} examples, {n_tokens} tokens, {len(rows.no_target)} dropped with no target")
    step_size = cfg.batch_size * dist.world_size  # batch_size is per process
    total_steps = engine.stage_steps(cfg, len(rows), dist.world_size)
    forward = dist.wrap(model)  # DDP / FSDP (which shards the parameters: before the optimizer is made)
    optimizer = engine.make_optimizer(model, cfg, carried=ctx.optimizer_state)
    scheduler = engine.make_scheduler(optimizer, cfg, total_steps)
    state, log = engine.resume_stage(ctx, model, optimizer, scheduler)  # the metrics log: rank 0
    full, pad_id, speed = recipe.adapter.type == "none", _pad_id(model), engine.Throughput()
    order, window, last = engine.EpochOrder(len(rows), step_size, cfg.seed, log=log), [], {}
    # ---- loop
    model.train()
    bar = engine.step_bar(ctx, state, total_steps)
    for step in bar:
        if ctx.stop_at_step is not None and step >= ctx.stop_at_step:
            break
        speed.step_start()
        epoch, picked = order.pick(step)  # the SFT stage's seeded order: the same examples per step as an SFT run
        micros = dist.micro_batches(picked, cfg.grad_accum, lambda ids, n: _micro_batches(rows, ids, n, recipe, pad_id))
        n_targets = max(dist.all_reduce_sum(sum(m["n_target_tokens"] * w for m, w in micros)), 1)  # the step's
        kd_step, ce_step, step_tokens = 0.0, 0.0, 0
        for micro, weight in micros:  # weight 0: a repeat that only keeps the ranks in step
            kd_sum, ce_sum = forward(distill_sums, teacher, micro, recipe)
            # DDP / FSDP average gradients over ranks: x world_size gives one process's gradient of the whole step
            (weight * dist.world_size * ((1 - dcfg.alpha) * kd_sum + dcfg.alpha * ce_sum) / n_targets).backward()
            kd_step += weight * float(kd_sum.detach()) / n_targets
            ce_step += weight * float(ce_sum.detach()) / n_targets
            step_tokens += int(weight) * int((micro["example_index"] >= 0).sum())
        kd_step, ce_step, step_tokens = dist.all_reduce_sum([kd_step, ce_step, step_tokens])  # global
        step_loss = (1 - dcfg.alpha) * kd_step + dcfg.alpha * ce_step
        engine.check_finite(step_loss, step + 1, ctx.folder)
        grad_norm = engine.clip_and_step(model, optimizer, scheduler, cfg)
        speed.step_done(step_tokens)
        state.step = step + 1
        window.append((step_loss, kd_step, ce_step))
        if state.step % cfg.log_every == 0 or state.step == total_steps:
            last = {k: sum(w[i] for w in window) / len(window) for i, k in enumerate(("loss", "kd_loss", "ce_loss"))}
            log.log(state.step, **last, lr=scheduler.get_last_lr()[0], grad_norm=grad_norm,
                    tokens_per_s=speed.window_rate(), epoch=epoch)
            bar.set_postfix(kd=f"{last['kd_loss']:.3f}", ce=f"{last['ce_loss']:.3f}", tok_s=f"{speed.window_rate():.0f}")
            window = []
            speed.reset_window()
        # ---- evaluate (mid-stage) and save (checkpoints)
        if cfg.eval_every and state.step % cfg.eval_every == 0 and eval_sets:
            log.log(state.step, **{f"eval_loss/{k}": v for k, v in forward(eval_losses, eval_sets, recipe).items()})
        if recipe.eval.every_n_steps and state.step % recipe.eval.every_n_steps == 0:
            evaluate_abilities(ctx, step=state.step)
        if cfg.save_every and state.step % cfg.save_every == 0:
            engine.save_checkpoint(ctx.folder, model, optimizer, scheduler, state, full=full)
    bar.close()
    result = StageResult(ctx.name, ctx.kind, state.step, state.step >= total_steps, len(rows), n_tokens,
                         train_loss=last.get("loss"), dropped={"no target token after truncation": list(rows.no_target)}
                         if rows.no_target else {})
    if not result.finished:
        return result
    # ---- the student's held-out CE, its divergence from the teacher, and the teacher's own CE for reference
    result.eval_loss = forward(eval_losses, eval_sets, recipe) if eval_sets else {}
    result.metrics = {"distill/kd_loss": last.get("kd_loss", 0.0), "distill/ce_loss": last.get("ce_loss", 0.0)}
    result.metrics.update({f"distill/eval_divergence/{k}": v
                           for k, v in forward(held_out_divergence, teacher, eval_sets, recipe).items()})
    result.metrics.update({f"distill/teacher_eval_loss/{k}": v
                           for k, v in eval_losses(teacher, eval_sets, recipe).items()})
    result.wall_s, result.tokens_per_s = time.perf_counter() - t0, speed.overall_rate()
    log.log(state.step, **{f"eval_loss/{k}": v for k, v in result.eval_loss.items()}, stage_done=ctx.name)
    log.close()
    if dist.is_main:
        atomic_write_json(ctx.folder / "stage.json", result.record())
    if not cfg.fresh_optimizer:
        result.optimizer_state = optimizer.state_dict()
    return result
