"""`mixtune data synth SEEDS --out OUTPUT`: self-instruct synthesis of SFT records with a model backend.

The loop of Alpaca's `generate_instruction.py` (Wang et al. 2022 self-instruct, as Alpaca ran it), with the pieces
in `mixtune.data.synth`: each round sends `--requests-per-round` prompts, each holding `--num-prompt-instructions`
seed tasks sampled with a seeded RNG, asks the model to continue the list, and keeps the new instructions that pass the
heuristics and stay below ROUGE-L 0.7 against the pool (seeds + kept ones). Then the model answers each kept
instruction as a chat turn. Records are messages-format SFT records with provenance `synth: {model, seed_ids,
round}`; every rejected candidate goes to `OUTPUT.removed.jsonl` with its reason.

Backends: any OpenAI-compatible endpoint (`--endpoint URL --model NAME`, through `OpenAIBackend`) or a local
checkpoint (`--model-path DIR`, through `HFBackend`). This verb lives on the evaluate floor because the generation
backends do; it runs in this process (generation is bound by the model, which batches or serves concurrently), not on
datatrove's executors.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

from mixtune.data.corpus_io import CorpusError, side_paths
from mixtune.data.synth import (
    ROUGE_MAX,
    encode_prompt,
    heuristic_reason,
    load_seed_tasks,
    most_similar,
    parse_generation,
    rouge_tokens,
    sft_record,
    user_prompt,
)
from mixtune.runs import atomic_write_json, atomic_write_text

STOP = ("\n20", "20.")
"""Alpaca's stop sequences: the prompt asks for 20 tasks."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mixtune data synth", description=__doc__.splitlines()[0])
    p.add_argument("input", help="seed tasks JSONL (e.g. ../shared/data/self_instruct/seed_tasks.jsonl)")
    p.add_argument("--out", required=True, help="output JSONL of SFT records (messages format)")
    p.add_argument("--prompt", default=None, help="instruction-generation prompt [default prompt.txt beside INPUT]")
    p.add_argument("--endpoint", default=None, help="OpenAI-compatible base URL (ends in /v1)")
    p.add_argument("--model", default=None, help="model name at the endpoint")
    p.add_argument("--model-path", default=None, help="local checkpoint folder (HF backend)")
    p.add_argument("--template", default="tokenizer", help="chat template of a local model [default tokenizer]")
    p.add_argument("--api", default="chat", choices=("chat", "completion"),
                   help="send the instruction-generation prompt as a chat user turn (default; most endpoints) or as a "
                   "raw completion prompt (/v1/completions, as Alpaca did with text-davinci-003)")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="env var with the endpoint's key")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight to the endpoint [default 8]")
    p.add_argument("--num", type=int, default=100, help="instructions to keep [default 100]")
    p.add_argument("--requests-per-round", type=int, default=4, help="generation prompts per round [default 4]")
    p.add_argument("--num-prompt-instructions", type=int, default=3, help="seed tasks per prompt [default 3]")
    p.add_argument("--max-rounds", type=int, default=50, help="stop after this many rounds [default 50]")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature [default 1.0]")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling [default 1.0]")
    p.add_argument("--max-new-tokens", type=int, default=1024, help="tokens per instruction list [default 1024]")
    p.add_argument("--response-tokens", type=int, default=512, help="tokens per response [default 512]")
    p.add_argument("--seed", type=int, default=0, help="sampling and seed-task RNG seed [default 0]")
    return p


def make_backend(args: argparse.Namespace) -> tuple[Any, str]:
    """(backend, model name for provenance)."""
    if bool(args.endpoint) == bool(args.model_path):
        raise CorpusError("give either --endpoint URL --model NAME or --model-path DIR")
    if args.endpoint:
        from mixtune.evaluate.generate import OpenAIBackend

        if not args.model:
            raise CorpusError("--endpoint needs --model NAME")
        return OpenAIBackend(args.endpoint, args.model, api_key_env=args.api_key_env,
                             concurrency=args.concurrency), args.model
    from mixtune.evaluate.generate import HFBackend
    from mixtune.model.load import ModelLoadError, load_checkpoint, load_tokenizer

    try:
        tokenizer, model = load_tokenizer(args.model_path), load_checkpoint(args.model_path)
    except (ModelLoadError, OSError) as e:
        raise CorpusError(f"--model-path {args.model_path}: {e}") from None
    return HFBackend(model, tokenizer, template=args.template), str(args.model_path)


