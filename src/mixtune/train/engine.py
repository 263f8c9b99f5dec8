"""Shared training mechanics: threads and seeds, optimizer, schedules (cosine, WSD, ...), bf16 autocast, atomic
checkpoints with optimizer/scheduler/RNG/data position, resume, the NaN guard, and several processes
(`dist_setup()` / `Distributed`, from train/distributed.py: torchrun or accelerate launch, DDP or FSDP2).

The loops themselves live in the stage files (pretrain.py, sft.py); this module holds only what they share. Under
several processes every rank calls the save helpers (sharded tensors are gathered) and rank 0 alone writes.
"""

from __future__ import annotations

import math
import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm
from transformers.optimization import (
    get_constant_schedule_with_warmup,
    get_cosine_with_min_lr_schedule_with_warmup,
    get_linear_schedule_with_warmup,
    get_wsd_schedule,
)

from mixtune.config import TrainConfig
from mixtune.errors import UserError
from mixtune.runs import MetricsLog, atomic_dir, atomic_write_file, atomic_write_json
from mixtune.train.distributed import (  # noqa: F401 -- re-exported
    Distributed,
    DistributedError,
    ZeroOptimizer,
    dist_close,
    dist_setup,
)

CHECKPOINTS = "checkpoints"
KEEP_CHECKPOINTS = 2


class BranchError(UserError, ValueError):
    """A checkpoint a branch cannot start from (an adapter-only checkpoint, weights of another size)."""


