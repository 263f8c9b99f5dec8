"""Recipe sections of the study floor: a grid of runs × data fractions × seeds from one base model."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from mixtune.config.base import Section
from mixtune.config.train import StrategyConfig

DEFAULT_BASE_RECIPE = "recipes/base-mini.yaml"
"""The mini-lab base a study uses when it names neither study.base nor study.base_recipe."""


class StudyRun(Section):
    """One row of a study grid: a strategy over some of the recipe's sources."""

    label: str
    """Name in tables and plots (e.g. "DMT k=1/64")."""
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    """The stage plan."""
    sources: list[str] = Field(default_factory=list)
    """Source names to use (empty: all); a single source makes a single-ability run."""
    overrides: list[str] = Field(default_factory=list)
    """key.sub=value overrides of this run's recipe (e.g. adapter.type=lora, train.lr=2e-3)."""


class RatioSetup(Section):
    """DMT RQ3: vary the specialised (math ∪ code) or general share while the other side stays fixed."""

    label: str
    """Set-up name (e.g. "full general + f specialised")."""
    vary: Literal["specialized", "general"]
    """Which side gets the grid's fractions."""
    fixed_fraction: float = Field(1.0, gt=0, le=1)
    """Fraction of the other side (1 or 1/64 in the paper)."""


class StudyConfig(Section):
    """A grid of runs × data fractions × seeds from one shared base model (`mixtune study`)."""

    base: str | None = None
    """The base model of every run: a local Hugging Face checkpoint folder, or a mixtune run folder (its final/);
    exclusive with base_recipe. The base is scored once on the study's benchmarks (run `base`, stage `base`)."""
    base_recipe: str | None = None
    """Recipe of a mini-lab base (world, tokenizer, pre-training), prepared once and cached; the default when
    `base` is not set: recipes/base-mini.yaml."""
    runs: list[StudyRun] = Field(default_factory=list)
    """The strategies compared."""
    fractions: list[float] = Field(default_factory=lambda: [1.0])
    """Data fractions applied to every source (DMT RQ1/RQ2: 1, 1/4, 1/16, 1/64, 1/256)."""
    seeds: list[int] = Field(default_factory=lambda: [0])
    """Seeds: data draw, order and initialisation of adapters."""
    protocol: Literal["fixed_epochs", "matched_steps"] = "fixed_epochs"
    """fixed_epochs (the paper's): steps shrink with the data; matched_steps: every fraction gets the optimizer
    steps of the full data (epochs scaled by 1/fraction), so data amount is not confounded with steps."""
    ratio_setups: list[RatioSetup] = Field(default_factory=list)
    """RQ3 ratio set-ups, each run as multi-task over the grid's fractions."""
    workers: int = Field(2, ge=1)
    """Runs executed in parallel (one torch thread each)."""
    specialized: list[str] = Field(default_factory=lambda: ["math", "code"])
    """Abilities forming the specialised side of ratio set-ups."""

    @model_validator(mode="after")
    def _one_base(self) -> StudyConfig:
        if self.base is not None and self.base_recipe is not None:
            raise ValueError("give study.base (a checkpoint or run folder) or study.base_recipe (a mini-lab base "
                             "recipe), not both")
        return self

    def base_recipe_path(self) -> str:
        """The mini-lab base recipe (when `base` is not set)."""
        return self.base_recipe or DEFAULT_BASE_RECIPE
