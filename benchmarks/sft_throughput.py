"""SFT throughput: mixtune's SFT stage against TRL's SFTTrainer (packing="bfd") in the same process.

Same tiny Llama (hidden 256, 4 layers, vocab 8192), same chat examples of 30-400 tokens, bf16 autocast, 2 threads,
response-only loss on both sides, OMP_WAIT_POLICY=PASSIVE. Each round runs mixtune with today's defaults, mixtune
with the speed levers that measured faster (WINNERS) and TRL, one after the other, so that a shared machine's load
hits all three; medians over rounds are reported: non-pad tokens/s, the ratio to TRL, and MFU against the bf16
matmul peak measured in every round (2048² bf16 matmuls on 2 threads; FLOPs counted as in `flops_per_token`).
The last line is one JSON object with keys mixtune_tok_s, trl_tok_s, ratio, mfu (mixtune with WINNERS).

--levers: each lever alone against the defaults, in short alternating blocks of steps on the same batches (median
tokens/s per lever, the median of per-round paired ratios, peak working memory, and whether the losses of every step
are bit-identical to the defaults'). --fp32: the lever rows without bf16 autocast (as the mini-lab recipes train).
--profile (benchmarks/sft_profile.py): where one step's time goes, for the defaults and for WINNERS.

    python benchmarks/sft_throughput.py [--examples 2000] [--rounds 2] [--levers [--fp32]] [--profile] [--skip-trl]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import ctypes
import json
import random
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Self

import torch
from torch.profiler import record_function
from transformers import LlamaConfig, LlamaForCausalLM

from mixtune.config import DataConfig, Recipe
from mixtune.data.sft_dataset import build_sft_rows
from mixtune.data.tokenizer_train import train_tokenizer
from mixtune.train import engine, levers, sft
from mixtune.train.sft import sft_stage

THREADS = 2
VOCAB = 8192
MAX_LEN = 512
ROWS_PER_STEP = 4  # TRL: 4 packed rows of <= 512 tokens per step; mixtune: the same tokens per step on average
WINNERS = {"fused_ce": True, "packed_attention": True, "fused_adamw": True, "compile": True}
"""The train.* switches that measured faster here (each changes rounding, so each is off by default)."""
LEVERS = {"defaults": {}, "fused_ce": {"fused_ce": True}, "packed_attention": {"packed_attention": True},
          "fused_adamw": {"fused_adamw": True}, "compile": {"compile": True},
          "winners - compile": {k: v for k, v in WINNERS.items() if k != "compile"}, "winners": WINNERS,
          "winners + bf16 off (fp32)": {**WINNERS, "bf16": False}}
"""--levers rows: train.* overrides measured against the defaults."""
FP32_LEVERS = {name: {**train, "bf16": False} for name, train in LEVERS.items()
               if "bf16" not in train and name != "winners - compile"}
"""--levers --fp32 rows: the same without bf16 autocast (the mini-lab recipes train in fp32 on CPU)."""


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]


class PeakMemory:
    """Peak bytes held by live malloc allocations (glibc mallinfo2: heap in use + mmapped chunks), sampled by a
    thread every `every_s`, above the level at entry: a run's working memory. The process's peak RSS cannot tell
    runs apart once several share one process (and keep_freed_memory keeps the heap at its high-water mark)."""

    def __init__(self, every_s: float = 0.005):
        self.every_s, self.peak, self._stop = every_s, 0, threading.Event()
        try:
            self._mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
            self._mallinfo2.restype = _MallInfo2
        except (OSError, AttributeError):  # not glibc >= 2.33: no figure
            self._mallinfo2 = None

    def _used(self) -> int:
        info = self._mallinfo2()
        return info.uordblks + info.hblkhd

    def _sample(self) -> None:
        while not self._stop.wait(self.every_s):
            self.peak = max(self.peak, self._used() - self.base)

    def __enter__(self) -> Self:
        if self._mallinfo2 is not None:
            self.base = self._used()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._mallinfo2 is not None:
            self._stop.set()
            self._thread.join()

    @property
    def mib(self) -> float:
        return self.peak / 2**20 if self._mallinfo2 is not None else float("nan")


def make_examples(n: int, tokenizer=None, seed: int = 0) -> list[dict]:
    """Chat examples of about 30-400 tokens: pseudo-words (one BPE token each once the tokenizer is trained on
    them; digits would split into one token per digit), a third in the question, the rest in the answer."""
    rng = random.Random(seed)
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    words = sorted({"".join(rng.choices(syllables, k=rng.randint(1, 3))) for _ in range(4000)})
    out = []
    for i in range(n):
        target = rng.randint(30, 400) - 12  # the chat template adds about 12 tokens
        q = " ".join(rng.choices(words, k=max(3, target // 3)))
        a = " ".join(rng.choices(words, k=max(3, target - target // 3)))
        out.append({"id": f"bench/{i}", "source": "bench", "ability": "general", "task_type": 0,
                    "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
    return out


def bench_setup(tmp: Path, n_examples: int):
    """(tokenizer trained in `tmp`, examples, their tokenised lengths, mixtune examples per step, share of positions
    with a target): the shared data of the throughput benchmarks. A step holds about ROWS_PER_STEP rows of MAX_LEN tokens, as TRL's does."""
    corpus = tmp / "corpus.txt"
    draft = make_examples(n_examples, tokenizer=None)
    corpus.write_text("\n".join(m["content"] for ex in draft for m in ex["messages"]))
    tokenizer = train_tokenizer([corpus], vocab_size=VOCAB, min_frequency=2, out_dir=tmp / "tok")
    examples = make_examples(n_examples, tokenizer)
    # lengths as sft_stage tokenises them (transformers 5's apply_chat_template(tokenize=True) returns a dict)
    rows = build_sft_rows(examples, tokenizer, DataConfig(max_seq_len=MAX_LEN)).rows
    lengths = [len(r["input_ids"]) for r in rows]
    target_fraction = sum(r["n_target_tokens"] for r in rows) / sum(lengths)
    return tokenizer, examples, lengths, max(1, round(ROWS_PER_STEP * MAX_LEN / statistics.mean(lengths))), \
        target_fraction


