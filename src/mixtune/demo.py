"""`mixtune demo`: the main job from scratch on a CPU — world, tokenizer, base model, then the DMT mini-lab study.

Each preparatory step is skipped when its output exists and was made from the same configuration (a stamp file
holds the resolved section), so a second `make demo` only reruns what changed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from mixtune.config import Recipe, load_recipe

STAMP = ".mixtune-stamp.json"


def _fresh(folder: Path, section: dict, must_exist: str) -> bool:
    stamp = folder / STAMP
    return (folder / must_exist).exists() and stamp.exists() and json.loads(stamp.read_text()) == section


def _stamp(folder: Path, section: dict) -> None:
    from mixtune.runs import atomic_write_json

    atomic_write_json(folder / STAMP, section)


def prepare_base(base: Recipe, log=print) -> Path:
    """World → tokenizer → pre-trained base, each cached; returns the base checkpoint folder."""
    world_dir, tok_dir = Path(base.world.out_dir), Path(base.tokenizer.out_dir)
    world_cfg = base.world.model_dump(mode="json")
    if _fresh(world_dir, world_cfg, "world.json"):
        log(f"[demo] world: cached in {world_dir}")
    else:
        from mixtune.world.build import generate_world

        t0 = time.perf_counter()
        generate_world(base.world)
        _stamp(world_dir, world_cfg)
        log(f"[demo] world: generated in {time.perf_counter() - t0:.0f} s")
    tok_cfg = {"tokenizer": base.tokenizer.model_dump(mode="json"), "world": world_cfg}
    if _fresh(tok_dir, tok_cfg, "tokenizer.json"):
        log(f"[demo] tokenizer: cached in {tok_dir}")
    else:
        from mixtune.data.tokenizer_train import default_files, train_tokenizer

        t0 = time.perf_counter()
        cfg = base.tokenizer
        files = [Path(f) for f in cfg.files] if cfg.files else default_files(base.world.out_dir)
        train_tokenizer(files, cfg.vocab_size, cfg.min_frequency, cfg.out_dir)
        _stamp(tok_dir, tok_cfg)
        log(f"[demo] tokenizer: trained in {time.perf_counter() - t0:.0f} s")
    base_cfg = {**tok_cfg, "model": base.model.model_dump(mode="json"), "train": base.train.model_dump(mode="json")}
    final = base.run_dir / "final"
    if _fresh(base.run_dir, base_cfg, "final/config.json"):
        log(f"[demo] base model: cached in {final}")
    else:
        from mixtune.train.pretrain import pretrain

        t0 = time.perf_counter()
        pretrain(base, resume=True)
        _stamp(base.run_dir, base_cfg)
        log(f"[demo] base model: pre-trained in {time.perf_counter() - t0:.0f} s")
    return final


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
