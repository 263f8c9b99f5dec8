"""Pre-training and continued pre-training: next-token prediction on a text corpus.

`mixtune pretrain -c recipe.yaml [--resume]`. The corpus is concatenated (documents separated by the tokenizer's
end-of-text token) and cut into rows of `train.seq_len` tokens; the last rows are held out for the eval loss. Each
epoch visits the rows in a seeded permutation, so a step number fixes the data position and a resumed run continues
to the same next loss. Schedules: cosine or WSD (continue from a stable-phase checkpoint with `model.path` and
`train.warmup_ratio=0`).
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm import tqdm

from mixtune.config import Recipe
from mixtune.data.sft_dataset import split_micro_batches
from mixtune.errors import UserError
from mixtune.jsonl import iter_jsonl, read_text
from mixtune.model.load import count_parameters, load_model_and_tokenizer
from mixtune.runs import MetricsLog, RunLock, prepare_run_dir, remove_stale_temps
from mixtune.train import engine
from mixtune.train.losses import masked_token_ce
from mixtune.train.save import save_final


class CorpusError(UserError, ValueError):
    """A pre-training corpus that cannot be read; the message names the file and line."""


def read_corpus(paths: list[Path]) -> list[str]:
    """Documents from JSONL files with a `text` field, or plain-text files (one document per blank-line block)."""
    texts: list[str] = []
    for path in paths:
        if path.name.endswith((".jsonl", ".jsonl.gz")):
            for n, row in iter_jsonl(path, CorpusError, "corpus file"):
                if not isinstance(row.get("text"), str):
                    raise CorpusError(f"{path}:{n}: text: missing or not a string")
                texts.append(row["text"])
        else:
            texts.extend(block for block in read_text(path, CorpusError, "corpus file").split("\n\n")
                         if block.strip())
    if not texts:
        raise CorpusError(f"empty corpus: {[str(p) for p in paths]}")
    return texts


def tokenize_rows(texts: list[str], tokenizer, seq_len: int) -> torch.Tensor:
    """(N, seq_len) token rows of the concatenated corpus; the tail shorter than a row is dropped."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for start in tqdm(range(0, len(texts), 2048), desc="tokenize", unit="batch", leave=False):
        for doc in tokenizer(texts[start:start + 2048], add_special_tokens=False)["input_ids"]:
            ids.extend(doc)
            ids.append(eos)
    n_rows = len(ids) // seq_len
    if n_rows == 0:
        raise ValueError(f"corpus has {len(ids)} tokens, fewer than one row of {seq_len}")
    return torch.tensor(ids[: n_rows * seq_len], dtype=torch.long).view(n_rows, seq_len)


def corpus_paths(recipe: Recipe) -> list[Path]:
    if recipe.pretrain_corpus:
        return [Path(p) for p in recipe.pretrain_corpus]
    return [Path(recipe.world.out_dir) / "corpus" / "pretrain.jsonl"]


def lm_loss_sum(model, rows: torch.Tensor, cfg) -> tuple[torch.Tensor, int]:
    device = engine.model_device(model)
    rows = rows.to(device)
    with engine.autocast(cfg, device):
        logits = model(input_ids=rows, use_cache=False).logits  # (B, T, V)
    return masked_token_ce(logits.float(), rows)


@torch.no_grad()
def eval_loss(model, rows: torch.Tensor, cfg) -> float:
    model.eval()
    total, n = 0.0, 0
    for start in range(0, len(rows), cfg.batch_size):  # rows: the held-out rows, at most eval_batches steps
        loss_sum, count = lm_loss_sum(model, rows[start:start + cfg.batch_size], cfg)
        total, n = total + float(loss_sum), n + int(count)
    model.train()
    return total / max(n, 1)


def pretrain(recipe: Recipe, resume: bool = False, stop_at_step: int | None = None) -> dict:
    """Run (or resume) pre-training; returns a summary. `stop_at_step` simulates a kill (tests). Under torchrun /
    accelerate launch each rank trains its share of every step; rank 0 holds the lock and writes."""
    cfg = recipe.train
    dist = engine.dist_setup(cfg)
    if dist.world_size > 1 and dist.is_main:
        print(f"distributed: {dist.world_size} processes, {dist.mode} on {dist.device.type}")
    engine.setup_torch(cfg)
    texts = read_corpus(corpus_paths(recipe))  # checked before the run folder exists
    model, tokenizer = load_model_and_tokenizer(recipe.model, tokenizer_path=recipe.tokenizer.out_dir, seed=cfg.seed)
    with RunLock(recipe.run_dir) if dist.is_main else nullcontext():
        if dist.is_main:
            prepare_run_dir(recipe, verb="pretrain")
            remove_stale_temps(recipe.run_dir)
        dist.barrier()
        return _pretrain(recipe, model, tokenizer, texts, recipe.run_dir, resume, stop_at_step)