def build_model(tokenizer, seed: int = 0) -> LlamaForCausalLM:
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                      num_attention_heads=4, max_position_embeddings=MAX_LEN, tie_word_embeddings=True,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      bos_token_id=tokenizer.bos_token_id)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg)


def matmul_flops(m: int, k: int, n: int, dtype=torch.bfloat16, repeats: int = 10) -> float:
    """FLOP/s of an (m, k) × (k, n) matmul on this machine (best of `repeats`, after a warm-up call)."""
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * m * k * n / best


def matmul_peak_flops(size: int = 2048, repeats: int = 10, dtype=torch.bfloat16) -> float:
    """The peak of this benchmark: `size`² matmuls in `dtype` on THREADS threads, the best of `repeats` single timings.
    (Until issue 16 the mean of the 10 was taken; on a shared machine the mean measures the neighbours' load and
    makes the MFU look higher, the best does not.)"""
    return matmul_flops(size, size, size, dtype, repeats)


def flops_per_token(model, mean_len: float, target_fraction: float) -> float:
    """Training FLOPs per token the loss needs: 6·N for the blocks, causal attention 6·L·d·T, and the output layer
    (6·V·d) only for the `target_fraction` of positions that carry a target (the rest have no logits to compute)."""
    cfg = model.config
    n_blocks = sum(p.numel() for name, p in model.named_parameters() if "layers." in name)
    head = 6 * cfg.vocab_size * cfg.hidden_size * target_fraction
    return 6 * n_blocks + head + 6 * cfg.num_hidden_layers * cfg.hidden_size * mean_len


def make_recipe(out: Path, batch_size: int, **train) -> Recipe:
    return Recipe.model_validate({
        "name": "bench", "out_dir": str(out),
        "data": {"max_seq_len": MAX_LEN, "packing": True, "template": "tokenizer"},
        "train": {"lr": 1e-3, "batch_size": batch_size, "epochs": 1, "bf16": True, "threads": THREADS,
                  "warmup_ratio": 0.03, "log_every": 10**6, "max_grad_norm": 1.0, **train},
    })


