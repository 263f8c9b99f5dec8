"""GRPO: mixtune's `grpo` stage against TRL 1.16's GRPOTrainer, in one process, on the same model and workload.

Same for both: the tiny Llama of the SFT benchmark (hidden 256, 4 layers, vocab 8192, random init, fp32, saved once
and loaded by each run), the same chat prompts (rendered by the tokenizer's chat template with the generation
prompt), the same reward function (`ContainsReward`: the share of answer words equal to one target word), N samples
per prompt, `--prompts` prompts per step (one generation and one optimizer step per step: TRL's
per_device_train_batch_size = prompts × N, steps_per_generation 1), max new tokens, temperature 1, top-p 1, AdamW
(β 0.9/0.999, no weight decay), lr, grad-norm clip 1, β = 0.04 with a reference model (k3 in both), GRPO's
per-sequence loss (TRL `loss_type="grpo"`, mixtune `rl.loss_agg: sequence_mean`), group-std scaling, 1 iteration
(π_old = the rollout's own log-probs in mixtune, the detached current ones in TRL), `--threads` torch threads.

Runs alternate (mixtune, TRL, mixtune, TRL, ...), each `--steps` steps from the same start; the first step of each
run is warm-up and left out. Per step: wall time; generation time (mixtune: its rollout clock; TRL: its own
profiling of `transformers.generate`, read by patching `ProfilingContext._log_metrics`); generated tokens/s =
generated tokens / generation time; update tokens/s = (prompt + answer tokens of the step) / (step − generation
time), which for both holds the reward, the reference forward and the optimizer step. Medians over steps.

    python benchmarks/grpo_vs_trl.py [--steps 6] [--rounds 2] [--prompts 8] [--n 4] [--max-new-tokens 48]

The last line is one JSON object with mixtune_step_s, trl_step_s, ratio (= trl_step_s / mixtune_step_s) and the
per-phase numbers. The machine is shared: absolute numbers move with its load, the alternation spreads it over both.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sft_throughput import MAX_LEN, bench_setup, build_model  # the shared benchmark model and words

from mixtune.config import Recipe
from mixtune.data.templates import render_prompt
from mixtune.train.rewards import ContainsReward
from mixtune.train.run import train

LR, BETA, PROMPT_WORDS = 1e-5, 0.04, 16


def make_prompts(tmp: Path, n: int) -> tuple[Path, list[dict], str, object]:
    """(base checkpoint folder, prompt examples, the rewarded word, tokenizer)."""
    tokenizer, examples, _, _, _ = bench_setup(tmp, max(n, 16))
    for ex in examples:
        ex["messages"] = [{"role": "user", "content": " ".join(ex["messages"][0]["content"].split()[:PROMPT_WORDS])},
                          ex["messages"][1]]
    target = Counter(w for ex in examples for w in ex["messages"][1]["content"].split()).most_common(1)[0][0]
    base = tmp / "base"
    model = build_model(tokenizer)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(str(base))
    tokenizer.save_pretrained(str(base))
    return base, examples[:n], target, tokenizer


def run_mixtune(tmp: Path, base: Path, prompts: Path, target: str, args, tag: str) -> list[dict]:
    tree = {"name": "grpo-bench", "out_dir": str(tmp / f"mixtune-{tag}"), "model": {"path": str(base)},
            "data": {"sources": [{"name": "p", "path": str(prompts)}], "max_seq_len": MAX_LEN},  # the model's context
            "train": {"lr": LR, "betas": [0.9, 0.999], "weight_decay": 0.0, "batch_size": args.prompts,
                      "max_steps": args.steps, "warmup_ratio": 0.0, "schedule": "constant", "bf16": False,
                      "threads": args.threads, "log_every": 1},
            "rl": {"n_samples": args.n, "max_new_tokens": args.max_new_tokens, "temperature": 1.0, "top_p": 1.0,
                   "rollout_batch_size": args.prompts * args.n, "kl_coef": BETA, "kl_estimator": "k3",
                   "loss_agg": "sequence_mean", "scale_rewards": "group",
                   "rewards": [{"kind": "contains", "target": target}]},
            "strategy": {"name": "stages", "stages": [{"name": "grpo", "kind": "grpo", "sources": ["p"]}]}}
    train(Recipe.model_validate(tree), log=lambda _: None)
    rows = [json.loads(x) for x in (tmp / f"mixtune-{tag}" / "stages" / "0-grpo" / "metrics.jsonl").read_text()
            .splitlines()]
    out = []
    for r in (r for r in rows if "step_s" in r):
        generated = r["response_length"] * args.prompts * args.n
        out.append({"step_s": r["step_s"], "gen_s": generated / r["rollout_tokens_per_s"], "generated": generated,
                    "answer_len": r["response_length"], "reward": r["reward_mean"]})
    return out


def run_trl(tmp: Path, base: Path, examples: list[dict], target: str, args, tag: str) -> list[dict]:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    from trl.extras import profiling

    generate_s: dict[int, float] = defaultdict(float)
    original = profiling.ProfilingContext._log_metrics

    def record(self, duration: float) -> None:  # TRL's own timing of its generate call, per global step
        if self.name.endswith("transformers.generate"):
            generate_s[self.step] += duration
        original(self, duration)

    steps: list[dict] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            steps.append({"step_s": time.perf_counter() - self.t0, "global_step": state.global_step - 1})

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs and steps:
                steps[-1].update(answer_len=logs["completions/mean_length"], reward=logs.get("reward", 0.0))

    scorer = ContainsReward(target)

    def reward(prompts, completions, **kw):
        return [r.value for r in scorer([{}] * len(completions), [c[0]["content"] for c in completions])]

    config = GRPOConfig(
        output_dir=str(tmp / f"trl-{tag}"), per_device_train_batch_size=args.prompts * args.n, num_generations=args.n,
        steps_per_generation=1, max_completion_length=args.max_new_tokens, temperature=1.0, top_p=1.0, top_k=0,
        learning_rate=LR, adam_beta1=0.9, adam_beta2=0.999, weight_decay=0.0, max_grad_norm=1.0,
        lr_scheduler_type="constant", warmup_steps=0, beta=BETA, loss_type="grpo", scale_rewards="group",
        num_iterations=1, max_steps=args.steps, logging_steps=1, save_strategy="no", report_to="none",
        use_cpu=True, bf16=False, seed=0, model_init_kwargs={"dtype": torch.float32}, disable_tqdm=True)
    dataset = Dataset.from_list([{"prompt": ex["messages"][:1]} for ex in examples])
    profiling.ProfilingContext._log_metrics = record
    try:
        trainer = GRPOTrainer(model=str(base), reward_funcs=reward, args=config, train_dataset=dataset,
                              callbacks=[Clock()])
        trainer.train()
    finally:
        profiling.ProfilingContext._log_metrics = original
    for s in steps:
        s["gen_s"] = generate_s.get(s["global_step"], 0.0)
        s["generated"] = s.get("answer_len", 0.0) * args.prompts * args.n
    return steps


def phases(steps: list[dict], prompt_tokens: float, args) -> dict[str, float]:
    """Medians over the steps after the first of each run."""
    tokens = [prompt_tokens * args.n * args.prompts + s["generated"] for s in steps]
    return {"step_s": statistics.median(s["step_s"] for s in steps),
            "gen_tok_s": statistics.median(s["generated"] / max(s["gen_s"], 1e-9) for s in steps),
            "update_tok_s": statistics.median(t / max(s["step_s"] - s["gen_s"], 1e-9) for s, t in zip(steps, tokens)),
            "gen_share": statistics.median(s["gen_s"] / s["step_s"] for s in steps),
            "answer_len": statistics.mean(s["answer_len"] for s in steps)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        base, examples, target, tokenizer = make_prompts(tmp, args.prompts * 4)
        prompts = tmp / "prompts.jsonl"
        prompts.write_text("".join(json.dumps({"id": ex["id"], "messages": ex["messages"]}) + "\n" for ex in examples))
        prompt_tokens = statistics.mean(len(tokenizer(render_prompt(ex["messages"][:1], tokenizer, "tokenizer"),
                                                      add_special_tokens=False)["input_ids"]) for ex in examples)
        runs: dict[str, list[dict]] = {"mixtune": [], "trl": []}
        for r in range(args.rounds):
            t0 = time.perf_counter()
            runs["mixtune"] += run_mixtune(tmp, base, prompts, target, args, str(r))[1:]
            t1 = time.perf_counter()
            runs["trl"] += run_trl(tmp, base, examples, target, args, str(r))[1:]
            print(f"round {r}: mixtune {t1 - t0:.1f} s, trl {time.perf_counter() - t1:.1f} s (whole runs)", flush=True)
    result = {side: phases(steps, prompt_tokens, args) for side, steps in runs.items()}
    for side, p in result.items():
        print(f"{side:8s} step {p['step_s']:.3f} s  generated {p['gen_tok_s']:.0f} tok/s  update "
              f"{p['update_tok_s']:.0f} tok/s  generation {100 * p['gen_share']:.0f}% of the step  answer "
              f"{p['answer_len']:.1f} tokens")
    load = os.getloadavg()[0]
    print(json.dumps({"mixtune_step_s": round(result["mixtune"]["step_s"], 4),
                      "trl_step_s": round(result["trl"]["step_s"], 4),
                      "ratio": round(result["trl"]["step_s"] / result["mixtune"]["step_s"], 3),
                      **{f"{side}_{k}": round(v, 3) for side, p in result.items() for k, v in p.items()},
                      "prompts": args.prompts, "n": args.n, "max_new_tokens": args.max_new_tokens,
                      "threads": args.threads, "load_avg_1m": round(load, 2), "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
