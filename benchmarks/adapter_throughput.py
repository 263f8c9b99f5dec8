"""Adapter throughput: tokens/s and peak memory of each adapter type against full fine-tuning, through sft_stage.

The model, tokenizer and examples of benchmarks/sft_throughput.py (tiny Llama: hidden 256, 4 layers, vocab 8192;
chat examples of 30-400 tokens), bf16 autocast, 2 threads, OMP_WAIT_POLICY=PASSIVE, one epoch per run. Prefix and
prompt tuning train on padded rows (peft puts virtual tokens before each row), the others on packed rows; tokens/s
counts real (non-pad, non-virtual) tokens only, so padding shows as lost throughput.

Memory: each adapter runs in a fresh child process, and the child reports its own `ru_maxrss` (peak resident set
size, process-wide and monotonic, hence one process per measurement) plus the RSS just before training starts (model
built and adapted, data not yet tokenised): `train Δ` = peak − that, the memory training itself adds (activations,
gradients, optimizer state). The last line is one JSON object: adapter -> {trainable, tok_s, ratio, peak_mb, train_mb}.

    python benchmarks/adapter_throughput.py [--examples 1000] [--adapters none,lora,...]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import torch

from mixtune.config import Recipe
from mixtune.model.adapters import apply_adapter
from mixtune.model.load import count_parameters, load_tokenizer
from mixtune.train.sft import sft_stage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sft_throughput import MAX_LEN, THREADS, bench_setup, build_model, make_examples

# adapter -> (adapter section, peak lr): the settings of recipes/adapters/*.yaml
ADAPTERS: dict[str, tuple[dict, float]] = {
    "none": ({"type": "none"}, 1e-3),
    "lora": ({"type": "lora", "r": 8, "alpha": 16}, 2e-3),
    "loramoe": ({"type": "loramoe", "num_experts": 6, "r": 4, "alpha": 32, "lbc_weight": 0.1}, 2e-3),
    "prefix": ({"type": "prefix", "num_virtual_tokens": 16}, 1e-2),
    "prompt": ({"type": "prompt", "num_virtual_tokens": 16}, 3e-2),
    "bottleneck": ({"type": "bottleneck", "bottleneck_size": 32}, 2e-3),
}


def run_child(kind: str, tokenizer_dir: Path, n_examples: int, batch_size: int, out: Path) -> dict:
    """In this (fresh) process: build, adapt and train one epoch; returns the measurements."""
    torch.set_num_threads(THREADS)
    tokenizer = load_tokenizer(tokenizer_dir)
    examples = make_examples(n_examples, tokenizer)
    adapter, lr = ADAPTERS[kind]
    recipe = Recipe.model_validate({
        "name": "bench", "out_dir": str(out), "adapter": adapter,
        "data": {"max_seq_len": MAX_LEN, "packing": True, "template": "tokenizer"},
        "train": {"lr": lr, "batch_size": batch_size, "epochs": 1, "bf16": True, "threads": THREADS,
                  "warmup_ratio": 0.03, "log_every": 10**6, "max_grad_norm": 1.0},
    })
    model = apply_adapter(build_model(tokenizer), recipe.adapter)
    trainable, total = count_parameters(model)
    rss_before = psutil.Process().memory_info().rss
    result = sft_stage(model, tokenizer, recipe, examples, out / "stage")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return {"adapter": kind, "trainable": trainable, "total": total, "tok_s": result.tokens_per_s,
            "peak_mb": peak / 2**20, "train_mb": (peak - rss_before) / 2**20, "loss": result.train_loss}


def measure(kind: str, tokenizer_dir: Path, n_examples: int, batch_size: int, out: Path) -> dict:
    """Run one adapter in a fresh interpreter, so its peak RSS is its own."""
    cmd = [sys.executable, __file__, "--child", kind, "--tokenizer", str(tokenizer_dir), "--examples",
           str(n_examples), "--batch-size", str(batch_size), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    full = next((r["tok_s"] for r in rows if r["adapter"] == "none"), None)
    lines = [("adapter", "trainable", "tokens/s", "vs full", "peak RSS MB", "train Δ MB")]
    for r in rows:
        ratio = f"{r['tok_s'] / full:.2f}" if full else "-"
        lines.append((r["adapter"], f"{r['trainable']:,} ({r['trainable'] / r['total']:.2%})", f"{r['tok_s']:.0f}",
                      ratio, f"{r['peak_mb']:.0f}", f"{r['train_mb']:.0f}"))
    widths = [max(len(line[c]) for line in lines) for c in range(len(lines[0]))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--adapters", default=",".join(ADAPTERS), help="comma-separated subset of " + ",".join(ADAPTERS))
    parser.add_argument("--child", choices=list(ADAPTERS), help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(args.child, args.tokenizer, args.examples, args.batch_size, args.out)))
        return
    kinds = [k for k in args.adapters.split(",") if k]
    unknown = sorted(set(kinds) - set(ADAPTERS))
    if unknown:
        parser.error(f"unknown adapters {unknown}; valid: {', '.join(ADAPTERS)}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _, examples, lengths, batch_size, _ = bench_setup(tmp, args.examples)
        mean_len = statistics.mean(lengths)
        print(f"{len(examples)} examples, mean {mean_len:.0f} tokens, {batch_size} examples/step, "
              f"bf16 autocast, {THREADS} threads")
        rows = []
        for kind in kinds:
            rows.append(measure(kind, tmp / "tok", args.examples, batch_size, tmp / kind))
            print(f"{kind}: {rows[-1]['tok_s']:.0f} tok/s, peak RSS {rows[-1]['peak_mb']:.0f} MB", flush=True)
    print(table(rows))
    full = next((r["tok_s"] for r in rows if r["adapter"] == "none"), None)
    print(json.dumps({r["adapter"]: {"trainable": r["trainable"], "tok_s": round(r["tok_s"], 1),
                                     "ratio": round(r["tok_s"] / full, 3) if full else None,
                                     "peak_mb": round(r["peak_mb"], 1), "train_mb": round(r["train_mb"], 1)}
                      for r in rows}))


if __name__ == "__main__":
    main()