def run_mixtune(examples, tokenizer, batch_size: int, out: Path, **train) -> dict:
    """One full SFT stage; tokens/s over its loop, so a compile's first steps are counted."""
    t0 = time.perf_counter()
    with PeakMemory(0.02) as memory:
        model = build_model(tokenizer)
        result = sft_stage(model, tokenizer, make_recipe(out, batch_size, **train), examples, out / "stage")
    metrics = [json.loads(line) for line in (out / "stage" / "metrics.jsonl").read_text().splitlines()]
    loss = [m["loss"] for m in metrics if "loss" in m][-1]
    return {"tok_s": result.tokens_per_s, "loss": loss, "wall_s": time.perf_counter() - t0, "mib": memory.mib}


def run_trl(examples, tokenizer, out: Path, bf16: bool = True) -> dict:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(output_dir=str(out), packing=True, packing_strategy="bfd", max_length=MAX_LEN,
                     per_device_train_batch_size=ROWS_PER_STEP, gradient_checkpointing=False, bf16=bf16,
                     use_cpu=True, assistant_only_loss=True, num_train_epochs=1, learning_rate=1e-3,
                     warmup_steps=0.03, logging_steps=10**6, save_strategy="no", report_to=[],
                     dataloader_num_workers=0, seed=0)
    with PeakMemory(0.02) as memory:
        data = Dataset.from_list([{"messages": ex["messages"]} for ex in examples])
        trainer = SFTTrainer(model=build_model(tokenizer), args=args, train_dataset=data, processing_class=tokenizer)
        tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
        t0 = time.perf_counter()
        output = trainer.train()
        dt = time.perf_counter() - t0
    return {"tok_s": tokens / dt, "loss": output.training_loss, "wall_s": dt, "mib": memory.mib}


# ------------------------------------------------------------------------------------- levers and the profile
class Trainee:
    """A model, optimizer and schedule trained step by step as sft_stage does, for one set of train.* switches."""

    def __init__(self, tokenizer, recipe: Recipe):
        self.recipe, self.pad_id, self.losses = recipe, tokenizer.pad_token_id, []
        self.model = build_model(tokenizer)
        self.optimizer = engine.make_optimizer(self.model, recipe.train)
        self.scheduler = engine.make_scheduler(self.optimizer, recipe.train, 10**4)
        if recipe.train.compile:
            levers.compile_layers(self.model)
        self.model.train()

    def steps(self, rows, batches: list[list[int]]) -> tuple[int, float]:
        """Train on `batches` (example indices per step; each step's mean target-token loss goes to `losses`) →
        (real tokens, seconds)."""
        tokens, t0 = 0, time.perf_counter()
        for indices in batches:
            with record_function("collate"):
                micros = sft._micro_batches(rows, indices, self.recipe.train.grad_accum, self.recipe, self.pad_id)
            n_targets, step_loss = micros[0]["n_step_target_tokens"], 0.0
            for micro in micros:
                loss_sum, aux = sft._forward_loss(self.model, micro, self.recipe)
                (loss_sum / max(n_targets, 1) + aux).backward()
                step_loss += float(loss_sum.detach())
                tokens += int((micro["example_index"] >= 0).sum())
            self.losses.append(step_loss / max(int(n_targets), 1))
            with record_function("optimizer"):
                engine.clip_and_step(self.model, self.optimizer, self.scheduler, self.recipe.train)
        return tokens, time.perf_counter() - t0


def step_batches(n_rows: int, batch_size: int) -> list[list[int]]:
    order = engine.epoch_order(n_rows, 0, 0)
    return [order[i:i + batch_size] for i in range(0, n_rows - batch_size + 1, batch_size)]