class TrainingDiverged(UserError, RuntimeError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


def setup_torch(cfg: TrainConfig) -> None:
    """Threads, seeds and the allocator. One thread per run is fastest on small shared machines (DESIGN.md)."""
    from mixtune.train.levers import keep_freed_memory

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    keep_freed_memory()


def pick_device() -> torch.device:
    """The GPU when there is one (under torchrun / accelerate launch: this rank's, set by `dist_setup`), else the
    CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def to_device(batch: dict, device: torch.device) -> dict:
    """Tensors of a micro-batch moved to `device` (other values untouched)."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def autocast(cfg: TrainConfig, device: torch.device | str = "cpu"):
    device_type = torch.device(device).type
    return torch.autocast(device_type, dtype=torch.bfloat16) if cfg.bf16 else nullcontext()


def set_gradient_checkpointing(model: torch.nn.Module, on: bool) -> None:
    """Recompute each block's activations in the backward pass instead of keeping them (`train.gradient_checkpointing`:
    less memory, ~30% more compute, the same loss and gradients). Non-reentrant checkpointing, so frozen inputs
    (LoRA on a frozen base) need no `enable_input_require_grads`."""
    from mixtune.model.adapters import unwrap_base

    base = unwrap_base(model)
    if not hasattr(base, "activation_checkpointing_enable"):
        if on:
            raise ValueError(f"{type(base).__name__} does not support gradient checkpointing; "
                             "set train.gradient_checkpointing=false")
        return
    if on:
        base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    elif base.is_activation_checkpointing:
        base.activation_checkpointing_disable()


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, carried: dict | None = None) -> torch.optim.Optimizer:
    """AdamW over trainable parameters; no weight decay on vectors (norms, biases).

    `carried`: the state of the previous stage's optimizer (train.fresh_optimizer: false). Its moments carry over;
    its learning rate does not: the new stage's schedule starts from this stage's peak (create the scheduler after
    this call)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # foreach: the same arithmetic as the per-tensor loop (bit-identical), in fewer, larger kernels. fused: one
    # kernel per tensor, faster still, but it rounds differently (1 ulp), hence a switch.
    fused = cfg.fused_adamw or None
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=cfg.betas, fused=fused,
                                  foreach=None if fused else True)
    optimizer = dist_setup().attach(model, optimizer, cfg)  # DeepSpeed: the engine's ZeroOptimizer; else itself
    if carried is not None:
        dist_setup().load_optimizer_state(optimizer, carried)
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr
            group.pop("initial_lr", None)  # else the new scheduler would start from the old stage's peak
    return optimizer


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    """Warm-up then cosine (to min_lr_ratio), WSD (stable then a 1-sqrt cooldown over decay_ratio; MiniCPM,
    Hägele et al. 2024), linear or constant. The transformers implementations are used."""
    optimizer = optimizer.base if isinstance(optimizer, ZeroOptimizer) else optimizer  # its lr is what ZeRO steps with
    warmup = round(cfg.warmup_ratio * total_steps)
    if cfg.schedule == "cosine":
        return get_cosine_with_min_lr_schedule_with_warmup(optimizer, warmup, total_steps,
                                                           min_lr_rate=cfg.min_lr_ratio)
    if cfg.schedule == "wsd":
        decay = max(1, round(cfg.decay_ratio * total_steps))
        return get_wsd_schedule(optimizer, warmup, decay, num_training_steps=total_steps,
                                decay_type="1-sqrt", min_lr_ratio=cfg.min_lr_ratio)
    if cfg.schedule == "linear":
        return get_linear_schedule_with_warmup(optimizer, warmup, total_steps)
    return get_constant_schedule_with_warmup(optimizer, warmup)


def check_finite(loss: float, step: int, run_dir: Path) -> None:
    if math.isfinite(loss):
        return
    last = latest_checkpoint(run_dir)
    where = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
    raise TrainingDiverged(f"loss is {loss} at step {step}; stopping ({where}). Lower train.lr or check the data.")


def clip_and_step(model, optimizer, scheduler, cfg: TrainConfig) -> float:
    """Clip, step, zero grads; returns the pre-clip gradient norm (0 when clipping is off)."""
    if isinstance(optimizer, ZeroOptimizer):  # DeepSpeed: its engine reduces, clips, steps and zeroes
        norm = optimizer.step()
        scheduler.step()
        return norm if cfg.max_grad_norm > 0 else 0.0
    norm = 0.0
    if cfg.max_grad_norm > 0:
        params = [p for p in model.parameters() if p.requires_grad]
        total = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        norm = float(total.full_tensor() if hasattr(total, "full_tensor") else total)  # FSDP: a sharded norm
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return norm


# ------------------------------------------------------------------------------------------------- checkpoints
@dataclass
class TrainState:
    """What a resumed run needs besides weights: progress, data position and RNG."""

    step: int = 0
    data: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def _storage(t: torch.Tensor) -> int:
    return (t.to_local() if hasattr(t, "to_local") else t).data_ptr()  # a shard's storage under FSDP


def trainable_state_dict(model: torch.nn.Module, full: bool) -> dict[str, torch.Tensor]:
    """The trainable (or all) weights; sharded ones stay sharded (gather them with `Distributed.gather`)."""
    if full:
        # Tied weights (embeddings = lm_head) are stored once; load_state_dict(strict=False) re-ties them.
        seen: set[int] = set()
        out = {}
        for name, t in model.state_dict().items():
            if _storage(t) in seen:
                continue
            seen.add(_storage(t))
            out[name] = t.detach().contiguous()
        return out
    return {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_weights(model: torch.nn.Module, path: Path, full: bool) -> Path:
    """The trainable (or all) weights as one safetensors file, written atomically by rank 0 (every rank calls)."""
    dist = dist_setup()
    with dist.whole_params(model):  # ZeRO-3: gathered on every rank for the copy
        state = dist.gather(trainable_state_dict(model, full))
    if dist.is_main:
        atomic_write_file(path, lambda tmp: save_file(state, str(tmp)))
    dist.barrier()
    return Path(path)


def _step_of(path: Path) -> int:
    return int(path.name.split("-", 1)[1]) if path.name.startswith("step-") and path.name[5:].isdigit() else -1


def checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoint folders `checkpoints/step-N`, newest first (temp folders of killed writers are never listed)."""
    root = Path(run_dir) / CHECKPOINTS
    found = [p for p in root.iterdir() if p.is_dir() and _step_of(p) >= 0] if root.is_dir() else []
    return sorted(found, key=_step_of, reverse=True)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest checkpoint folder (by step, whatever `latest.json` says), or None."""
    found = checkpoints(run_dir)
    return found[0] if found else None


def save_checkpoint(run_dir: str | Path, model, optimizer, scheduler, state: TrainState, full: bool,
                    keep: int = KEEP_CHECKPOINTS) -> Path:
    """Write `checkpoints/step-N/` atomically (weights, trainer state, and for full models `config.json`, so a run
    can branch from any checkpoint), then update `latest.json` and prune all but the `keep` newest (0 keeps all).
    Every rank calls it: sharded weights and optimizer state are gathered whole, rank 0 writes (the files do not
    depend on the number of processes), the others wait. RNG states are rank 0's: every rank is seeded alike."""
    dist = dist_setup()
    root = Path(run_dir) / CHECKPOINTS
    name = f"step-{state.step:07d}"
    with dist.whole_params(model):  # ZeRO-3: gathered on every rank for the copy
        weights = dist.gather(trainable_state_dict(model, full))
    optimizer_state = dist.gather(optimizer.state_dict())
    if dist.is_main:
        _write_checkpoint(root / name, model, weights, optimizer_state, scheduler, state, full)
        atomic_write_json(root / "latest.json", {"name": name, "step": state.step})
        if keep > 0:
            _prune(root, keep=keep)
    dist.barrier()
    return root / name


