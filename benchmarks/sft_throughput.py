"""SFT throughput: mixtune's SFT stage against TRL's SFTTrainer (packing="bfd") in the same process.

Same tiny Llama (hidden 256, 4 layers, vocab 8192), same chat examples of 30-400 tokens, bf16 autocast, 2 threads,
response-only loss on both sides, OMP_WAIT_POLICY=PASSIVE. Runs alternate (mixtune, TRL, mixtune, TRL, ...) and the
median of each is reported: non-pad tokens/s, their ratio, mixtune's MFU against a bf16 matmul peak measured here,
and both final losses. The last line is one JSON object with keys mixtune_tok_s, trl_tok_s, ratio, mfu.

    python benchmarks/sft_throughput.py [--examples 2000] [--rounds 2]
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
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from mixtune.config import DataConfig, Recipe
from mixtune.data.sft_dataset import build_sft_rows
from mixtune.data.tokenizer_train import train_tokenizer
from mixtune.train.sft import sft_stage

THREADS = 2
VOCAB = 8192
MAX_LEN = 512
ROWS_PER_STEP = 4  # TRL: 4 packed rows of <= 512 tokens per step; mixtune: the same tokens per step on average


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


def bf16_peak_flops(size: int = 2048, repeats: int = 10) -> float:
    a = torch.randn(size, size, dtype=torch.bfloat16)
    b = torch.randn(size, size, dtype=torch.bfloat16)
    torch.mm(a, b)
    t0 = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    return 2 * size**3 * repeats / (time.perf_counter() - t0)


def flops_per_token(model, mean_len: float, target_fraction: float) -> float:
    """Training FLOPs per token the loss needs: 6·N for the blocks, causal attention 6·L·d·T, and the output layer
    (6·V·d) only for the `target_fraction` of positions that carry a target (the rest have no logits to compute)."""
    cfg = model.config
    n_blocks = sum(p.numel() for name, p in model.named_parameters() if "layers." in name)
    head = 6 * cfg.vocab_size * cfg.hidden_size * target_fraction
    return 6 * n_blocks + head + 6 * cfg.num_hidden_layers * cfg.hidden_size * mean_len


def run_mixtune(examples, tokenizer, batch_size: int, out: Path) -> dict:
    recipe = Recipe.model_validate({
        "name": "bench", "out_dir": str(out),
        "data": {"max_seq_len": MAX_LEN, "packing": True, "template": "tokenizer"},
        "train": {"lr": 1e-3, "batch_size": batch_size, "epochs": 1, "bf16": True, "threads": THREADS,
                  "warmup_ratio": 0.03, "log_every": 10**6, "max_grad_norm": 1.0},
    })
    model = build_model(tokenizer)
    t0 = time.perf_counter()
    result = sft_stage(model, tokenizer, recipe, examples, out / "stage")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tokenizer, examples, lengths, batch_size, target_fraction = bench_setup(tmp, args.examples)
        mean_len = statistics.mean(lengths)
        print(f"{len(examples)} examples, tokens min/mean/max {min(lengths)}/{mean_len:.0f}/{max(lengths)}; "
              f"mixtune batch {batch_size} examples/step, TRL {ROWS_PER_STEP} rows x {MAX_LEN}/step")
        ours, theirs = [], []
        for r in range(args.rounds):
            ours.append(run_mixtune(examples, tokenizer, batch_size, tmp / f"m{r}"))
            print(f"round {r}: mixtune {ours[-1]['tok_s']:.0f} tok/s (loss {ours[-1]['loss']:.3f})")
            theirs.append(run_trl(examples, tokenizer, tmp / f"t{r}"))
            print(f"round {r}: TRL     {theirs[-1]['tok_s']:.0f} tok/s (loss {theirs[-1]['loss']:.3f})")
        peak = bf16_peak_flops()
        m_tok = statistics.median(o["tok_s"] for o in ours)
        t_tok = statistics.median(o["tok_s"] for o in theirs)
        mfu = m_tok * flops_per_token(build_model(tokenizer), mean_len, target_fraction) / peak
        print(f"bf16 matmul peak {peak / 1e9:.1f} GFLOP/s on {THREADS} threads")
        print(f"mixtune {m_tok:.0f} tok/s, TRL {t_tok:.0f} tok/s, ratio {m_tok / t_tok:.2f}, mixtune MFU {mfu:.1%}")
        print(f"final loss: mixtune {ours[-1]['loss']:.4f}, TRL (mean over training) {theirs[-1]['loss']:.4f}")
        print(json.dumps({"mixtune_tok_s": round(m_tok, 1), "trl_tok_s": round(t_tok, 1),
                          "ratio": round(m_tok / t_tok, 3), "mfu": round(mfu, 4)}))


if __name__ == "__main__":
    main()
