"""DPO: mixtune's `dpo` stage against TRL 1.16's DPOTrainer, in one process, on the same models, pairs and tokens.

Models: the tiny Llama of the SFT benchmark (hidden 256, 4 layers, vocab 8192); the reference is a freshly built one,
the policy the same after a few SFT steps (policy ≠ reference). Pairs: the SFT benchmark's chats (30-400 tokens),
chosen = the chat's answer, rejected = another chat's answer. TRL gets the pairs pre-templated in its standard format
(prompt = our chat template's generation prompt, answers ending in our end-of-turn token, which TRL's tokenizer copy
also uses as eos so it appends nothing), and the benchmark checks that both sides train on identical token ids.

1. Agreement (fp32, β = 0.1, sigmoid loss): on a fixed batch, the loss and the mean chosen / rejected implicit rewards
   of mixtune (packed pairs, reference log-probs from the cache) and of TRL (`compute_loss` on its padded batch with
   its reference forward) agree to 1e-4.
2. Throughput (bf16 autocast, 2 threads, `--epochs` passes, default 2 — TRL's default is 3 —, the same pairs per
   step): mixtune's whole stage wall time (its one reference pass included) against `DPOTrainer.train()` (a reference
   forward every step); runs alternate (mixtune, TRL, mixtune, TRL) and medians are
   reported. Tokens counted the same for both: every non-pad token of prompt + chosen and prompt + rejected. Both
   train from the SFT'd policy with that same model as the reference (mixtune's `reference: start`; TRL gets a copy
   as `ref_model`), so their mean training losses are comparable too (the data order differs: each side shuffles
   with its own sampler).
The last line is one JSON object with loss_mixtune, loss_trl, mixtune_tok_s, trl_tok_s, ratio (and more).

    python benchmarks/dpo_vs_trl.py [--pairs 256] [--batch 8] [--epochs 2] [--rounds 2]

Where a ratio can come from: TRL pads the 2·B sequences of a step to the longest (about 1.8× the real tokens for these
30-400-token chats) and runs the reference forward every step, mixtune packs them and computes the reference once per
stage. So in one epoch both pay one reference forward per pair and the ceiling is the padding factor; every further
epoch saves mixtune a reference forward.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import copy
import json
import logging
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sft_throughput import MAX_LEN, THREADS, bench_setup, build_model  # the shared benchmark data

from mixtune.config import Recipe
from mixtune.data.pair_dataset import build_pair_rows, pair_micro_batches, tokenize_completion
from mixtune.data.templates import render_prompt
from mixtune.train import dpo
from mixtune.train.pair_forward import dpo_micro_loss, reference_logps
from mixtune.train.sft import sft_stage
from mixtune.train.stages import StageContext

BETA = 0.1


def make_pairs(examples: list[dict], seed: int = 0) -> list[dict]:
    """chosen = each chat's own answer, rejected = the answer of another chat."""
    rng = random.Random(seed)
    others = list(range(len(examples)))
    rng.shuffle(others)
    pairs = []
    for i, ex in enumerate(examples):
        j = others[i] if others[i] != i else (i + 1) % len(examples)
        pairs.append({"id": f"pair/{i}", "source": "bench", "messages": ex["messages"][:1],
                      "chosen": ex["messages"][1]["content"], "rejected": examples[j]["messages"][1]["content"]})
    return pairs


def recipe(out: Path, batch: int, bf16: bool, epochs: float = 1) -> Recipe:
    return Recipe.model_validate({
        "name": "dpo-bench", "out_dir": str(out),
        "data": {"max_seq_len": MAX_LEN, "packing": True, "template": "tokenizer"},
        "train": {"lr": 5e-5, "batch_size": batch, "epochs": epochs, "bf16": bf16, "threads": THREADS,
                  "warmup_ratio": 0.0, "log_every": 10**6, "max_grad_norm": 1.0, "schedule": "constant"},
        "preference": {"beta": BETA, "loss": "sigmoid"}})


