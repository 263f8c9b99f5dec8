"""`mixtune train` and `mixtune pretrain`: argument parsing without torch (so `--help` is instant); the training
modules, which import torch, are imported only once the arguments are parsed.

Exit status: 0 when the run finished and every benchmark scored; 1 when the run finished but a benchmark has no
score (its primary metric is NaN: no valid sample, e.g. every judge request failed), so NaN never passes as a
result; 2 for a user error (printed as one line by `mixtune.cli`).
"""

from __future__ import annotations

import sys

from mixtune.cliutil import recipe_parser
from mixtune.config import load_recipe

TRAIN_SECTIONS = ["model", "data", "train", "adapter", "strategy", "preference", "eval"]
PRETRAIN_SECTIONS = ["model", "train", "tokenizer", "world"]


def failed_benchmarks(summary: dict) -> list[str]:
    """`stage/benchmark` of every benchmark of a run summary whose status is `failed` (no valid score)."""
    return [f"{stage}/{bench}" for stage, scores in summary.get("scores", {}).items()
            for bench, record in (scores or {}).items() if record.get("status") == "failed"]


def train_main(argv: list[str]) -> int:
    parser = recipe_parser("train", "a run of one or more stages (SFT, and any other stage kind)",
                           sections=TRAIN_SECTIONS)
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run")
    args = parser.parse_args(argv)
    recipe = load_recipe(args.config, args.overrides)
    from mixtune.train.engine import dist_close
    from mixtune.train.run import train

    try:
        summary = train(recipe, resume=args.resume)
    finally:
        dist_close()  # torchrun / accelerate launch: leave the process group cleanly
    failed = failed_benchmarks(summary)
    if failed:
        print(f"mixtune train: the model is saved, but {len(failed)} benchmark(s) have no valid score: "
              f"{', '.join(failed)} (see their summary.json)", file=sys.stderr)
        return 1
    return 0


def pretrain_main(argv: list[str]) -> int:
    parser = recipe_parser("pretrain", "pre-train or continue pre-training a causal LM", sections=PRETRAIN_SECTIONS)
    parser.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    args = parser.parse_args(argv)
    recipe = load_recipe(args.config, args.overrides)
    from mixtune.train.engine import dist_close
    from mixtune.train.pretrain import pretrain

    try:
        pretrain(recipe, resume=args.resume)
    finally:
        dist_close()
    return 0
