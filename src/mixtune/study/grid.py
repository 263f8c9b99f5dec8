"""A study's grid: strategies × data fractions × seeds, plus the DMT paper's ratio set-ups (RQ3).

Ours: expanding a study recipe into one concrete training recipe per run. Data fractions apply to every source of a
run (RQ1/RQ2, random subsampling); under `matched_steps` the epochs grow as 1/fraction so every fraction trains the
same number of optimizer steps as the full data (at small scale fixed epochs confound data amount with steps).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from mixtune.config import Recipe, SourceConfig, StrategyConfig, apply_override, parse_override, validate


@dataclass(frozen=True)
class GridRun:
    """One run of the grid and the recipe that trains it."""

    run_id: str
    label: str
    fraction: float
    seed: int
    setup: str
    recipe: Recipe


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def scaled_source(src: SourceConfig, fraction: float) -> SourceConfig:
    """`src` drawing `fraction` of what it drew before (counts scale, fractions multiply)."""
    if fraction == 1.0:
        return src
    if src.count is not None:
        return src.model_copy(update={"count": max(1, round(src.count * fraction))})
    if src.ratio is not None:
        return src  # a ratio follows its reference source, which is scaled itself
    return src.model_copy(update={"fraction": (src.fraction or 1.0) * fraction})


def _recipe(study: Recipe, study_dir: Path, run_id: str, sources: list[SourceConfig], strategy: StrategyConfig,
            seed: int, base: Path, epochs_scale: float, overrides: list[str] = ()) -> Recipe:
    tree = study.model_dump(mode="json")
    tree.pop("study")  # a run is defined by what it trains, not by the grid around it (seeds can be added later)
    tree.update(name=run_id, out_dir=str(study_dir / run_id), seed=seed,
                strategy=strategy.model_dump(mode="json"))
    tree["model"] = {**tree["model"], "path": str(base), "tokenizer": None}
    tree["data"] = {**tree["data"], "sources": [s.model_dump(mode="json", exclude_none=True) for s in sources],
                    "shuffle_seed": seed}
    tree["train"] = {**tree["train"], "seed": seed, "epochs": tree["train"]["epochs"] * epochs_scale}
    for text in overrides:
        keys, value = parse_override(text)
        apply_override(tree, keys, value)
    return validate(Recipe, tree, f"study run {run_id}")


def _scale(study: Recipe, fraction: float) -> float:
    return 1.0 / fraction if study.study.protocol == "matched_steps" else 1.0


def expand_grid(study: Recipe, study_dir: Path, base: Path) -> list[GridRun]:
    """Every run of the study, seeds outermost (a partial study already covers each strategy once)."""
    cfg = study.study
    by_name = {s.name: s for s in study.data.sources}
    runs: list[GridRun] = []
    for seed in cfg.seeds:
        for fraction in cfg.fractions:
            for run in cfg.runs:
                unknown = [n for n in run.sources if n not in by_name]
                if unknown:
                    raise ValueError(f"study run {run.label!r}: unknown sources {unknown}; known: {sorted(by_name)}")
                chosen = [by_name[n] for n in run.sources] if run.sources else list(by_name.values())
                sources = [scaled_source(s, fraction) for s in chosen]
                run_id = f"{slug(run.label)}-f{fraction:g}-s{seed}".replace("/", "_")
                setup = "single" if len(chosen) == 1 else "mixed"
                recipe = _recipe(study, study_dir, run_id, sources, run.strategy, seed, base, _scale(study, fraction),
                                 run.overrides)
                runs.append(GridRun(run_id, run.label, fraction, seed, setup, recipe))
            runs.extend(_ratio_runs(study, study_dir, base, fraction, seed))
    return runs


def _ratio_runs(study: Recipe, study_dir: Path, base: Path, fraction: float, seed: int) -> list[GridRun]:
    """RQ3: multi-task on specialised (math ∪ code) and general data, one side at `fraction`, the other fixed."""
    cfg = study.study
    out = []
    for setup in cfg.ratio_setups:
        sources = []
        for src in study.data.sources:
            specialised = (src.ability or src.minilab) in cfg.specialized
            varied = specialised == (setup.vary == "specialized")
            sources.append(scaled_source(src, fraction if varied else setup.fixed_fraction))
        spec_f = fraction if setup.vary == "specialized" else setup.fixed_fraction
        gen_f = setup.fixed_fraction if setup.vary == "specialized" else fraction
        run_id = f"ratio-{slug(setup.label)}-f{fraction:g}-s{seed}"
        recipe = _recipe(study, study_dir, run_id, sources, StrategyConfig(name="multi_task"), seed, base, 1.0)
        # k = (specialised used / all) / (general used / all), DMT §3.3
        out.append(GridRun(run_id, f"{setup.label} (k={spec_f / gen_f:g})", fraction, seed, f"ratio:{setup.label}",
                           recipe))
    return out