def trl_side(tokenizer, pairs: list[dict]):
    """(tokenizer copy whose eos is our end-of-turn token, TRL standard-format rows pre-templated with our
    template): TRL then sees exactly mixtune's prompt and answer tokens."""
    _, answer = tokenize_completion(pairs[0]["messages"], pairs[0]["chosen"], tokenizer, "tokenizer")
    end = tokenizer.convert_ids_to_tokens(answer[-1])
    trl_tokenizer = copy.deepcopy(tokenizer)
    trl_tokenizer.eos_token = end
    rows = [{"prompt": render_prompt(p["messages"], tokenizer, "tokenizer"), "chosen": p["chosen"] + end,
             "rejected": p["rejected"] + end} for p in pairs]
    return trl_tokenizer, rows


def trl_trainer(policy, reference, tokenizer, pairs, batch: int, out: Path, bf16: bool, epochs: float = 1):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    trl_tokenizer, rows = trl_side(tokenizer, pairs)
    args = DPOConfig(output_dir=str(out), beta=BETA, loss_type=["sigmoid"], max_length=None,
                     per_device_train_batch_size=batch, num_train_epochs=epochs, learning_rate=5e-5, warmup_steps=0,
                     lr_scheduler_type="constant", max_grad_norm=1.0, bf16=bf16, use_cpu=True, logging_steps=10**6,
                     save_strategy="no", report_to=[], dataloader_num_workers=0, seed=0, gradient_checkpointing=False)
    return DPOTrainer(model=copy.deepcopy(policy), ref_model=copy.deepcopy(reference), args=args,
                      train_dataset=Dataset.from_list(rows), processing_class=trl_tokenizer)


def same_tokens(trainer, pairs_set) -> int:
    """Pairs whose prompt / chosen / rejected token ids differ between TRL's dataset and mixtune's rows."""
    data = trainer.train_dataset
    return sum(data[i]["prompt_ids"] != r["prompt_ids"] or data[i]["chosen_ids"] != r["chosen_ids"]
               or data[i]["rejected_ids"] != r["rejected_ids"] for i, r in enumerate(pairs_set.rows))


def agreement(policy, reference, tokenizer, pairs, batch: int, tmp: Path) -> dict:
    """Loss and mean rewards of one fixed batch, both ways (fp32)."""
    cfg = recipe(tmp / "agree", batch, bf16=False)
    chosen_pairs = pairs[:batch]
    pset = build_pair_rows(chosen_pairs, tokenizer, cfg.data)
    ref = reference_logps(reference, pset, cfg, pairs_per_batch=batch)
    (micro,) = pair_micro_batches(pset, list(range(batch)), 1, MAX_LEN, tokenizer.pad_token_id)
    with torch.no_grad():
        loss, stats = dpo_micro_loss(policy, micro, ref, cfg)
    trainer = trl_trainer(policy, reference, tokenizer, chosen_pairs, batch, tmp / "trl-agree", bf16=False)
    mismatched = same_tokens(trainer, pset)
    inputs = trainer.data_collator([trainer.train_dataset[i] for i in range(batch)])
    with torch.no_grad():
        trl_loss = float(trainer.compute_loss(trainer.model, inputs))
    metrics = trainer._metrics["train" if trainer.model.training else "eval"]
    return {"loss_mixtune": float(loss), "loss_trl": trl_loss,
            "chosen_mixtune": stats["chosen"] / stats["weight"], "chosen_trl": metrics["rewards/chosen"][-1],
            "rejected_mixtune": stats["rejected"] / stats["weight"], "rejected_trl": metrics["rewards/rejected"][-1],
            "token_mismatches": mismatched}


def run_mixtune(policy, tokenizer, pairs, batch: int, epochs: float, out: Path, cache: dict) -> dict:
    cfg = recipe(out, batch, bf16=True, epochs=epochs)
    ctx = StageContext(recipe=cfg, name="dpo", kind="dpo", model=copy.deepcopy(policy), tokenizer=tokenizer,
                       examples=pairs, folder=out / "stage", run_dir=out, token_cache=cache, log=lambda *_: None)
    t0 = time.perf_counter()
    result = dpo.run_stage(ctx)  # tokens come from the cache: the wall time is the reference pass + the loop
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "loop_tok_s": result.tokens_per_s, "loss": result.train_loss}


