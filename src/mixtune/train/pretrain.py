"""Pre-training and continued pre-training: next-token prediction on a text corpus.

`mixtune pretrain -c recipe.yaml [--resume]`. The corpus is concatenated (documents separated by the tokenizer's
end-of-text token) and cut into rows of `train.seq_len` tokens; the last rows are held out for the eval loss. Each
epoch visits the rows in a seeded permutation, so a step number fixes the data position and a resumed run continues
to the same next loss. Schedules: cosine or WSD.

Branching (`--branch-from <run>/checkpoints/step-N`): start from a checkpoint's weights, AdamW moments and step, and
train `train.max_steps` more steps with this recipe's schedule counted from the branch. The data position continues
from step N. A decay branched from a WSD run's stable phase is `schedule: wsd, warmup_ratio: 0, decay_ratio: 1`
(Hägele et al. 2024; one run then gives several token budgets); continued pre-training on a new corpus from a
stable-phase checkpoint needs no re-warm-up (MiniCPM, METHODS §9). The lr logged at a step is the lr that step used.
"""

from __future__ import annotations

import hashlib
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
from mixtune.train import engine, levers
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


_ROWS_CACHE: dict[tuple[str, int, str], torch.Tensor] = {}
"""(tokenizer digest, seq_len, corpus digest) -> rows: a process that trains several runs on one corpus (a WSD run
and the decays branched from it, the analyses) tokenises it once. At most `_ROWS_CACHE_SIZE` corpora are kept."""
_ROWS_CACHE_SIZE = 3


def _digest(parts: list[str]) -> str:
    h = hashlib.sha1()
    for part in parts:
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()


