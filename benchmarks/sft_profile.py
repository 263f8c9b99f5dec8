"""The step profile of benchmarks/sft_throughput.py (--profile): where one SFT step's time goes (torch.profiler with
shapes), for the defaults and for WINNERS, plus the matmul rate at the model's own shapes."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import torch
from sft_throughput import (
    MAX_LEN,
    ROWS_PER_STEP,
    VOCAB,
    WINNERS,
    Trainee,
    make_recipe,
    matmul_flops,
    measure_peaks,
    step_batches,
)
from torch.profiler import ProfilerActivity, profile, record_function

from mixtune.config import DataConfig
from mixtune.data.sft_dataset import build_sft_rows
from mixtune.train import sft

CE_BACKWARD = ("LogSoftmaxBackward", "NllLossBackward", "IndexBackward", "_LinearCrossEntropyBackward")
MATMULS = ("aten::mm", "aten::addmm", "aten::bmm")


def category(event, cfg) -> str:
    """Where an op's self time goes: its own name and shapes, else the enclosing range or autograd node."""
    chain, parent = [], event
    while parent is not None:
        chain.append(parent.name)
        parent = parent.cpu_parent
    if "collate" in chain:
        return "Python: collation and packing"
    if "optimizer" in chain:
        return "optimizer (clip + AdamW)"
    name = event.name
    if name in MATMULS:
        dims = {d for shape in event.input_shapes for d in shape}
        if cfg.vocab_size in dims:
            return "matmul: output layer"
        return "matmul: MLP" if cfg.intermediate_size in dims else "matmul: attention q/k/v/o"
    if "scaled_dot_product" in name or "flash_attention" in name:
        return "attention (SDPA kernels)"
    if "embedding" in name.lower() or any("EmbeddingBackward" in c for c in chain):
        return "embedding (fwd + bwd)"
    if "output layer + CE" in chain or any(b in c for c in chain for b in CE_BACKWARD):
        return "cross-entropy (softmax, gather, its copies)"
    if any("Compiled" in c or "compiled" in c for c in chain):
        return "compiled kernels (norms, rotary, SiLU, casts)"
    if name in ("aten::copy_", "aten::_to_copy", "aten::to") or any("ToCopyBackward" in c for c in chain):
        return "autocast casts and copies"
    if name == "packed_attention" or "packed_sdpa" in chain:
        return "attention (SDPA kernels)"
    return "elementwise and other (norms, rotary, SiLU, adds)"


def profile_steps(trainee: Trainee, rows, batches, cfg) -> tuple[dict[str, float], int, float]:
    """(ms per step by category, real tokens, seconds) over `batches` under torch.profiler(record_shapes=True)."""
    def traced(fn):
        def wrapper(*args, **kwargs):
            with record_function("output layer + CE"):
                return fn(*args, **kwargs)
        return wrapper

    saved = sft.target_token_ce, sft.chunked_target_token_ce
    sft.target_token_ce, sft.chunked_target_token_ce = traced(saved[0]), traced(saved[1])
    try:
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            tokens, seconds = trainee.steps(rows, batches)
    finally:
        sft.target_token_ce, sft.chunked_target_token_ce = saved
    per_step = defaultdict(float)
    for event in prof.events():
        per_step[category(event, cfg)] += event.self_cpu_time_total / 1e3 / len(batches)
    per_step["untraced (Python between ops)"] = max(0.0, seconds * 1e3 / len(batches) - sum(per_step.values()))
    return dict(per_step), tokens, seconds


def print_profile(tokenizer, examples, batch_size: int, tmp: Path, peaks: dict, steps: int = 2,
                  rounds: int = 3, precision: str = "bf16") -> None:
    """The step profile of the defaults and of WINNERS, profiled in alternation (`rounds` × `steps` steps each; the
    round with the least total time is shown, the one a shared machine disturbed least), then the matmul rate at
    this model's shapes and what the profile implies for a host with a faster matmul peak. `precision`: bf16
    (autocast) or fp32, both trainees."""
    same = {} if precision == "bf16" else {"bf16": False}
    rows = build_sft_rows(examples, tokenizer, DataConfig(max_seq_len=MAX_LEN))
    batches = step_batches(len(rows), batch_size)
    trainees = {name: Trainee(tokenizer, make_recipe(tmp / "profile", batch_size, **train, **same))
                for name, train in (("defaults", {}), ("winners", WINNERS))}
    for trainee in trainees.values():
        trainee.steps(rows, batches[:3])  # warm-up (and compile) outside the profile
    tables = {}
    for r in range(rounds):
        for name, trainee in trainees.items():
            at = 3 + r * steps
            table = profile_steps(trainee, rows, batches[at:at + steps], trainee.model.config)
            if name not in tables or sum(table[0].values()) < sum(tables[name][0].values()):
                tables[name] = table
    cats = sorted(set(tables["defaults"][0]) | set(tables["winners"][0]), key=lambda c: -tables["defaults"][0].get(c, 0))
    print(f"\nprofile, {precision}: ms per step (mean of {steps} steps, least-loaded of {rounds} alternating rounds; {batch_size} "
          f"examples, ~{ROWS_PER_STEP}x{MAX_LEN} tokens; op self times by op name, shapes, enclosing range or autograd node)")
    print(f"| {'where the time goes':48s} | {'defaults':>15s} | {'winners':>15s} |")
    print(f"|{'-' * 50}|{'-' * 17}|{'-' * 17}|")
    for cat in cats + ["total"]:
        cells = []
        for name in ("defaults", "winners"):
            per, _, _ = tables[name]
            total = sum(per.values())
            ms = total if cat == "total" else per.get(cat, 0.0)
            cells.append(f"{ms:7.0f} ({ms / total:4.0%})")
        print(f"| {cat:48s} | {cells[0]:>15s} | {cells[1]:>15s} |")
    m = ROWS_PER_STEP * MAX_LEN
    n = int(m * 0.62)
    now = measure_peaks()  # the peak of this moment, beside the shapes measured next
    peaks = {k: max(v, now[k]) for k, v in peaks.items()}
    print(f"\nmatmul rate at this model's shapes vs the {peaks['bf16'] / 1e9:.0f} GFLOP/s 2048² bf16 peak "
          f"(fp32 2048²: {peaks['fp32'] / 1e9:.0f}):")
    for label, (a, k, b) in (("MLP up/gate", (m, 256, 1024)), ("MLP down", (m, 1024, 256)),
                             ("attention q/k/v/o", (m, 256, 256)), ("output layer", (n, 256, VOCAB)),
                             ("weight gradient (MLP)", (1024, m, 256))):
        bf, fp = matmul_flops(a, k, b), matmul_flops(a, k, b, torch.float32)
        print(f"  {label:22s} ({a}x{k})x({k}x{b}): bf16 {bf / 1e9:5.0f} GFLOP/s = {bf / peaks['bf16']:4.0%} of "
              f"peak; fp32 {fp / 1e9:5.0f}")
    for name in ("defaults", "winners"):
        per, tokens, seconds = tables[name]
        mm = sum(v for k, v in per.items() if k.startswith("matmul")) * steps / 1e3
        for target in (647.5e9,):  # the AMX host of issue 16
            projected = tokens / (mm * peaks["bf16"] / target + seconds - mm)
            print(f"  {name}: matmuls {mm / seconds:.0%} of the step here; with matmuls at a {target / 1e9:.0f} "
                  f"GFLOP/s peak and the rest unchanged: ~{projected:.0f} tok/s (here {tokens / seconds:.0f})")