def generate_instructions(backend: Any, args: argparse.Namespace, seeds: list[dict], header: str,
                          rejected: list[dict]) -> tuple[list[dict], dict[str, int]]:
    """(kept candidates with their seed ids and round, {rounds, requests, candidates}); rejections go to
    `rejected`."""
    rng = random.Random(f"synth/{args.seed}")
    pool_texts = [s["instruction"] for s in seeds]
    pool_tokens = [rouge_tokens(t) for t in pool_texts]
    kept: list[dict] = []
    rounds = requests = n_candidates = 0
    while len(kept) < args.num and rounds < args.max_rounds:
        rounds += 1
        batches = [rng.sample(seeds, min(args.num_prompt_instructions, len(seeds)))
                   for _ in range(args.requests_per_round)]
        prompts = [encode_prompt(header, b) for b in batches]
        sampling = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": args.top_p,
                    "stop": list(STOP), "seed": args.seed + rounds}
        if args.api == "completion":  # Alpaca's way (text-davinci-003): the prompt continued as raw text
            texts = backend.complete(prompts, **sampling)
        else:  # chat-only endpoints: the same prompt as the user turn
            texts = backend.chat([[{"role": "user", "content": p}] for p in prompts], **sampling)
        requests += len(batches)
        for batch, text in zip(batches, texts):
            seed_ids = [t["id"] for t in batch]
            candidates = parse_generation(text, len(batch))
            if not candidates:
                rejected.append({"reason": "unparsed", "round": rounds, "seed_ids": seed_ids, "text": text[:500]})
            n_candidates += len(candidates)
            for cand in candidates:
                row = {"instruction": cand["instruction"], "input": cand["input"], "round": rounds,
                       "seed_ids": seed_ids}
                reason = heuristic_reason(cand["instruction"]) if cand["instruction"] else "empty"
                if reason is None:
                    score, similar = most_similar(cand["instruction"], pool_tokens, pool_texts)
                    if score >= ROUGE_MAX:
                        reason, row = "rouge_l", {**row, "rouge_l": round(score, 4), "similar_to": similar}
                if reason is None and len(kept) >= args.num:
                    reason = "enough"
                if reason:
                    rejected.append({"reason": reason, **row})
                    continue
                kept.append(row)
                pool_texts.append(cand["instruction"])
                pool_tokens.append(rouge_tokens(cand["instruction"]))
    return kept, {"rounds": rounds, "requests": requests, "candidates": n_candidates}


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    try:
        seeds = load_seed_tasks(args.input)
        prompt_path = Path(args.prompt) if args.prompt else Path(args.input).parent / "prompt.txt"
        if not prompt_path.is_file():
            raise CorpusError(f"{prompt_path}: prompt file not found (give --prompt)")
        if min(args.num, args.requests_per_round, args.num_prompt_instructions, args.max_rounds) < 1:
            raise CorpusError("--num, --requests-per-round, --num-prompt-instructions, --max-rounds must be >= 1")
        backend, model_name = make_backend(args)
    except CorpusError as e:
        print(f"mixtune data synth: {e}", file=sys.stderr)
        return 2
    rejected: list[dict] = []
    kept, counts = generate_instructions(backend, args, seeds, prompt_path.read_text(), rejected)
    responses = backend.chat([[{"role": "user", "content": user_prompt(k["instruction"], k["input"])}]
                              for k in kept], max_new_tokens=args.response_tokens, temperature=0.0,
                             seed=args.seed) if kept else []
    records = []
    for cand, response in zip(kept, responses):
        if not response.strip():
            rejected.append({"reason": "empty_response", **cand})
            continue
        records.append(sft_record(len(records), cand["instruction"], cand["input"], response, model_name,
                                  cand["seed_ids"], cand["round"]))
    out = Path(args.out)
    summary_path, removed_path = side_paths(out)
    atomic_write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    atomic_write_text(removed_path, "".join(json.dumps({"id": f"candidate/{i}", "action": "dropped", **r},
                                                       ensure_ascii=False) + "\n" for i, r in enumerate(rejected)))
    by_reason: dict[str, int] = {}
    for r in rejected:
        by_reason[r["reason"]] = by_reason.get(r["reason"], 0) + 1
    summary = {"verb": "synth", "input_file": str(args.input), "input": len(seeds), "model": model_name,
               **counts, "kept": len(records), "rejected": len(rejected), "by_reason": dict(sorted(by_reason.items())),
               "output": str(out), "removed_file": str(removed_path),
               "seconds": round(time.perf_counter() - started, 3)}
    atomic_write_json(summary_path, summary)
    print(json.dumps(summary))
    return 0
