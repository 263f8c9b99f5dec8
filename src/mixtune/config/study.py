"""Recipe sections of the study floor: a grid of runs × data fractions × seeds from one base model."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from mixtune.config.base import Section
from mixtune.config.train import StrategyConfig

Protocol = Literal["matched_steps", "fixed_epochs"]

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
    protocol: Protocol | list[Protocol] = "matched_steps"
    """matched_steps: every run of the study (every strategy, fraction and ratio set-up) trains the same number of
    optimizer steps (`step_budget`), split over its stages in proportion to their data, so a comparison of
    strategies or data amounts is not a comparison of steps; fixed_epochs (the paper's): `train.epochs` passes over
    each stage's data, so runs with more data train more steps. A list runs both in one study folder."""
    step_budget: int | None = Field(None, ge=1)
    """matched_steps: optimizer steps of every run (default: the steps `train.epochs` gives a multi-task run over
    all sources at fraction 1, i.e. ceil(epochs × examples / batch_size))."""
    contamination: Literal["check", "off"] = "check"
    """check: before training, a training record that is a test item of the study's benchmarks stops the study, and
    13-gram overlaps are counted into contamination.json and the report; off: no check."""
    base_seeds: list[int] = Field(default_factory=list)
    """Pre-train one base per seed (the base recipe's `train.seed`) and run the whole grid on each, so tables
    carry the spread over bases as well as over SFT seeds (empty: the base recipe as it is, one base)."""
    ratio_setups: list[RatioSetup] = Field(default_factory=list)
    """RQ3 ratio set-ups, each run as multi-task over the grid's fractions."""
    workers: int = Field(2, ge=1)
    """Runs executed in parallel (one torch thread each) by the local executor."""
    executor: Literal["local", "ray"] = "local"
    """local: a process pool on this machine; ray: one Ray task per run and per shared stage prefix (the study
    folder must be on a filesystem every node sees)."""
    ray_address: str | None = None
    """Ray: address of an existing cluster ("auto", "host:6379", "ray://host:10001"); unset: a local one."""
    cpus_per_run: float = Field(1.0, gt=0)
    """Ray: CPUs each run's task requests (also its torch threads)."""
    gpus_per_run: float = Field(0.0, ge=0)
    """Ray: GPUs each run's task requests (a run is one process: more than 1 is not used)."""
    max_retries: int = Field(3, ge=0)
    """Ray: times a task whose worker died is started again (it resumes from its checkpoints)."""
    specialized: list[str] = Field(default_factory=lambda: ["math", "code"])
    """Abilities forming the specialised side of ratio set-ups."""

    @property
    def protocols(self) -> tuple[str, ...]:
        """The protocols the study runs, in order (a single one given as a string is a one-item tuple)."""
        return (self.protocol,) if isinstance(self.protocol, str) else tuple(dict.fromkeys(self.protocol))

    @model_validator(mode="after")
    def _one_base(self) -> StudyConfig:
        if self.base is not None and self.base_recipe is not None:
            raise ValueError("give study.base (a checkpoint or run folder) or study.base_recipe (a mini-lab base "
                             "recipe), not both")
        return self

    def base_recipe_path(self) -> str:
        """The mini-lab base recipe (when `base` is not set)."""
        return self.base_recipe or DEFAULT_BASE_RECIPE