def tokenize_rows(texts: list[str], tokenizer, seq_len: int) -> torch.Tensor:
    """(N, seq_len) token rows of the concatenated corpus; the tail shorter than a row is dropped (cached per
    process by the tokenizer's and the corpus's content)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    key = (_digest([backend.to_str() if backend is not None else repr(tokenizer)]), seq_len, _digest(texts))
    if key in _ROWS_CACHE:
        return _ROWS_CACHE[key]
    rows = _tokenize_rows(texts, tokenizer, seq_len)
    if len(_ROWS_CACHE) >= _ROWS_CACHE_SIZE:
        _ROWS_CACHE.pop(next(iter(_ROWS_CACHE)))
    _ROWS_CACHE[key] = rows
    return rows


def _tokenize_rows(texts: list[str], tokenizer, seq_len: int) -> torch.Tensor:
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


def split_eval(rows: torch.Tensor, cfg, world_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(train rows, held-out rows): the last rows of the corpus are held out for the eval loss, as many whatever the
    number of processes (`batch_size` is per process; the split fixes the training data)."""
    step_size = cfg.batch_size * world_size
    n_eval = min(max(step_size, len(rows) // 100), cfg.eval_batches * step_size, len(rows) // 2)
    return rows[:-n_eval], rows[-n_eval:]


@torch.no_grad()
def eval_loss(model, rows: torch.Tensor, cfg) -> float:
    model.eval()
    total, n = 0.0, 0
    for start in range(0, len(rows), cfg.batch_size):  # rows: the held-out rows, at most eval_batches steps
        loss_sum, count = lm_loss_sum(model, rows[start:start + cfg.batch_size], cfg)
        total, n = total + float(loss_sum), n + int(count)
    model.train()
    return total / max(n, 1)


def pretrain(recipe: Recipe, resume: bool = False, stop_at_step: int | None = None,
             branch_from: str | Path | None = None, eval_corpora: dict[str, list[Path]] | None = None) -> dict:
    """Run (or resume) pre-training; returns a summary. `stop_at_step` simulates a kill (tests). Under torchrun /
    accelerate launch each rank trains its share of every step; rank 0 holds the lock and writes.

    `branch_from`: a checkpoint folder to branch from (module docstring). `eval_corpora`: name -> corpus files whose
    last `eval_batches × batch_size` rows are evaluated too, logged as `eval_loss_<name>`: a held-out file, or the
    training corpus of another run, whose tail that run held out when it used at least as many eval rows."""
    cfg = recipe.train
    dist = engine.dist_setup(cfg)
    if dist.world_size > 1 and dist.is_main:
        print(f"distributed: {dist.world_size} processes, {dist.mode} on {dist.device.type}")
    engine.setup_torch(cfg)
    texts = read_corpus(corpus_paths(recipe))  # checked before the run folder exists
    levers.check_compiler(cfg)
    extra = {name: read_corpus([Path(p) for p in paths]) for name, paths in (eval_corpora or {}).items()}
    if branch_from is not None and not (Path(branch_from) / "trainer_state.pt").is_file():
        raise engine.BranchError(f"--branch-from {branch_from}: no checkpoint there (expected "
                                 "<run>/checkpoints/step-N)")
    model, tokenizer = load_model_and_tokenizer(recipe.model, tokenizer_path=recipe.tokenizer.out_dir, seed=cfg.seed)
    with RunLock(recipe.run_dir) if dist.is_main else nullcontext():
        if dist.is_main:
            prepare_run_dir(recipe, verb="pretrain")
            remove_stale_temps(recipe.run_dir)
        dist.barrier()
        return _pretrain(recipe, model, tokenizer, texts, recipe.run_dir, resume, stop_at_step, branch_from, extra)


def _pretrain(recipe: Recipe, model, tokenizer, texts: list[str], run_dir: Path, resume: bool,
              stop_at_step: int | None, branch_from: str | Path | None = None,
              extra_texts: dict[str, list[str]] | None = None) -> dict:
    # ---- setup
    cfg = recipe.train
    dist = engine.dist_setup()
    model.to(engine.pick_device())
    rows = tokenize_rows(texts, tokenizer, cfg.seq_len)
    step_size = cfg.batch_size * dist.world_size  # batch_size is per process
    train_rows, eval_rows = split_eval(rows, cfg, dist.world_size)
    extra_eval = {name: tokenize_rows(t, tokenizer, cfg.seq_len)[-cfg.eval_batches * cfg.batch_size:]
                  for name, t in (extra_texts or {}).items()}
    order = engine.EpochOrder(len(train_rows), step_size, cfg.seed, drop_last=True)  # every rank's rows per step
    steps_per_epoch = order.steps_per_epoch
    start, carried = 0, None
    if branch_from is not None:  # weights, moments and step of the checkpoint; the schedule is this recipe's
        point = engine.load_branch_point(branch_from, model)  # before wrapping: FSDP shards the loaded weights
        start, carried = point.step, point.optimizer_state
    own_steps = cfg.max_steps or max(1, int(cfg.epochs * steps_per_epoch))
    total_steps = start + own_steps
    forward = dist.wrap(model)  # DDP / FSDP (which shards the parameters: before the optimizer is made)
    if cfg.compile:  # after the wrap, as in sft.py
        levers.compile_layers(model)  # in place: parameter names, checkpoints and the saved model are untouched
    optimizer = engine.make_optimizer(model, cfg, carried=carried)
    scheduler = engine.make_scheduler(optimizer, cfg, own_steps)  # counted from the branch point
    state = engine.TrainState(step=start)
    if resume:
        resumed = engine.resume_from_checkpoints(run_dir, model, optimizer, scheduler)
        state = resumed if resumed.step > start else state
    log = MetricsLog(run_dir, tensorboard=cfg.tensorboard, resume_at=state.step if resume else None,
                     enabled=dist.is_main)

    def log_eval(step: int) -> dict[str, float]:
        """Held-out losses at `step`, logged; rank 0 alone (a whole copy under FSDP), NaN on the other ranks."""
        with dist.main_model(model) as plain:
            if plain is None:
                return {"eval_loss": float("nan")}
            losses = {"eval_loss": eval_loss(plain, eval_rows, cfg)}
            losses |= {f"eval_loss_{name}": eval_loss(plain, held, cfg) for name, held in extra_eval.items()}
            log.log(step, **losses)
            return losses

    trainable, total = count_parameters(model)
    say = print if dist.is_main else (lambda *_: None)
    say(f"pretrain {recipe.name}: {total / 1e6:.2f}M params, {len(train_rows)} rows x {cfg.seq_len} tokens, "
        f"{total_steps} steps ({steps_per_epoch}/epoch), schedule {cfg.schedule}"
        + (f", branched from {branch_from} at step {start}" if branch_from is not None else ""))
    window = []
    speed = engine.Throughput()
    if branch_from is not None and cfg.eval_every and state.step == start:
        log_eval(start)  # where the branch's curves start
    # ---- loop
    model.train()
    bar = tqdm(range(state.step, total_steps), initial=state.step, total=total_steps, desc="pretrain", unit="step",
               disable=not dist.is_main)
    for step in bar:
        if stop_at_step is not None and step >= stop_at_step:
            break
        speed.step_start()
        epoch, picked = order.pick(step)  # every rank's rows; this rank trains its share
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
        step_lr = scheduler.get_last_lr()[0]  # the lr this step uses
        grad_norm = engine.clip_and_step(model, optimizer, scheduler, cfg)
        speed.step_done(len(picked) * cfg.seq_len)
        state.step = step + 1
        window.append(step_loss)
        if state.step % cfg.log_every == 0 or state.step == total_steps:
            log.log(state.step, loss=sum(window) / len(window), lr=step_lr,
                    grad_norm=grad_norm, tokens_per_s=speed.window_rate(), epoch=epoch)
            bar.set_postfix(loss=f"{sum(window) / len(window):.3f}", tok_s=f"{speed.window_rate():.0f}")
            window = []
            speed.reset_window()
        # ---- evaluate and save
        if cfg.eval_every and state.step % cfg.eval_every == 0:
            log_eval(state.step)
        if cfg.save_every and state.step % cfg.save_every == 0:
            engine.save_checkpoint(run_dir, model, optimizer, scheduler, state, full=True, keep=cfg.keep_checkpoints)
    bar.close()
    if state.step < total_steps:  # simulated kill: nothing more is written
        return {"step": state.step, "stopped": True}
    final = log_eval(state.step)
    if cfg.compile:
        levers.uncompile_layers(model)  # a caller that goes on with the model (generation, a branch) runs it plainly
    final_eval = final["eval_loss"]
    with dist.main_model(model) as plain:  # rank 0 saves; the others wait
        log.close()
        if plain is not None:
            save_final(plain, tokenizer, run_dir / "final", adapter="none", base=None)
    summary = {"step": state.step, "start_step": start, "eval_loss": final_eval, "eval_losses": final,
               "params": total, "trainable": trainable, "final": str(run_dir / "final"),
               "tokens_per_s": speed.overall_rate()}
    say(f"pretrain done: step {state.step}, eval loss {final_eval:.4f}, model in {run_dir / 'final'}")
    return summary
