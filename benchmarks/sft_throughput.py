"""SFT throughput: mixtune's SFT stage against TRL's SFTTrainer (packing="bfd") in the same process.

Same tiny Llama (hidden 256, 4 layers, vocab 8192), same chat examples of 30-400 tokens, bf16 autocast, 2 threads,
response-only loss on both sides, OMP_WAIT_POLICY=PASSIVE. Each round runs mixtune with today's defaults, mixtune
with the speed levers that measured faster (WINNERS) and TRL, one after the other, so that a shared machine's load
hits all three; medians over rounds are reported: non-pad tokens/s, the ratio to TRL, and MFU against the bf16
matmul peak measured in every round (2048² bf16 matmuls on 2 threads; FLOPs counted as in `flops_per_token`).
The last line is one JSON object with keys mixtune_tok_s, trl_tok_s, ratio, mfu (mixtune with WINNERS).

--levers: each lever alone against the defaults, in short alternating blocks of steps on the same batches (median
tokens/s per lever and the median of per-round paired ratios). --profile: where one step's time goes (torch.profiler
with shapes), for the defaults and for WINNERS, plus the matmul rate at the model's own shapes.

    python benchmarks/sft_throughput.py [--examples 2000] [--rounds 2] [--levers] [--profile] [--skip-trl]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import json
import random
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function
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


def bf16_peak_flops(size: int = 2048, repeats: int = 10, dtype=torch.bfloat16) -> float:
    """The peak of this benchmark: `size`² bf16 matmuls on THREADS threads, the best of `repeats` single timings.
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
    model = build_model(tokenizer)
    t0 = time.perf_counter()
    result = sft_stage(model, tokenizer, make_recipe(out, batch_size, **train), examples, out / "stage")
    metrics = [json.loads(line) for line in (out / "stage" / "metrics.jsonl").read_text().splitlines()]
    loss = [m["loss"] for m in metrics if "loss" in m][-1]
    return {"tok_s": result.tokens_per_s, "loss": loss, "wall_s": time.perf_counter() - t0}


def run_trl(examples, tokenizer, out: Path) -> dict:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(output_dir=str(out), packing=True, packing_strategy="bfd", max_length=MAX_LEN,
                     per_device_train_batch_size=ROWS_PER_STEP, gradient_checkpointing=False, bf16=True,
                     use_cpu=True, assistant_only_loss=True, num_train_epochs=1, learning_rate=1e-3,
                     warmup_steps=0.03, logging_steps=10**6, save_strategy="no", report_to=[],
                     dataloader_num_workers=0, seed=0)
    data = Dataset.from_list([{"messages": ex["messages"]} for ex in examples])
    trainer = SFTTrainer(model=build_model(tokenizer), args=args, train_dataset=data, processing_class=tokenizer)
    tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
    t0 = time.perf_counter()
    output = trainer.train()
    dt = time.perf_counter() - t0
    return {"tok_s": tokens / dt, "loss": output.training_loss, "wall_s": dt}


# ------------------------------------------------------------------------------------- levers and the profile
class Trainee:
    """A model, optimizer and schedule trained step by step as sft_stage does, for one set of train.* switches."""

    def __init__(self, tokenizer, recipe: Recipe):
        self.recipe, self.pad_id = recipe, tokenizer.pad_token_id
        self.model = build_model(tokenizer)
        self.optimizer = engine.make_optimizer(self.model, recipe.train)
        self.scheduler = engine.make_scheduler(self.optimizer, recipe.train, 10**4)
        if recipe.train.compile:
            levers.compile_layers(self.model)
        self.model.train()

    def steps(self, rows, batches: list[list[int]]) -> tuple[int, float]:
        """Train on `batches` (example indices per step) → (real tokens, seconds)."""
        tokens, t0 = 0, time.perf_counter()
        for indices in batches:
            with record_function("collate"):
                micros = sft._micro_batches(rows, indices, self.recipe.train.grad_accum, self.recipe, self.pad_id)
            n_targets = micros[0]["n_step_target_tokens"]
            for micro in micros:
                loss_sum, aux = sft._forward_loss(self.model, micro, self.recipe)
                (loss_sum / max(n_targets, 1) + aux).backward()
                float(loss_sum.detach())
                tokens += int((micro["example_index"] >= 0).sum())
            with record_function("optimizer"):
                engine.clip_and_step(self.model, self.optimizer, self.scheduler, self.recipe.train)
        return tokens, time.perf_counter() - t0


def step_batches(n_rows: int, batch_size: int) -> list[list[int]]:
    order = engine.epoch_order(n_rows, 0, 0)
    return [order[i:i + batch_size] for i in range(0, n_rows - batch_size + 1, batch_size)]


