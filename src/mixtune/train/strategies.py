"""Strategies as stage plans (Dong et al. 2023, §3.5; METHODS.md §1).

A strategy compiles to an ordered list of `Stage`s; each stage names its kind (`train/stages.py`), the sources it
trains in full, the sources it replays a fraction k of, and its recipe overrides. The sources' pools are drawn once
per run (data fractions apply there), so DMT's sample(D, k) is a subset of the very data stage 1 trained on.

- multi_task:        [code ∪ math ∪ general]
- sequential:        [code], [math], [general]          (order configurable)
- mixed_sequential:  [code ∪ math], [general]           (= DMT with k = 0)
- dmt(k):            [code ∪ math], [general ∪ k·code ∪ k·math]
- stages:            the recipe's explicit list (any kinds)

`strategy.then` appends stages of any kind after the strategy's own (SFT → DPO → GRPO); the sources they name are
left out of the strategy's SFT stages.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from mixtune.config import SourceConfig, StageSpec, StrategyConfig
from mixtune.data.formats import DEFAULT_ABILITY
from mixtune.data.mixture import minilab_ability
from mixtune.errors import UserError


class StrategyError(UserError, ValueError):
    """A stage plan that does not fit the recipe's sources."""


@dataclass(frozen=True)
class Stage:
    """One stage: its kind, the sources trained in full, source -> k replayed (a random k·|D| subset), and the
    recipe overrides the stage applies for itself."""

    name: str
    sources: tuple[str, ...]
    replay: tuple[tuple[str, float], ...] = field(default_factory=tuple)
    kind: str = "sft"
    overrides: tuple[str, ...] = ()

    def key(self) -> str:
        """A stable description of what the stage trains (studies reuse equal stage prefixes)."""
        replay = ",".join(f"{s}@{k:g}" for s, k in self.replay)
        extra = "" if self.kind == "sft" and not self.overrides else f"<{self.kind}{'|'.join(('', *self.overrides))}>"
        return f"{self.name}{extra}[{','.join(self.sources)}{'|' + replay if replay else ''}]"


Groups = dict[str, list[str]]
"""ability -> source names, in recipe order."""


def _by_ability(sources: list[SourceConfig]) -> Groups:
    groups: Groups = {}
    for src in sources:
        # as the reader assigns it: explicit ability, mini-lab ability, the format's own (gsm8k -> math), general
        ability = src.ability or (src.minilab and minilab_ability(src.minilab)) or DEFAULT_ABILITY.get(src.format,
                                                                                                      "general")
        groups.setdefault(ability, []).append(src.name)
    return groups


def _names(groups: Groups, abilities: list[str], strategy: str) -> list[str]:
    missing = [a for a in abilities if a not in groups]
    if missing:
        raise StrategyError(f"strategy {strategy}: no source with ability {missing} (sources by ability: {groups})")
    return [name for a in abilities for name in groups[a]]


def _all_placed(groups: Groups, abilities: list[str], strategy: str, knob: str) -> None:
    """A source no stage trains would be dropped silently: name it instead."""
    left = {a: names for a, names in groups.items() if a not in abilities}
    if left:
        raise StrategyError(f"strategy {strategy}: sources {left} (by ability) are in no stage; add their abilities "
                            f"to strategy.{knob} or leave the sources out of the run")


def _multi_task(cfg: StrategyConfig, groups: Groups, sources: list[SourceConfig]) -> list[Stage]:
    return [Stage("multi_task", tuple(s.name for s in sources))]


def _sequential(cfg: StrategyConfig, groups: Groups, sources: list[SourceConfig]) -> list[Stage]:
    present = [a for a in cfg.order if a in groups]
    if not present:
        raise StrategyError(f"strategy sequential: none of the abilities {cfg.order} has a source")
    _all_placed(groups, cfg.order, cfg.name, "order")
    return [Stage(a, tuple(groups[a])) for a in present]


def _mixed_sequential(cfg: StrategyConfig, groups: Groups, sources: list[SourceConfig]) -> list[Stage]:
    return _two_stages(cfg, groups, k=0.0)


def _dmt(cfg: StrategyConfig, groups: Groups, sources: list[SourceConfig]) -> list[Stage]:
    return _two_stages(cfg, groups, k=cfg.k)


def _two_stages(cfg: StrategyConfig, groups: Groups, k: float) -> list[Stage]:
    """Specialised sources, then general ones plus k·|D| of each specialised source (DMT §3.5; k = 0: mixed seq.)."""
    spec = _names(groups, cfg.specialized, cfg.name)
    gen = _names(groups, cfg.general, cfg.name)
    _all_placed(groups, [*cfg.specialized, *cfg.general], cfg.name, "specialized/general")
    replay = tuple((s, k) for s in spec) if k > 0 else ()
    return [Stage("specialized", tuple(spec)), Stage("general", tuple(gen), replay)]


def _explicit(cfg: StrategyConfig, groups: Groups, sources: list[SourceConfig]) -> list[Stage]:
    if not cfg.stages:
        raise StrategyError("strategy stages: the stage list is empty")
    return [_from_spec(spec, sources) for spec in cfg.stages]


STRATEGIES: dict[str, Callable[[StrategyConfig, Groups, list[SourceConfig]], list[Stage]]] = {
    "multi_task": _multi_task,
    "sequential": _sequential,
    "mixed_sequential": _mixed_sequential,
    "dmt": _dmt,
    "stages": _explicit,
}
"""strategy name -> planner(config, sources by ability, sources) returning its stages."""


def _from_spec(spec: StageSpec, sources: list[SourceConfig]) -> Stage:
    known = {s.name for s in sources}
    unknown = [n for n in [*spec.sources, *spec.replay] if n not in known]
    if unknown:
        raise StrategyError(f"stage {spec.name}: names unknown sources {unknown}; known: {sorted(known)}")
    if not spec.sources and not spec.replay:
        raise StrategyError(f"stage {spec.name}: trains no source; list its `sources`")
    return Stage(spec.name, tuple(spec.sources), tuple(spec.replay.items()), spec.kind, tuple(spec.overrides))


def plan_stages(cfg: StrategyConfig, sources: list[SourceConfig]) -> list[Stage]:
    """Compile the strategy into stages over the recipe's source names, then append `strategy.then`."""
    if cfg.name not in STRATEGIES:
        raise StrategyError(f"unknown strategy {cfg.name!r}; valid: {', '.join(STRATEGIES)}")
    later = [_from_spec(spec, sources) for spec in cfg.then]
    used_later = {n for s in later for n in (*s.sources, *(name for name, _ in s.replay))}
    # an explicit plan may name any source; the built-in strategies split the sources no later stage claims
    own = sources if cfg.name == "stages" else [s for s in sources if s.name not in used_later]
    stages = STRATEGIES[cfg.name](cfg, _by_ability(own), own) if own else []
    stages += later
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise StrategyError(f"stage names must be unique within a run, got {names}")
    if not stages:
        raise StrategyError("the strategy has no stage to train")
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