def run_trl(policy, reference, tokenizer, pairs, batch: int, epochs: float, out: Path) -> dict:
    trainer = trl_trainer(policy, reference, tokenizer, pairs, batch, out, bf16=True, epochs=epochs)
    t0 = time.perf_counter()
    output = trainer.train()
    return {"wall_s": time.perf_counter() - t0, "loss": output.training_loss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8, help="pairs per optimizer step (both sides)")
    parser.add_argument("--epochs", type=float, default=2.0, help="passes over the pairs (both sides)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    logging.getLogger("trl").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tokenizer, examples, _, _, _ = bench_setup(tmp, args.pairs)
        pairs = make_pairs(examples)
        reference = build_model(tokenizer, seed=0)
        policy = copy.deepcopy(reference)
        sft = Recipe.model_validate({"name": "sft", "data": {"max_seq_len": MAX_LEN},
                                     "train": {"lr": 3e-3, "batch_size": 16, "max_steps": 5, "bf16": False,
                                               "threads": THREADS, "log_every": 10**6}})
        sft_stage(policy, tokenizer, sft, examples[:80], tmp / "sft", log=lambda *_: None)
        cache: dict = {}
        pset = build_pair_rows(pairs, tokenizer, recipe(tmp, args.batch, True).data, cache=cache)
        tokens = sum(2 * len(r["prompt_ids"]) + len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in pset.rows)
        print(f"{len(pset)} pairs, {tokens} tokens per epoch (prompt twice + both answers), {args.batch} pairs/step, "
              f"{args.epochs:g} epochs, {THREADS} threads")
        n_pairs, tokens = len(pset) * args.epochs, tokens * args.epochs  # trained over the whole run
        agree = agreement(policy, reference, tokenizer, pairs, args.batch, tmp)
        diffs = {k: abs(agree[f"{k}_mixtune"] - agree[f"{k}_trl"]) for k in ("loss", "chosen", "rejected")}
        print(f"fixed batch (fp32): loss mixtune {agree['loss_mixtune']:.6f} TRL {agree['loss_trl']:.6f}; chosen "
              f"reward {agree['chosen_mixtune']:.6f} / {agree['chosen_trl']:.6f}; rejected {agree['rejected_mixtune']:.6f}"
              f" / {agree['rejected_trl']:.6f}; max |diff| {max(diffs.values()):.2e}; token mismatches "
              f"{agree['token_mismatches']}")
        ours, theirs = [], []
        for r in range(args.rounds):
            ours.append(run_mixtune(policy, tokenizer, pairs, args.batch, args.epochs, tmp / f"m{r}", cache))
            print(f"round {r}: mixtune {tokens / ours[-1]['wall_s']:.0f} tok/s end to end "
                  f"({ours[-1]['loop_tok_s']:.0f} in the loop), mean training loss {ours[-1]['loss']:.4f}")
            theirs.append(run_trl(policy, policy, tokenizer, pairs, args.batch, args.epochs, tmp / f"t{r}"))
            print(f"round {r}: TRL     {tokens / theirs[-1]['wall_s']:.0f} tok/s, mean training loss "
                  f"{theirs[-1]['loss']:.4f}")
        m_wall = statistics.median(o["wall_s"] for o in ours)
        t_wall = statistics.median(o["wall_s"] for o in theirs)
        m_tok, t_tok = tokens / m_wall, tokens / t_wall
        print(f"mixtune {m_tok:.0f} tok/s ({n_pairs / m_wall:.2f} pairs/s), TRL {t_tok:.0f} tok/s "
              f"({n_pairs / t_wall:.2f} pairs/s), ratio {m_tok / t_tok:.2f}")
        print(json.dumps({"loss_mixtune": round(agree["loss_mixtune"], 7), "loss_trl": round(agree["loss_trl"], 7),
                          "max_abs_diff": float(f"{max(diffs.values()):.3g}"),
                          "token_mismatches": agree["token_mismatches"],
                          "mixtune_tok_s": round(m_tok, 1), "trl_tok_s": round(t_tok, 1),
                          "mixtune_loop_tok_s": round(statistics.median(o["loop_tok_s"] for o in ours), 1),
                          "mixtune_pairs_s": round(n_pairs / m_wall, 3), "trl_pairs_s": round(n_pairs / t_wall, 3),
                          "epochs": args.epochs, "ratio": round(m_tok / t_tok, 3)}))


if __name__ == "__main__":
    main()
