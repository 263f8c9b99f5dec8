"""Strategies as stage plans (Dong et al. 2023, §3.5; METHODS.md §1).

A strategy compiles to an ordered list of `Stage`s; each stage names the sources it trains in full and the sources
it replays a fraction k of. The sources' pools are drawn once per run (data fractions apply there), so DMT's
sample(D, k) is a subset of the very data stage 1 trained on.

- multi_task:        [code ∪ math ∪ general]
- sequential:        [code], [math], [general]          (order configurable)
- mixed_sequential:  [code ∪ math], [general]           (= DMT with k = 0)
- dmt(k):            [code ∪ math], [general ∪ k·code ∪ k·math]
- stages:            the recipe's explicit list
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from mixtune.config import SourceConfig, StrategyConfig
from mixtune.data.formats import DEFAULT_ABILITY

STRATEGIES = ("multi_task", "sequential", "mixed_sequential", "dmt", "stages")


class StrategyError(ValueError):
    """A stage plan that does not fit the recipe's sources."""


@dataclass(frozen=True)
class Stage:
    """One stage: sources trained in full, and source -> k replayed (a random k·|D| subset)."""

    name: str
    sources: tuple[str, ...]
    replay: tuple[tuple[str, float], ...] = field(default_factory=tuple)

    def key(self) -> str:
        """A stable description of what the stage trains (studies reuse equal stage prefixes)."""
        replay = ",".join(f"{s}@{k:g}" for s, k in self.replay)
        return f"{self.name}[{','.join(self.sources)}{'|' + replay if replay else ''}]"


def _by_ability(sources: list[SourceConfig]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for src in sources:
        # as the reader assigns it: explicit ability, mini-lab ability, the format's own (gsm8k -> math), general
        ability = src.ability or src.minilab or DEFAULT_ABILITY.get(src.format, "general")
        groups.setdefault(ability, []).append(src.name)
    return groups


def _names(groups: dict[str, list[str]], abilities: list[str], strategy: str) -> list[str]:
    missing = [a for a in abilities if a not in groups]
    if missing:
        raise StrategyError(f"strategy {strategy}: no source with ability {missing} (sources by ability: {groups})")
    return [name for a in abilities for name in groups[a]]


def _all_placed(groups: dict[str, list[str]], abilities: list[str], strategy: str, knob: str) -> None:
    """A source no stage trains would be dropped silently: name it instead."""
    left = {a: names for a, names in groups.items() if a not in abilities}
    if left:
        raise StrategyError(f"strategy {strategy}: sources {left} (by ability) are in no stage; add their abilities "
                            f"to strategy.{knob} or leave the sources out of the run")


def plan_stages(cfg: StrategyConfig, sources: list[SourceConfig]) -> list[Stage]:
    """Compile the strategy into stages over the recipe's source names."""
    groups = _by_ability(sources)
    if cfg.name == "multi_task":
        return [Stage("multi_task", tuple(s.name for s in sources))]
    if cfg.name == "sequential":
        present = [a for a in cfg.order if a in groups]
        if not present:
            raise StrategyError(f"strategy sequential: none of the abilities {cfg.order} has a source")
        _all_placed(groups, cfg.order, cfg.name, "order")
        return [Stage(a, tuple(groups[a])) for a in present]
    if cfg.name in ("mixed_sequential", "dmt"):
        spec = _names(groups, cfg.specialized, cfg.name)
        gen = _names(groups, cfg.general, cfg.name)
        _all_placed(groups, [*cfg.specialized, *cfg.general], cfg.name, "specialized/general")
        first = Stage("specialized", tuple(spec))
        k = cfg.k if cfg.name == "dmt" else 0.0
        replay = tuple((s, k) for s in spec) if k > 0 else ()
        return [first, Stage("general", tuple(gen), replay)]
    known = {s.name for s in sources}
    stages = []
    for spec in cfg.stages:
        unknown = [n for n in [*spec.sources, *spec.replay] if n not in known]
        if unknown:
            raise StrategyError(f"strategy stages: stage {spec.name} names unknown sources {unknown}; "
                                f"known: {sorted(known)}")
        stages.append(Stage(spec.name, tuple(spec.sources), tuple(spec.replay.items())))
    if not stages:
        raise StrategyError("strategy stages: the stage list is empty")
    return stages


def stage_examples(stage: Stage, pools: dict[str, list[dict]], seed: int) -> tuple[list[dict], dict]:
    """The examples of one stage and its manifest: full sources plus seeded replay subsets (k·|D|, ≥ 1)."""
    examples: list[dict] = []
    manifest: dict[str, dict] = {}
    for name in stage.sources:
        examples.extend(pools[name])
        manifest[name] = {"drawn": len(pools[name]), "replay_k": None}
    for name, k in stage.replay:
        pool = pools[name]
        n = max(1, round(k * len(pool)))
        rng = random.Random(f"{seed}:replay:{stage.name}:{name}")
        picked = [pool[i] for i in sorted(rng.sample(range(len(pool)), n))]
        examples.extend(picked)
        manifest[f"{name} (replay)"] = {"drawn": n, "replay_k": k, "ids": [ex["id"] for ex in picked]}
    return examples, manifest
