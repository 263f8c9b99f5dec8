"""Shared training mechanics: threads and seeds, optimizer, schedules (cosine, WSD, ...), bf16 autocast, atomic
checkpoints with optimizer/scheduler/RNG/data position, resume, the NaN guard, and the CPU speed levers
(allocator, per-example packed attention, torch.compile; see benchmarks/sft_throughput.py for what each measured).

The loops themselves live in the stage files (pretrain.py, sft.py); this module holds only what they share.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import math
import os
import random
import shutil
import sys
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import AttentionInterface
from transformers.optimization import (
    get_constant_schedule_with_warmup,
    get_cosine_with_min_lr_schedule_with_warmup,
    get_linear_schedule_with_warmup,
    get_wsd_schedule,
)

from mixtune.config import TrainConfig
from mixtune.model.adapters import unwrap_base
from mixtune.runs import atomic_write_json

CHECKPOINTS = "checkpoints"
KEEP_CHECKPOINTS = 2


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


def setup_torch(cfg: TrainConfig) -> None:
    """Threads, seeds and the allocator. One thread per run is fastest on small shared machines (DESIGN.md)."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    keep_freed_memory()


def keep_freed_memory() -> bool:
    """glibc malloc: serve every allocation from the heap and never give freed memory back (M_MMAP_MAX = 0,
    M_TRIM_THRESHOLD = 1 GiB). By default each tensor over 32 MiB (a step's (N, V) logits) is a fresh mmap whose
    pages the kernel faults in and zeroes again on every step; with this they are reused. The process keeps its
    peak memory; numerics are untouched. Returns False (and does nothing) off glibc."""
    return _mallopt(mmap_max=0, trim_threshold=1 << 30)


def default_malloc() -> bool:
    """glibc's default mmap and trim settings back (undoes `keep_freed_memory`)."""
    return _mallopt(mmap_max=65536, trim_threshold=128 * 1024)


def _mallopt(mmap_max: int, trim_threshold: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    return bool(libc.mallopt(m_mmap_max, mmap_max)) and bool(libc.mallopt(m_trim_threshold, trim_threshold))


def pick_device() -> torch.device:
    """The GPU when there is one, else the CPU (multi-GPU runs go through accelerate/torchrun: not yet wired)."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def to_device(batch: dict, device: torch.device) -> dict:
    """Tensors of a micro-batch moved to `device` (other values untouched)."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def autocast(cfg: TrainConfig, device: torch.device | str = "cpu"):
    device_type = torch.device(device).type
    return torch.autocast(device_type, dtype=torch.bfloat16) if cfg.bf16 else nullcontext()


# ------------------------------------------------------------------------------------------------- speed levers
PACKED_ATTENTION = "mixtune_packed_sdpa"
"""Name of `packed_sdpa` in transformers' AttentionInterface (registered below)."""


def packed_segments(position_ids: torch.Tensor) -> list[int]:
    """Lengths of the examples of packed rows, row-major: a new example starts where a position is not the previous
    one + 1 (transformers' `find_packed_sequence_indices` rule) and at every row start. (B, T) → lengths summing to
    B·T (the padding at a row's end is one more segment)."""
    flat = position_ids.reshape(-1)
    starts = torch.ones_like(flat, dtype=torch.bool)
    starts[1:] = flat[1:] != flat[:-1] + 1
    starts[::position_ids.shape[-1]] = True
    bounds = torch.nonzero(starts).squeeze(1).tolist() + [flat.numel()]
    return [b - a for a, b in itertools.pairwise(bounds)]


@torch.compiler.disable  # segment lengths are data: run eagerly between compiled regions instead of recompiling
def packed_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                **kwargs) -> tuple[torch.Tensor, None]:
    """Causal SDPA per packed example instead of one (B, 1, T, T) block-diagonal mask over the whole row.

    query (B, Hq, T, D), key/value (B, Hkv, T, D) → (B, T, Hq, D), as transformers' sdpa_attention_forward. The
    masked kernel computes all T² scores of a row; per example (is_causal) it computes Σ L_i²/2, about 5× less for
    rows of ~2.3 examples, and builds no mask. Same maths as the block mask; the rounding of the online softmax
    differs. Needs the packed position_ids (restarting per example) and no attention_mask."""
    if attention_mask is not None or kwargs.get("position_ids") is None:
        raise ValueError("packed attention needs packed position_ids and no attention_mask")
    batch, heads, length, dim = query.shape
    if key.shape[1] != heads:  # grouped-query attention: one K/V head serves heads // Hkv query heads
        key = key.repeat_interleave(heads // key.shape[1], dim=1)
        value = value.repeat_interleave(heads // value.shape[1], dim=1)
    lengths = packed_segments(kwargs["position_ids"])
    rows = [x.transpose(1, 2).reshape(batch * length, heads, dim) for x in (query, key, value)]  # (B·T, H, D)
    outs = []
    for q, k, v in zip(*(x.split(lengths) for x in rows), strict=True):  # each (L, H, D)
        out = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None],
                                             v.transpose(0, 1)[None], dropout_p=dropout, is_causal=True,
                                             scale=scaling)  # (1, H, L, D)
        outs.append(out[0].transpose(0, 1))
    return torch.cat(outs).view(batch, length, heads, dim), None