def lever_table(tokenizer, examples, batch_size: int, tmp: Path, levers: dict[str, dict], rounds: int, block: int,
                flops: float, peaks: dict) -> list[dict]:
    """Every row of `levers` trains `block` steps per round on the same batches, in rotating order, then one step
    more under PeakMemory; → rows of the table (median tokens/s, median paired ratio to the defaults, warm-up incl.
    any compile, MFU, peak working memory of a step, and the step losses against the defaults')."""
    rows = build_sft_rows(examples, tokenizer, DataConfig(max_seq_len=MAX_LEN))
    batches = step_batches(len(rows), batch_size)
    trainees = {name: Trainee(tokenizer, make_recipe(tmp / "levers", batch_size, **train))
                for name, train in levers.items()}
    warm = {}
    for name, trainee in trainees.items():  # two warm-up steps: the compile, first allocations
        warm[name] = trainee.steps(rows, batches[:2])[1]
    rates = defaultdict(list)
    names = list(trainees)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            at = 2 + r * block  # every row trains the same batches in the same order: their losses compare
            tokens, seconds = trainees[name].steps(rows, batches[at:at + block])
            rates[name].append(tokens / seconds)
        print(f"levers round {r}: " + ", ".join(f"{n} {rates[n][-1]:.0f}" for n in names), flush=True)
    memory = {}
    for name, trainee in trainees.items():
        with PeakMemory() as memory[name]:
            trainee.steps(rows, batches[2 + rounds * block:3 + rounds * block])
    out = []
    for name in names:
        paired = [a / b for a, b in zip(rates[name], rates["defaults"], strict=True)]
        peak = peaks["fp32"] if levers[name].get("bf16") is False else peaks["bf16"]
        tok_s = statistics.median(rates[name])
        out.append({"lever": name, "tok_s": tok_s, "vs_defaults": statistics.median(paired),
                    "warmup_s": warm[name], "mfu": tok_s * flops / peak, "mib": memory[name].mib,
                    "loss": loss_change(trainees[name].losses, trainees["defaults"].losses)})
    return out


def loss_change(losses: list[float], reference: list[float]) -> str:
    """'bit-identical', or the largest and the last relative difference of the step losses to `reference`'s."""
    if losses == reference:
        return "bit-identical"
    rel = [abs(a - b) / abs(b) for a, b in zip(losses, reference, strict=True)]
    return f"max {max(rel):.1e}, last step {rel[-1]:.1e} (step {len(rel)})"


def measure_peaks() -> dict[str, float]:
    return {"bf16": matmul_peak_flops(), "fp32": matmul_peak_flops(dtype=torch.float32)}


def print_levers(args, tokenizer, examples, batch_size: int, tmp: Path, flops: float) -> None:
    peaks = measure_peaks()
    levers_ = FP32_LEVERS if args.fp32 else LEVERS
    table = lever_table(tokenizer, examples, batch_size, tmp, levers_, args.lever_rounds, args.lever_steps, flops,
                        peaks)
    print(f"\nlevers{' in fp32 (bf16: false)' if args.fp32 else ''}: median tok/s over {args.lever_rounds} "
          f"alternating rounds of {args.lever_steps} steps (MFU vs the bf16 peak {peaks['bf16'] / 1e9:.0f}, fp32 rows "
          f"vs the fp32 peak {peaks['fp32'] / 1e9:.0f} GFLOP/s); memory: peak live malloc bytes of one step above "
          "the model and optimizer; loss: each step's loss against the defaults'")
    print(f"| {'lever (train.*)':28s} | tok/s | vs defaults (paired median) | warm-up 2 steps | MFU | step memory "
          "| loss vs defaults |")
    print("|---|---|---|---|---|---|---|")
    for row in table:
        print(f"| {row['lever']:28s} | {row['tok_s']:5.0f} | {row['vs_defaults']:.2f}x | {row['warmup_s']:.1f} s | "
              f"{row['mfu']:.1%} | {row['mib']:.0f} MiB | {row['loss']} |")


