"""The base model of a study: the mini-lab's world → tokenizer → pre-trained base, each step cached.

Each preparatory step is skipped when its output exists and was made from the same configuration (a stamp file
holds the resolved section), so a second study or `make demo` only reruns what changed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from mixtune.config import Recipe
from mixtune.runs import atomic_write_json

STAMP = ".mixtune-stamp.json"


def _fresh(folder: Path, section: dict, must_exist: str) -> bool:
    stamp = folder / STAMP
    return (folder / must_exist).exists() and stamp.exists() and json.loads(stamp.read_text()) == section


def _stamp(folder: Path, section: dict) -> None:
    atomic_write_json(folder / STAMP, section)


def prepare_base(base: Recipe, log=print) -> Path:
    """World → tokenizer → pre-trained base, each cached; returns the base checkpoint folder."""
    tok_cfg = prepare_corpus(base, log)
    base_cfg = {**tok_cfg, "model": base.model.model_dump(mode="json"), "train": base.train.model_dump(mode="json")}
    final = base.run_dir / "final"
    if _fresh(base.run_dir, base_cfg, "final/config.json"):
        log(f"[base] base model: cached in {final}")
    else:
        from mixtune.train.pretrain import pretrain

        t0 = time.perf_counter()
        pretrain(base, resume=True)
        _stamp(base.run_dir, base_cfg)
        log(f"[base] base model: pre-trained in {time.perf_counter() - t0:.0f} s")
    return final


def prepare_corpus(base: Recipe, log=print) -> dict:
    """World → tokenizer, each cached; returns the stamp of the pair (what a model trained on them depends on)."""
    world_dir, tok_dir = Path(base.world.out_dir), Path(base.tokenizer.out_dir)
    world_cfg = base.world.model_dump(mode="json")
    if _fresh(world_dir, world_cfg, "world.json"):
        log(f"[base] world: cached in {world_dir}")
    else:
        from mixtune.world.build import generate_world

        t0 = time.perf_counter()
        generate_world(base.world)
        _stamp(world_dir, world_cfg)
        log(f"[base] world: generated in {time.perf_counter() - t0:.0f} s")
    tok_cfg = {"tokenizer": base.tokenizer.model_dump(mode="json"), "world": world_cfg}
    if _fresh(tok_dir, tok_cfg, "tokenizer.json"):
        log(f"[base] tokenizer: cached in {tok_dir}")
    else:
        from mixtune.data.tokenizer_train import default_files, train_tokenizer

        t0 = time.perf_counter()
        cfg = base.tokenizer
        files = [Path(f) for f in cfg.files] if cfg.files else default_files(base.world.out_dir)
        train_tokenizer(files, cfg.vocab_size, cfg.min_frequency, cfg.out_dir)
        _stamp(tok_dir, tok_cfg)
        log(f"[base] tokenizer: trained in {time.perf_counter() - t0:.0f} s")
    return tok_cfg