AttentionInterface.register(PACKED_ATTENTION, packed_sdpa)


@contextmanager
def packed_attention(model: torch.nn.Module, enabled: bool = True):
    """Within the block, `model`'s attention runs per packed example (`packed_sdpa`); restored afterwards so that
    generation and padded batches keep their masks. A no-op when not enabled."""
    config = getattr(model, "config", None)
    if not enabled or config is None:
        yield
        return
    before = config._attn_implementation
    config._attn_implementation = PACKED_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = before


COMPILED_ADAPTERS = ("none", "lora")
"""Adapters `compile_layers` is applied with (tested); LoRAMoE records router gates as module state per batch."""


def compile_layers(model: torch.nn.Module, adapter: str = "none") -> bool:
    """torch.compile (inductor) each decoder layer in place (`Module.compile`: parameter names, checkpoints and
    adapters are untouched). The layers share one compiled graph, so compile time is that of one layer. Packed rows
    change (B, T) every step, so sizes are dynamic from the start: one compile, not one per new shape. Returns
    False, compiling nothing, for an adapter outside COMPILED_ADAPTERS."""
    if adapter not in COMPILED_ADAPTERS:
        return False
    for layer in _layers(model):
        layer.compile(dynamic=True)
    return True


def uncompile_layers(model: torch.nn.Module) -> None:
    """Undo `compile_layers` (generation after the stage runs the plain modules)."""
    for layer in _layers(model):
        layer._compiled_call_impl = None


def _layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    body = unwrap_base(model).base_model  # e.g. LlamaModel: embeddings, decoder layers, final norm
    return list(getattr(body, "layers", None) or [body])


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over trainable parameters; no weight decay on vectors (norms, biases)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # foreach: the same arithmetic as the per-tensor loop (bit-identical), in fewer, larger kernels. fused: one
    # kernel per tensor, faster still, but it rounds differently (1 ulp), hence a switch.
    fused = cfg.fused_adamw or None
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=cfg.betas, fused=fused,
                             foreach=None if fused else True)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    """Warm-up then cosine (to min_lr_ratio), WSD (stable then a 1-sqrt cooldown over decay_ratio; MiniCPM,
    Hägele et al. 2024), linear or constant. The transformers implementations are used."""
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
    norm = 0.0
    if cfg.max_grad_norm > 0:
        params = [p for p in model.parameters() if p.requires_grad]
        norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
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


def trainable_state_dict(model: torch.nn.Module, full: bool) -> dict[str, torch.Tensor]:
    if full:
        # Tied weights (embeddings = lm_head) are stored once; load_state_dict(strict=False) re-ties them.
        seen: set[int] = set()
        out = {}
        for name, t in model.state_dict().items():
            if t.data_ptr() in seen:
                continue
            seen.add(t.data_ptr())
            out[name] = t.detach().contiguous()
        return out
    return {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    pointer = Path(run_dir) / CHECKPOINTS / "latest.json"
    if not pointer.exists():
        return None
    path = Path(run_dir) / CHECKPOINTS / json.loads(pointer.read_text())["name"]
    return path if path.exists() else None


def save_checkpoint(run_dir: str | Path, model, optimizer, scheduler, state: TrainState, full: bool) -> Path:
    """Write `checkpoints/step-N/` atomically (temp folder, fsync'd files, rename), then move `latest.json`."""
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{state.step:07d}"
    tmp = root / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(trainable_state_dict(model, full), str(tmp / "weights.safetensors"))
    torch.save({
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "step": state.step, "data": state.data, "extra": state.extra,
        "torch_rng": torch.get_rng_state(), "python_rng": list(random.getstate()[1]),
        "python_rng_pos": random.getstate()[2], "full": full,
    }, tmp / "trainer_state.pt")
    for f in tmp.iterdir():
        with f.open("rb") as fh:
            os.fsync(fh.fileno())
    final = root / name
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    atomic_write_json(root / "latest.json", {"name": name, "step": state.step})
    _prune(root, keep=KEEP_CHECKPOINTS)
    return final


def _prune(root: Path, keep: int) -> None:
    steps = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))
    for old in steps[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def load_checkpoint_into(path: Path, model, optimizer, scheduler) -> TrainState:
    """Restore weights, optimizer, scheduler and RNG from `path`; never unpickles arbitrary objects."""
    blob = torch.load(path / "trainer_state.pt", weights_only=True)
    weights = load_file(str(path / "weights.safetensors"))
    _missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected:
        raise ValueError(f"{path}: checkpoint has weights the model lacks: {unexpected[:5]}")
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    torch.set_rng_state(blob["torch_rng"])
    random.setstate((3, tuple(blob["python_rng"]), blob["python_rng_pos"]))
    return TrainState(step=int(blob["step"]), data=dict(blob["data"]), extra=dict(blob["extra"]))


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The seeded permutation of `n` items for `epoch`: reshuffled every epoch, reproducible on resume."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=gen).tolist()