def compare_with_trl(args, tokenizer, examples, batch_size: int, tmp: Path, flops: float) -> None:
    """`args.rounds` rounds of full stages (defaults, WINNERS) and TRL, both sides in `args.precision` (bf16
    autocast, or fp32: the faster of the two on a CPU whose bf16 matmuls are slower than its fp32 ones); the table
    and the JSON line. MFU is against the matmul peak of that precision."""
    bf16 = args.precision == "bf16"
    dtype, same = (torch.bfloat16, {}) if bf16 else (torch.float32, {"bf16": False})
    runs = defaultdict(list)
    for r in range(args.rounds):
        runs["peak"].append(matmul_peak_flops(dtype=dtype))
        runs["defaults"].append(run_mixtune(examples, tokenizer, batch_size, tmp / f"d{r}", **same))
        runs["winners"].append(run_mixtune(examples, tokenizer, batch_size, tmp / f"w{r}", **WINNERS, **same))
        if not args.skip_trl:
            runs["trl"].append(run_trl(examples, tokenizer, tmp / f"t{r}", bf16=bf16))
        print(f"round {r}: {args.precision} peak {runs['peak'][-1] / 1e9:.0f} GFLOP/s; " + "; ".join(
            f"{k} {v[-1]['tok_s']:.0f} tok/s (loss {v[-1]['loss']:.3f}, {v[-1]['wall_s']:.0f} s)"
            for k, v in runs.items() if k != "peak"), flush=True)
    peak = statistics.median(runs["peak"])
    tok = {k: statistics.median(o["tok_s"] for o in v) for k, v in runs.items() if k != "peak"}
    trl = tok.get("trl", float("nan"))
    print(f"\n{args.precision}, median of {args.rounds} rounds; {args.precision} matmul peak {peak / 1e9:.1f} GFLOP/s "
          f"on {THREADS} threads "
          f"(median of the per-round measurements); MFU = tok/s x {flops / 1e6:.1f} MFLOP/token / peak; memory: "
          "peak live malloc bytes of the whole run (model, optimizer, data, steps)")
    print("| | non-pad tokens/s | vs TRL | MFU | peak memory | final loss |")
    print("|---|---|---|---|---|---|")
    for key, label in (("defaults", "mixtune, defaults"), ("winners", "mixtune, " + " ".join(WINNERS)),
                       ("trl", "TRL SFTTrainer (loss: mean over training)")):
        if key in tok:
            print(f"| {label} | {tok[key]:.0f} | {tok[key] / trl:.2f}x | {tok[key] * flops / peak:.1%} | "
                  f"{max(o['mib'] for o in runs[key]):.0f} MiB | {runs[key][-1]['loss']:.4f} |")
    m_tok, skip = tok["winners"], args.skip_trl
    print(json.dumps({"mixtune_tok_s": round(m_tok, 1), "trl_tok_s": None if skip else round(trl, 1),
                      "ratio": None if skip else round(m_tok / trl, 3), "mfu": round(m_tok * flops / peak, 4)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2, help="0: only --profile / --levers")
    parser.add_argument("--levers", action="store_true", help="also the per-lever table (alternating blocks)")
    parser.add_argument("--fp32", action="store_true", help="the lever rows without bf16 autocast")
    parser.add_argument("--lever-rounds", type=int, default=5)
    parser.add_argument("--lever-steps", type=int, default=3, help="steps per lever per round")
    parser.add_argument("--profile", action="store_true", help="also the step profile table")
    parser.add_argument("--skip-trl", action="store_true", help="mixtune only (no ratio in the JSON)")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16",
                        help="of both sides of the TRL comparison and of the profile (fp32: no autocast)")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    levers.keep_freed_memory()  # as engine.setup_torch does for every run (TRL gets it too: one process)
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "default")
    amx = "amx_bf16" in Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else False
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tokenizer, examples, lengths, batch_size, target_fraction = bench_setup(tmp, args.examples)
        mean_len = statistics.mean(lengths)
        flops = flops_per_token(build_model(tokenizer), mean_len, target_fraction)
        print(f"{len(examples)} examples, tokens min/mean/max {min(lengths)}/{mean_len:.0f}/{max(lengths)}; "
              f"mixtune batch {batch_size} examples/step, TRL {ROWS_PER_STEP} rows x {MAX_LEN}/step; "
              f"{flops / 1e6:.1f} MFLOP/token; ONEDNN_MAX_CPU_ISA={isa}, AMX in cpuinfo: {amx}")
        if args.profile:
            from sft_profile import print_profile  # (it imports this module)

            print_profile(tokenizer, examples, batch_size, tmp, measure_peaks(), precision=args.precision)
        if args.levers:
            print_levers(args, tokenizer, examples, batch_size, tmp, flops)
        if args.rounds:
            compare_with_trl(args, tokenizer, examples, batch_size, tmp, flops)


if __name__ == "__main__":
    main()
