"""The base model of a study: any local checkpoint (`study.base`), or the mini-lab's world → tokenizer → pre-trained
base (`study.base_recipe`), each step cached; the checks a study makes before its folder exists; the base's own
scores (run `base`, stage `base`), so tables and plots show where every strategy started.

Each preparatory step of the mini-lab base is skipped when its output exists and was made from the same
configuration (a stamp file holds the resolved section), so a second study or `make demo` only reruns what changed.
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


# ------------------------------------------------------------------------------------------ any checkpoint as base
BASE_RUN = "base"
"""Run id (and stage name) under which a study stores its base model's scores."""


def study_base(study: Recipe, log=print) -> Path:
    """The base checkpoint folder of a study: `study.base` (a checkpoint, or a run folder's final/) as it is, else
    the mini-lab base of `study.base_recipe`, prepared (or found cached)."""
    if study.study.base is not None:
        from mixtune.model.folders import resolve_final

        base = resolve_final(study.study.base, what="study.base")
        log(f"[base] base model: {base}")
        return base
    from mixtune.config import load_recipe

    return prepare_base(load_recipe(study.study.base_recipe_path()), log=log)


def base_run_recipe(study: Recipe, study_dir: Path, base: Path, run_id: str = BASE_RUN) -> Recipe:
    """The recipe that scores a base: the study's model, data template and benchmarks, `model.path` = base."""
    from mixtune.config import validate

    tree = study.model_dump(mode="json")
    tree.pop("study")
    tree.update(name=run_id, out_dir=str(study_dir / run_id))
    tree["model"] = {**tree["model"], "path": str(base), "tokenizer": None}
    tree["data"] = {**tree["data"], "sources": []}
    tree["adapter"] = {"type": "none"}  # the base as it is, whatever adapter the runs train
    return validate(Recipe, tree, "study base")


def check_study(study: Recipe, base: Path, log=print) -> None:
    """What every run checks before its folder exists, done once before the study folder exists: sequence lengths
    against the base's context, the tokenizer and chat template, the judge, and every data source (read and
    validated; a streaming source only needs its declared size). A bad study fails here in one line."""
    from mixtune.data.hf_sources import source_size
    from mixtune.data.mixture import load_source
    from mixtune.evaluate.runner import check_judges
    from mixtune.model.folders import check_context
    from mixtune.model.load import prepare_tokenizer

    recipe = base_run_recipe(study, Path(study.run_dir), base)
    check_context(recipe.model, {"data.max_seq_len": study.data.max_seq_len, "data.pack_len": study.data.pack_len})
    prepare_tokenizer(recipe.model, study.data.template, log=log)
    check_judges(recipe, log)
    for src in study.data.sources:
        if src.streaming:
            source_size(src.path, src.dataset_info, src.split)
        else:
            load_source(src, study.world.out_dir, log=lambda _: None)
