"""`mixtune world -c recipe.yaml [world.key=value ...]`: generate the mini-lab world and print a summary."""

from __future__ import annotations

import time

from mixtune.cliutil import parse_recipe, recipe_parser
from mixtune.world.build import generate_world


def main(argv: list[str]) -> int:
    """Generate the world of the recipe's `world` section into `world.out_dir`; prints counts, size and time."""
    parser = recipe_parser("world", "Generate the mini-lab world: pre-training corpus, SFT sources and held-out "
                           "benchmarks, all from one seed.", sections=["world"])
    _, recipe = parse_recipe(parser, argv)
    cfg = recipe.world
    start = time.perf_counter()
    info = generate_world(cfg)
    elapsed = time.perf_counter() - start
    print(f"mixtune world: wrote {cfg.out_dir} (seed {cfg.seed}) in {elapsed:.1f} s")
    for name, count in info["counts"].items():
        print(f"  {name:<26} {count:>8,}")
    tokens = info["approx_tokens"]
    print(f"  corpus characters          {info['corpus_chars']:>8,}  (~{tokens['corpus']:,} tokens at 4 chars/token)")
    print(f"  SFT characters             {info['sft_chars']:>8,}  (~{tokens['sft']:,} tokens)")
    return 0
