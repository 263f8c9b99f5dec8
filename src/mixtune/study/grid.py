"""A study's grid: protocols × base models × seeds × data fractions × strategies, plus the DMT paper's ratio
set-ups (RQ3).

Ours: expanding a study recipe into one concrete training recipe per run. Data fractions apply to every source of a
run (RQ1/RQ2, random subsampling). The protocol decides the optimizer steps:
- `matched_steps`: every run trains `study.step_budget` steps (default: what `train.epochs` gives the multi-task run
  on all the data), split over its stages by their data (`train.step_budget`), so single-ability runs, mixtures,
  multi-stage strategies, fractions and ratio set-ups are compared at equal steps (at small scale, steps decide
  more than data: DESIGN.md);
- `fixed_epochs` (the paper's): `train.epochs` passes over each stage's data, so runs with more data train more.
"""

from __future__ import annotations

import math
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
    protocol: str = "fixed_epochs"
    base: str = ""


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


PROTOCOL_TAGS = {"matched_steps": "matched", "fixed_epochs": "epochs"}
"""The run-id suffix of each protocol (both protocols can share one study folder)."""


def default_budget(study: Recipe) -> int:
    """Steps `train.epochs` gives a multi-task run over every source at fraction 1: ceil(epochs × N / batch)."""
    from mixtune.data.mixture import draw_mixture

    mixture = draw_mixture(study.data.sources, study.world.out_dir, seed=0, log=lambda _: None)
    return max(1, math.ceil(study.train.epochs * len(mixture.train) / study.train.batch_size))


def _recipe(study: Recipe, study_dir: Path, run_id: str, sources: list[SourceConfig], strategy: StrategyConfig,
            seed: int, base: Path, budget: int | None, overrides: list[str] = ()) -> Recipe:
    tree = study.model_dump(mode="json")
    tree.pop("study")  # a run is defined by what it trains, not by the grid around it (seeds can be added later)
    tree.update(name=run_id, out_dir=str(study_dir / run_id), seed=seed,
                strategy=strategy.model_dump(mode="json"))
    tree["model"] = {**tree["model"], "path": str(base), "tokenizer": None}
    tree["data"] = {**tree["data"], "sources": [s.model_dump(mode="json", exclude_none=True) for s in sources],
                    "shuffle_seed": seed}
    tree["train"] = {**tree["train"], "seed": seed, "step_budget": budget}
    for text in overrides:
        keys, value = parse_override(text)
        apply_override(tree, keys, value)
    return validate(Recipe, tree, f"study run {run_id}")


def expand_grid(study: Recipe, study_dir: Path, bases: dict[str, Path]) -> list[GridRun]:
    """Every run of the study. Order: seeds outermost (a partial study already covers each strategy once), then
    bases, protocols, fractions, strategies. `bases`: base name -> checkpoint (one entry unless `study.base_seeds`).
    Run ids: `<label>-f<fraction>-s<seed>[-b<base seed>]-<protocol tag>`."""
    cfg = study.study
    by_name = {s.name: s for s in study.data.sources}
    budget = (cfg.step_budget or default_budget(study)) if "matched_steps" in cfg.protocols else None
    runs: list[GridRun] = []
    for seed in cfg.seeds:
        for base_name, base in bases.items():
            base_tag = f"-{base_name.rsplit('-', 1)[-1]}" if len(cfg.base_seeds) else ""
            for protocol in cfg.protocols:
                run_budget = budget if protocol == "matched_steps" else None
                suffix = f"{base_tag}-{PROTOCOL_TAGS[protocol]}"
                for fraction in cfg.fractions:
                    for run in cfg.runs:
                        unknown = [n for n in run.sources if n not in by_name]
                        if unknown:
                            raise ValueError(f"study run {run.label!r}: unknown sources {unknown}; "
                                             f"known: {sorted(by_name)}")
                        chosen = [by_name[n] for n in run.sources] if run.sources else list(by_name.values())
                        sources = [scaled_source(s, fraction) for s in chosen]
                        run_id = f"{slug(run.label)}-f{fraction:g}-s{seed}{suffix}".replace("/", "_")
                        setup = "single" if len(chosen) == 1 else "mixed"
                        recipe = _recipe(study, study_dir, run_id, sources, run.strategy, seed, base, run_budget,
                                         run.overrides)
                        runs.append(GridRun(run_id, run.label, fraction, seed, setup, recipe, protocol, base_name))
                    runs.extend(_ratio_runs(study, study_dir, base, base_name, fraction, seed, protocol, run_budget,
                                            suffix))
    return runs


def _ratio_runs(study: Recipe, study_dir: Path, base: Path, base_name: str, fraction: float, seed: int,
                protocol: str, budget: int | None, suffix: str) -> list[GridRun]:
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
        run_id = f"ratio-{slug(setup.label)}-f{fraction:g}-s{seed}{suffix}"
        recipe = _recipe(study, study_dir, run_id, sources, StrategyConfig(name="multi_task"), seed, base, budget)
        # k = (specialised used / all) / (general used / all), DMT §3.3
        out.append(GridRun(run_id, f"{setup.label} (k={spec_f / gen_f:g})", fraction, seed, f"ratio:{setup.label}",
                           recipe, protocol, base_name))
    return out
