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
from mixtune.errors import UserError
from mixtune.study.base import prepare_base


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mixtune demo", description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="recipes/base-mini.yaml", help="base pre-training recipe")
    parser.add_argument("--study", default="recipes/dmt-mini.yaml", help="study recipe")
    parser.add_argument("--quick", action="store_true", help="run recipes/quickstart.yaml instead of the study")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the study recipe, e.g. "
                        "train.packed_attention=false 'study.seeds=[0,1,2]'")
    args = parser.parse_args(argv)
    if not args.quick and not Path(args.study).is_file():
        raise UserError(f"study recipe {args.study} not found; give --study <recipe.yaml> (run from the "
                        f"repository root for the default recipes/dmt-mini.yaml), or --quick for the one-ability SFT")
    if not args.quick:
        from mixtune.train.levers import check_compiler

        study = load_recipe(args.study, args.overrides)  # a bad override fails in one line now, not after the base
        check_compiler(study.train)  # so does train.compile without a C++ compiler
    t0 = time.perf_counter()
    prepare_base(load_recipe(args.base))
    if args.quick:
        from mixtune.train.run import train

        recipe = load_recipe("recipes/quickstart.yaml")
        summary = train(recipe, resume=True)
        print(f"[demo] quickstart scores: {json.dumps(summary['scores'], indent=1)}")
    else:
        from mixtune.study.cli import main as study_main

        code = study_main(["-c", args.study, *args.overrides])
        print(f"[demo] total wall time {time.perf_counter() - t0:.0f} s")
        return code  # 1 when a run failed: a failed demo does not exit 0
    print(f"[demo] total wall time {time.perf_counter() - t0:.0f} s")
    return 0