def lever_table(tokenizer, examples, batch_size: int, tmp: Path, rounds: int, block: int, flops: float,
                peaks: dict) -> list[dict]:
    """Every LEVERS row trains `block` steps per round on the same batches, in rotating order; → rows of the
    table (median tokens/s, median paired ratio to the defaults, warm-up incl. any compile, MFU)."""
    rows = build_sft_rows(examples, tokenizer, DataConfig(max_seq_len=MAX_LEN))
    batches = step_batches(len(rows), batch_size)
    trainees = {name: Trainee(tokenizer, make_recipe(tmp / "levers", batch_size, **train))
                for name, train in LEVERS.items()}
    warm = {}
    for name, trainee in trainees.items():  # two warm-up steps: the compile, first allocations
        warm[name] = trainee.steps(rows, batches[:2])[1]
    rates = defaultdict(list)
    names = list(trainees)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            at = (2 + r * block) % max(1, len(batches) - block)
            tokens, seconds = trainees[name].steps(rows, batches[at:at + block])
            rates[name].append(tokens / seconds)
        print(f"levers round {r}: " + ", ".join(f"{n} {rates[n][-1]:.0f}" for n in names), flush=True)
    out = []
    for name in names:
        paired = [a / b for a, b in zip(rates[name], rates["defaults"], strict=True)]
        peak = peaks["fp32"] if LEVERS[name].get("bf16") is False else peaks["bf16"]
        tok_s = statistics.median(rates[name])
        out.append({"lever": name, "tok_s": tok_s, "vs_defaults": statistics.median(paired),
                    "warmup_s": warm[name], "mfu": tok_s * flops / peak})
    return out


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
                  rounds: int = 3) -> None:
    """The step profile of the defaults and of WINNERS, profiled in alternation (`rounds` × `steps` steps each; the
    round with the least total time is shown, the one a shared machine disturbed least), then the matmul rate at
    this model's shapes and what the profile implies for a host with a faster matmul peak."""
    rows = build_sft_rows(examples, tokenizer, DataConfig(max_seq_len=MAX_LEN))
    batches = step_batches(len(rows), batch_size)
    trainees = {name: Trainee(tokenizer, make_recipe(tmp / "profile", batch_size, **train))
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
    print(f"\nprofile: ms per step (mean of {steps} steps, least-loaded of {rounds} alternating rounds; {batch_size} "
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


def measure_peaks() -> dict[str, float]:
    return {"bf16": bf16_peak_flops(), "fp32": bf16_peak_flops(dtype=torch.float32)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2, help="0: only --profile / --levers")
    parser.add_argument("--levers", action="store_true", help="also the per-lever table (alternating blocks)")
    parser.add_argument("--lever-rounds", type=int, default=5)
    parser.add_argument("--lever-steps", type=int, default=3, help="steps per lever per round")
    parser.add_argument("--profile", action="store_true", help="also the step profile table")
    parser.add_argument("--skip-trl", action="store_true", help="mixtune only (no ratio in the JSON)")
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
            print_profile(tokenizer, examples, batch_size, tmp, measure_peaks())
        if args.levers:
            peaks = measure_peaks()
            table = lever_table(tokenizer, examples, batch_size, tmp, args.lever_rounds, args.lever_steps, flops,
                                peaks)
            print(f"\nlevers: median tok/s over {args.lever_rounds} alternating rounds of {args.lever_steps} steps "
                  f"(MFU vs the bf16 peak {peaks['bf16'] / 1e9:.0f}, the fp32 row vs the fp32 peak "
                  f"{peaks['fp32'] / 1e9:.0f} GFLOP/s)")
            print(f"| {'lever (train.*)':28s} | tok/s | vs defaults (paired median) | warm-up 2 steps | MFU |")
            print("|---|---|---|---|---|")
            for row in table:
                print(f"| {row['lever']:28s} | {row['tok_s']:5.0f} | {row['vs_defaults']:.2f}x | "
                      f"{row['warmup_s']:.1f} s | {row['mfu']:.1%} |")
        if args.rounds == 0:  # only the profile / lever tables
            return
        runs = defaultdict(list)
        for r in range(args.rounds):
            runs["peak"].append(bf16_peak_flops())
            runs["defaults"].append(run_mixtune(examples, tokenizer, batch_size, tmp / f"d{r}"))
            runs["winners"].append(run_mixtune(examples, tokenizer, batch_size, tmp / f"w{r}", **WINNERS))
            if not args.skip_trl:
                runs["trl"].append(run_trl(examples, tokenizer, tmp / f"t{r}"))
            print(f"round {r}: bf16 peak {runs['peak'][-1] / 1e9:.0f} GFLOP/s; " + "; ".join(
                f"{k} {v[-1]['tok_s']:.0f} tok/s (loss {v[-1]['loss']:.3f}, {v[-1]['wall_s']:.0f} s)"
                for k, v in runs.items() if k != "peak"), flush=True)
        peak = statistics.median(runs["peak"])
        tok = {k: statistics.median(o["tok_s"] for o in v) for k, v in runs.items() if k != "peak"}
        trl = tok.get("trl", float("nan"))
        print(f"\nmedian of {args.rounds} rounds; bf16 matmul peak {peak / 1e9:.1f} GFLOP/s on {THREADS} threads "
              f"(median of the per-round measurements); MFU = tok/s x {flops / 1e6:.1f} MFLOP/token / peak")
        print("| | non-pad tokens/s | vs TRL | MFU | final loss |")
        print("|---|---|---|---|---|")
        for key, label in (("defaults", "mixtune, defaults"), ("winners", "mixtune, " + " ".join(WINNERS)),
                           ("trl", "TRL SFTTrainer (loss: mean over training)")):
            if key in tok:
                print(f"| {label} | {tok[key]:.0f} | {tok[key] / trl:.2f}x | {tok[key] * flops / peak:.1%} | "
                      f"{runs[key][-1]['loss']:.4f} |")
        m_tok = tok["winners"]
        skip = args.skip_trl
        print(json.dumps({"mixtune_tok_s": round(m_tok, 1), "trl_tok_s": None if skip else round(trl, 1),
                          "ratio": None if skip else round(m_tok / trl, 3), "mfu": round(m_tok * flops / peak, 4)}))


if __name__ == "__main__":
    main()