def _write_checkpoint(path: Path, model, weights: dict, optimizer_state: dict, scheduler, state: TrainState,
                      full: bool) -> None:
    with atomic_dir(path) as tmp:
        save_file(weights, str(tmp / "weights.safetensors"))
        torch.save({
            "optimizer": optimizer_state, "scheduler": scheduler.state_dict(),
            "step": state.step, "data": state.data, "extra": state.extra,
            "torch_rng": torch.get_rng_state(), "python_rng": list(random.getstate()[1]),
            "python_rng_pos": random.getstate()[2], "full": full,
        }, tmp / "trainer_state.pt")
        config = getattr(model, "config", None)
        if full and hasattr(config, "to_json_file"):
            config.to_json_file(str(tmp / "config.json"))


def _prune(root: Path, keep: int) -> None:
    for old in checkpoints(root.parent)[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def load_checkpoint_into(path: Path, model, optimizer, scheduler) -> TrainState:
    """Restore weights, optimizer, scheduler and RNG from `path`; never unpickles arbitrary objects. Every rank reads
    the same files (each keeps its shard under FSDP)."""
    dist = dist_setup()
    blob = torch.load(path / "trainer_state.pt", weights_only=True)
    weights = load_file(str(path / "weights.safetensors"))
    _missing, unexpected = dist.load_model_state(model, weights)
    if unexpected:
        raise ValueError(f"{path}: checkpoint has weights the model lacks: {unexpected[:5]}")
    dist.load_optimizer_state(optimizer, blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    torch.set_rng_state(blob["torch_rng"])
    random.setstate((3, tuple(blob["python_rng"]), blob["python_rng_pos"]))
    return TrainState(step=int(blob["step"]), data=dict(blob["data"]), extra=dict(blob["extra"]))


@dataclass
class BranchPoint:
    """Where a branch starts: a checkpoint's step and its optimizer state (the weights are already loaded)."""

    path: Path
    step: int
    optimizer_state: dict


def load_branch_point(path: str | Path, model) -> BranchPoint:
    """Load the weights of checkpoint `path` (`checkpoints/step-N`) into `model` and return its step and AdamW state
    (not its schedule: a branch brings its own). Weights that do not fit the model are an error naming the folder."""
    path = Path(path)
    if not (path / "trainer_state.pt").is_file() or not (path / "weights.safetensors").is_file():
        raise FileNotFoundError(f"{path}: not a checkpoint folder (needs weights.safetensors and trainer_state.pt)")
    blob = torch.load(path / "trainer_state.pt", weights_only=True)
    if not blob.get("full", True):
        raise BranchError(f"{path}: holds only trainable (adapter) weights; a branch needs a full checkpoint")
    try:
        missing, unexpected = model.load_state_dict(load_file(str(path / "weights.safetensors")), strict=False)
    except RuntimeError as e:  # shape mismatches
        raise BranchError(f"{path}: weights do not fit the model ({str(e).splitlines()[-1].strip()[:200]}); "
                          "give the checkpoint's model sizes") from None
    tied = {k for k in missing if k.endswith("lm_head.weight") and getattr(model.config, "tie_word_embeddings", False)}
    if unexpected or set(missing) - tied:
        raise BranchError(f"{path}: weights do not fit the model (missing {sorted(set(missing) - tied)[:5]}, "
                         f"unexpected {unexpected[:5]}); give the checkpoint's model sizes")
    return BranchPoint(path, int(blob["step"]), blob["optimizer"])


def resume_from_checkpoints(run_dir: str | Path, model, optimizer, scheduler, log=print) -> TrainState:
    """Load the newest checkpoint that loads; a corrupt one is reported and the previous one tried. A run folder
    with no loadable checkpoint starts at step 0 (and says so). Every rank must resume at the same step."""
    state = None
    for path in checkpoints(run_dir):
        try:
            state = load_checkpoint_into(path, model, optimizer, scheduler)
        except Exception as e:  # noqa: BLE001 -- a truncated file raises anything from safetensors/torch/pickle
            log(f"resume: {path} does not load ({type(e).__name__}: {str(e)[:120]}); trying an older checkpoint")
            continue
        log(f"resume: continuing from {path} at step {state.step}")
        break
    if state is None and (Path(run_dir) / CHECKPOINTS).is_dir():
        log(f"resume: no loadable checkpoint in {Path(run_dir) / CHECKPOINTS}; starting at step 0")
    state = state or TrainState()
    dist = dist_setup()
    if dist.all_reduce_sum(state.step) != state.step * dist.world_size:
        raise DistributedError(f"resume: ranks found different checkpoints in {run_dir} (rank {dist.rank}: step "
                               f"{state.step}); every rank must see the same run folder (a shared filesystem)")
    return state


def metrics_log(ctx, resume_at: int | None = None) -> MetricsLog:
    """A stage's metrics.jsonl (and, with train.tensorboard, events in the run's TensorBoard folder, steps
    continuing the earlier stages'), written by rank 0 only. `resume_at`: see MetricsLog."""
    return MetricsLog(ctx.folder, tensorboard=ctx.recipe.train.tensorboard, resume_at=resume_at,
                      tensorboard_dir=ctx.tensorboard_dir, step_offset=ctx.step_offset,
                      enabled=dist_setup().is_main)


def stage_steps(cfg: TrainConfig, n_items: int, world_size: int = 1, epochs: float | None = None) -> int:
    """Optimizer steps of a stage over `n_items` (examples, pairs or prompts): train.max_steps, else `epochs`
    (default train.epochs) of batch_size x world_size items, rounded up once over all epochs (so fractions of a
    dataset get proportional steps). The stage cache keys an SFT stage by it: the same steps on the same data are the
    same training."""
    epochs = cfg.epochs if epochs is None else epochs
    return cfg.max_steps or max(1, math.ceil(epochs * n_items / (cfg.batch_size * world_size)))


def resume_stage(ctx, model, optimizer, scheduler) -> tuple[TrainState, MetricsLog]:
    """A stage's first step and its metrics log: step 0 and a new log, or with ctx.resume the newest loadable
    checkpoint of the stage folder loaded into model, optimizer and scheduler and the log continued after its step."""
    state = TrainState()
    if ctx.resume:
        state = resume_from_checkpoints(ctx.folder, model, optimizer, scheduler, log=ctx.log)
    return state, metrics_log(ctx, resume_at=state.step if ctx.resume else None)


def step_bar(ctx, state: TrainState, total_steps: int) -> tqdm:
    """The stage's progress bar over the steps it has left (one per optimizer step), shown by rank 0."""
    return tqdm(range(state.step, total_steps), initial=state.step, total=total_steps, desc=ctx.name, unit="step",
                disable=not dist_setup().is_main)


def epoch_seed(seed: int, epoch: int) -> int:
    """The data-order seed of one epoch (the only place this formula is written)."""
    return seed * 1_000_003 + epoch


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The seeded permutation of `n` items for `epoch`: reshuffled every epoch, reproducible on resume."""
    gen = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    return torch.randperm(n, generator=gen).tolist()


class EpochOrder:
    """The items each optimizer step takes: consecutive slices of `per_step` from a seeded permutation of `n` items
    drawn again at every epoch (`epoch_order`), so a run resumed at any step takes the same items as an unbroken one.
    `drop_last`: an epoch's last, shorter slice is not taken (pre-training's fixed-size rows). With `log` (a
    MetricsLog), each epoch's order is logged as it is drawn (`epoch`, `shuffle_seed`)."""

    def __init__(self, n: int, per_step: int, seed: int, drop_last: bool = False, log: MetricsLog | None = None):
        self.n, self.per_step, self.seed, self.log = n, per_step, seed, log
        self.steps_per_epoch = max(1, n // per_step if drop_last else math.ceil(n / per_step))
        self._epoch, self._order = -1, []

    def pick(self, step: int) -> tuple[int, list[int]]:
        """(epoch, the item indices) of optimizer step `step` (0-based, counted over the whole stage)."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._order, self._epoch = epoch_order(self.n, self.seed, epoch), epoch
            if self.log is not None:
                self.log.log(step, epoch=epoch, shuffle_seed=epoch_seed(self.seed, epoch))
        return epoch, self._order[pos * self.per_step:(pos + 1) * self.per_step]


class Throughput:
    """The one tokens/s definition of every loop: real (non-padding) tokens processed in optimizer steps divided by
    the wall time of those steps, over the current logging window (`window_rate`, then `reset_window`) and over the
    whole stage (`overall_rate`). Evaluation and checkpointing time is excluded: only `step_done` counts."""

    def __init__(self) -> None:
        self.total_tokens = self.window_tokens = 0
        self.total_s = self.window_s = 0.0
        self._t = time.perf_counter()

    def step_start(self) -> None:
        self._t = time.perf_counter()

    def step_done(self, tokens: int) -> None:
        dt = time.perf_counter() - self._t
        self.total_tokens += tokens
        self.window_tokens += tokens
        self.total_s += dt
        self.window_s += dt

    def window_rate(self) -> float:
        return self.window_tokens / max(self.window_s, 1e-9)

    def reset_window(self) -> None:
        self.window_tokens, self.window_s = 0, 0.0

    def overall_rate(self) -> float:
        return self.total_tokens / max(self.total_s, 1e-9)
