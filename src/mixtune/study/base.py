"""The base model of a study: any local checkpoint (`study.base`), or the mini-lab's world → tokenizer → pre-trained
base (`study.base_recipe`), each step cached; the checks a study makes before its folder exists; the base's own
scores (run `base`, stage `base`), so tables and plots show where every strategy started.

Each preparatory step of the mini-lab base is skipped when its output exists and was made from the same
configuration (a stamp file holds the resolved section), so a second study or `make demo` only reruns what changed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

from mixtune.config import Recipe
from mixtune.runs import atomic_write_json

STAMP = ".mixtune-stamp.json"


def _digest(paths: list[Path]) -> dict[str, str]:
    """sha256 of each file, by name: a cache is keyed by what a step reads, not by the configuration that wrote it
    (a world that gains a file the step does not read leaves its tokenizer and base valid)."""
    return {p.name if p.parent.name in ("", ".") else f"{p.parent.name}/{p.name}":
            hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def _changed(folder: Path, key: dict, defaults: dict | None = None) -> list[str] | None:
    """None when `folder` has no stamp; else the top-level keys of `key` that differ from its stamp ([]: fresh).

    `defaults`: {top-level key: the section's default values}. A field the stamp does not have (one added to the
    schema after the stamp was written) counts as unchanged while it holds its default: the old code behaved as the
    default does, so a new switch left off does not invalidate a cache; one turned on does."""
    stamp = folder / STAMP
    if not stamp.exists():
        return None
    old, defaults = json.loads(stamp.read_text()), defaults or {}

    def same(name: str) -> bool:
        was, now, default = old.get(name), key.get(name), defaults.get(name)
        if isinstance(was, dict) and isinstance(now, dict) and isinstance(default, dict):
            return all(was[f] == v if f in was else default.get(f) == v for f, v in now.items())
        return was == now

    return sorted(k for k in {*old, *key} if not same(k))


def _fresh(folder: Path, key: dict, must_exist: str, defaults: dict | None = None) -> bool:
    return (folder / must_exist).exists() and _changed(folder, key, defaults) == []


def _stamp(folder: Path, key: dict) -> None:
    atomic_write_json(folder / STAMP, key)


def base_key(base: Recipe) -> dict:
    """What the mini-lab base is made from: the tokenizer's file, the corpus files, the model and training sections."""
    from mixtune.train.pretrain import corpus_paths

    tok = Path(base.tokenizer.out_dir) / "tokenizer.json"
    return {"tokenizer": _digest([tok]), "corpus": _digest(corpus_paths(base)),
            "model": base.model.model_dump(mode="json"), "train": base.train.model_dump(mode="json")}


def _defaults() -> dict:
    """The default values of the sections the caches are keyed on (see `_changed`)."""
    from mixtune.config import ModelConfig, TokenizerConfig, TrainConfig

    return {"model": ModelConfig().model_dump(mode="json"), "train": TrainConfig().model_dump(mode="json"),
            "tokenizer": TokenizerConfig().model_dump(mode="json")}


def prepare_base(base: Recipe, log=print) -> Path:
    """World → tokenizer → pre-trained base, each cached; returns the base checkpoint folder."""
    prepare_corpus(base, log)
    return _pretrain_base(base, base_key(base), log)


def prepare_corpus(base: Recipe, log=print) -> None:
    """World → tokenizer, each cached (what the analyses pre-train their own models on)."""
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
    from mixtune.data.tokenizer_train import default_files, train_tokenizer

    cfg = base.tokenizer
    files = [Path(f) for f in cfg.files] if cfg.files else default_files(base.world.out_dir)
    tok_key = {"tokenizer": cfg.model_dump(mode="json"), "files": _digest(files)}
    if _fresh(tok_dir, tok_key, "tokenizer.json", _defaults()):
        log(f"[base] tokenizer: cached in {tok_dir}")
    else:
        t0 = time.perf_counter()
        train_tokenizer(files, cfg.vocab_size, cfg.min_frequency, cfg.out_dir)
        _stamp(tok_dir, tok_key)
        log(f"[base] tokenizer: trained in {time.perf_counter() - t0:.0f} s")


def _pretrain_base(base: Recipe, key: dict, log) -> Path:
    """The cached base when its stamp matches `key`; a killed pre-training (no stamp yet) resumes; a base made from
    other inputs is pre-trained again from scratch (its checkpoints must not seed a run on different data)."""
    run_dir, final = base.run_dir, base.run_dir / "final"
    changed = _changed(run_dir, key, _defaults())
    if changed == [] and (final / "config.json").exists():
        log(f"[base] base model: cached in {final}")
        return final
    if changed:
        log(f"[base] {run_dir} was pre-trained from other inputs ({', '.join(changed)} changed): pre-training again")
        for stale in ("checkpoints", "final", "metrics.jsonl", STAMP):
            path = run_dir / stale
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    from mixtune.train.pretrain import pretrain

    t0 = time.perf_counter()
    pretrain(base, resume=True)
    _stamp(run_dir, key)
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
    # every stage of every run: what its kind needs from the recipe (a distill teacher, an rlaif labeller, ...)
    from mixtune.study.grid import expand_grid
    from mixtune.train.run import stage_recipe
    from mixtune.train.stages import check_stage_recipe
    from mixtune.train.strategies import plan_stages

    for run in expand_grid(study, Path(study.run_dir), {"base": base}):
        for stage in plan_stages(run.recipe.strategy, run.recipe.data.sources):
            check_stage_recipe(stage.name, stage.kind, stage_recipe(run.recipe, stage))
