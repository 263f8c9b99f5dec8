"""The stage registry: a stage kind -> the file that trains it, and what every stage gets and gives back.

A recipe's strategy compiles to stages (`train/strategies.py`); each stage has a kind looked up in `STAGE_KINDS`.
Every kind is one file under `train/` exposing `run_stage(ctx: StageContext) -> StageResult` on the same skeleton:

    setup     build the stage's data, optimizer and schedule; resume from the stage's checkpoints
    loop      the optimizer steps, visible in the file (no trainer class, no callbacks)
    evaluate  mid-stage ability checks are plain calls to `evaluate_abilities(ctx, step)`
    save      checkpoints during the loop; the run saves the stage's weights and scores after it returns

`train/run.py` calls the stage, then `evaluate_abilities(ctx)` (every ability after every stage, so forgetting is
measured), then saves the stage. Stages of different kinds chain in one recipe (SFT → DPO → GRPO): each starts from
the previous stage's weights (or adapter) in place. A new kind is one new file and one line below.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixtune.config import Recipe

STAGE_KINDS: dict[str, str] = {
    "sft": "mixtune.train.sft:run_stage",
    "grpo": "mixtune.train.grpo:run_stage",
    "ppo": "mixtune.train.ppo:run_stage",
}
"""kind -> "module:function" taking a StageContext and returning a StageResult (imported when a stage runs)."""


@dataclass
class StageContext:
    """What a stage gets: the model to train in place, its data, its folder and how to resume and evaluate."""

    recipe: Recipe
    """The run's recipe with this stage's overrides applied (`ctx.recipe.train` is this stage's optimisation)."""
    name: str
    """Stage name (folder, logs, scores)."""
    kind: str
    model: Any
    tokenizer: Any
    examples: list[dict]
    """This stage's examples: its sources in full plus replayed subsets (SFT chats, preference pairs, RL prompts)."""
    folder: Path
    """The stage's folder (`<run>/stages/<i>-<name>`): checkpoints, metrics.jsonl, stage.json."""
    run_dir: Path
    eval_sets: dict[str, list[dict]] = field(default_factory=dict)
    """Held-out examples per source (for the eval loss)."""
    db_path: Path | None = None
    """Results database for scores (a study's); default `<run_dir>/../results.sqlite`."""
    resume: bool = False
    stop_at_step: int | None = None
    """Stop before this optimizer step without finishing (tests simulate a kill with it)."""
    optimizer_state: dict | None = None
    """AdamW moments carried from the previous stage (train.fresh_optimizer: false)."""
    token_cache: dict = field(default_factory=dict)
    """(source, id) -> tokenised example, shared by the stages of one run."""
    log: Callable[[str], None] = print


@dataclass
class StageResult:
    """What a finished (or interrupted) stage reports. `metrics` holds kind-specific numbers (e.g. reward accuracy,
    DPO margins, mean RL reward) that go into stage.json and the results database."""

    name: str
    kind: str
    steps: int
    finished: bool
    n_examples: int = 0
    n_tokens: int = 0
    train_loss: float | None = None
    eval_loss: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0
    tokens_per_s: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    dropped: dict[str, list[str]] = field(default_factory=dict)
    """reason -> ids of drawn examples the stage could not train on (e.g. no target token left after truncation)."""
    optimizer_state: dict | None = field(default=None, repr=False)

    def record(self) -> dict:
        """The JSON-able summary (without the optimizer state)."""
        return {k: v for k, v in self.__dict__.items() if k != "optimizer_state"}


def stage_runner(kind: str) -> Callable[[StageContext], StageResult]:
    """The `run_stage` function of a stage kind; an unknown kind lists the valid ones."""
    if kind not in STAGE_KINDS:
        raise ValueError(f"unknown stage kind {kind!r}; valid: {', '.join(STAGE_KINDS)}")
    module, name = STAGE_KINDS[kind].split(":")
    return getattr(importlib.import_module(module), name)


def evaluate_abilities(ctx: StageContext, step: int | None = None) -> dict[str, dict]:
    """Score the model on every benchmark of the recipe, now: after the stage (`step` None, `eval.limit` examples) or
    mid-stage (`step`, `eval.subset` examples). Outputs go to `<run>/eval/<stage>[/step-N]/`, scores to the results
    database. {} when the recipe names no benchmarks."""
    if not ctx.recipe.eval.benchmarks:
        return {}
    from mixtune.evaluate.runner import evaluate_model

    subset = ctx.recipe.eval.subset if step is not None else None
    return evaluate_model(ctx.model, ctx.tokenizer, ctx.recipe, ctx.run_dir, stage=ctx.name, step=step,
                          subset=subset, db_path=ctx.db_path, log=ctx.log)
