"""CPU speed levers of SFT, each behind a train.* switch (benchmarks/sft_throughput.py measures each against the
defaults): per-example packed attention, torch.compile of the decoder layers, and glibc malloc that keeps freed
memory (always on: numerics untouched). engine.py calls `keep_freed_memory`; sft.py the rest; pretrain.py
`compile_layers` too."""

from __future__ import annotations

import ctypes
import itertools
import os
import shutil
import sys
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

from mixtune.errors import UserError
from mixtune.model.adapters import unwrap_base


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


class CompilerMissing(UserError, RuntimeError):
    """train.compile on a machine without the C++ compiler inductor builds its kernels with."""


def check_compiler(train) -> None:
    """With `train.compile` on (`train`: a TrainConfig), the C++ compiler inductor builds its kernels with
    (`torch._inductor.config.cpp.cxx`, `CXX`) must exist: called before a run, a study or the demo starts (and
    before any pre-training), not at the first compiled step, which would fail deep inside inductor. Raises
    CompilerMissing (one line)."""
    if not train.compile:
        return
    from torch._inductor import config

    search = config.cpp.cxx if isinstance(config.cpp.cxx, (list, tuple)) else (config.cpp.cxx,)
    names = [c for c in search if c] or [os.environ.get("CXX", "g++")]
    if not any(shutil.which(name) for name in names):
        raise CompilerMissing(f"train.compile: torch.compile (inductor) needs a C++ compiler and found none of "
                              f"{', '.join(names)} on PATH; install one (e.g. apt install g++, or set CXX) or set "
                              "train.compile: false")


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