def _pretrain(recipe: Recipe, model, tokenizer, texts: list[str], run_dir: Path, resume: bool,
              stop_at_step: int | None) -> dict:
    # ---- setup
    cfg = recipe.train
    dist = engine.dist_setup()
    model.to(engine.pick_device())
    rows = tokenize_rows(texts, tokenizer, cfg.seq_len)
    step_size = cfg.batch_size * dist.world_size  # batch_size is per process
    # held out: as many rows whatever the number of processes (the split fixes the training data)
    n_eval = min(max(step_size, len(rows) // 100), cfg.eval_batches * step_size, len(rows) // 2)
    train_rows, eval_rows = rows[:-n_eval], rows[-n_eval:]
    steps_per_epoch = max(1, len(train_rows) // step_size)
    total_steps = cfg.max_steps or max(1, int(cfg.epochs * steps_per_epoch))
    forward = dist.wrap(model)  # DDP / FSDP (which shards the parameters: before the optimizer is made)
    optimizer = engine.make_optimizer(model, cfg)
    scheduler = engine.make_scheduler(optimizer, cfg, total_steps)
    state = engine.TrainState()
    if resume:
        state = engine.resume_from_checkpoints(run_dir, model, optimizer, scheduler)
    log = MetricsLog(run_dir, tensorboard=cfg.tensorboard, resume_at=state.step if resume else None,
                     enabled=dist.is_main)
    trainable, total = count_parameters(model)
    say = print if dist.is_main else (lambda *_: None)
    say(f"pretrain {recipe.name}: {total / 1e6:.2f}M params, {len(train_rows)} rows x {cfg.seq_len} tokens, "
          f"{total_steps} steps ({steps_per_epoch}/epoch), schedule {cfg.schedule}")
    order, order_epoch, window = [], -1, []
    speed = engine.Throughput()
    # ---- loop
    model.train()
    bar = tqdm(range(state.step, total_steps), initial=state.step, total=total_steps, desc="pretrain", unit="step",
               disable=not dist.is_main)
    for step in bar:
        if stop_at_step is not None and step >= stop_at_step:
            break
        speed.step_start()
        epoch, pos = divmod(step, steps_per_epoch)
        if epoch != order_epoch:
            order, order_epoch = engine.epoch_order(len(train_rows), cfg.seed, epoch), epoch
        picked = order[pos * step_size:(pos + 1) * step_size]  # every rank's rows; this rank trains its share
        micros = dist.micro_batches(picked, cfg.grad_accum,
                                    lambda ids, n: [train_rows[c] for c in split_micro_batches(ids, n)])  # (b, T)
        n_targets = len(picked) * (cfg.seq_len - 1)
        step_loss = 0.0
        for micro, weight in micros:  # weight 0: a repeat that only keeps the ranks in step
            loss_sum, _ = forward(lm_loss_sum, micro, cfg)
            # normalise by the whole step (accumulation is exact); x world_size undoes DDP / FSDP's mean over ranks
            (weight * dist.world_size * loss_sum / n_targets).backward()
            step_loss += weight * float(loss_sum.detach()) / n_targets
        step_loss = dist.all_reduce_sum(step_loss)
        engine.check_finite(step_loss, step + 1, run_dir)
        grad_norm = engine.clip_and_step(model, optimizer, scheduler, cfg)
        speed.step_done(len(picked) * cfg.seq_len)
        state.step = step + 1
        window.append(step_loss)
        if state.step % cfg.log_every == 0 or state.step == total_steps:
            log.log(state.step, loss=sum(window) / len(window), lr=scheduler.get_last_lr()[0],
                    grad_norm=grad_norm, tokens_per_s=speed.window_rate(), epoch=epoch)
            bar.set_postfix(loss=f"{sum(window) / len(window):.3f}", tok_s=f"{speed.window_rate():.0f}")
            window = []
            speed.reset_window()
        # ---- evaluate and save
        if cfg.eval_every and state.step % cfg.eval_every == 0:
            with dist.main_model(model) as plain:  # rank 0 alone (a whole copy under FSDP)
                if plain is not None:
                    log.log(state.step, eval_loss=eval_loss(plain, eval_rows, cfg))
        if cfg.save_every and state.step % cfg.save_every == 0:
            engine.save_checkpoint(run_dir, model, optimizer, scheduler, state, full=True)
    bar.close()
    if state.step < total_steps:  # simulated kill: nothing more is written
        return {"step": state.step, "stopped": True}
    with dist.main_model(model) as plain:  # rank 0 evaluates and saves; the others wait
        final_eval = eval_loss(plain, eval_rows, cfg) if plain is not None else float("nan")
        log.log(state.step, eval_loss=final_eval)
        log.close()
        if plain is not None:
            save_final(plain, tokenizer, run_dir / "final", adapter="none", base=None)
    summary = {"step": state.step, "eval_loss": final_eval, "params": total, "trainable": trainable,
               "final": str(run_dir / "final"), "tokens_per_s": speed.overall_rate()}
    say(f"pretrain done: step {state.step}, eval loss {final_eval:.4f}, model in {run_dir / 'final'}")
    return summary

