"""`mixtune demo`: the main job from scratch on a CPU — world, tokenizer, base model, then the DMT mini-lab study.

The world, tokenizer and base are cached (`mixtune.study.base.prepare_base`), so a second `make demo` only reruns
what changed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from mixtune.config import load_recipe
from mixtune.study.base import prepare_base


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mixtune demo", description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="recipes/base-mini.yaml", help="base pre-training recipe")
    parser.add_argument("--study", default="recipes/dmt-mini.yaml", help="study recipe")
    parser.add_argument("--quick", action="store_true", help="run recipes/quickstart.yaml instead of the study")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    prepare_base(load_recipe(args.base))
    if args.quick or not Path(args.study).exists():
        from mixtune.train.run import train

        recipe = load_recipe("recipes/quickstart.yaml")
        summary = train(recipe, resume=True)
        print(f"[demo] quickstart scores: {json.dumps(summary['scores'], indent=1)}")
    else:
        from mixtune.study.cli import main as study_main

        study_main(["-c", args.study])
    print(f"[demo] total wall time {time.perf_counter() - t0:.0f} s")
    return 0
