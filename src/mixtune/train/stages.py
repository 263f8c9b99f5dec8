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

from mixtune.config import Recipe, RecipeError

STAGE_KINDS: dict[str, str] = {
    "sft": "mixtune.train.sft:run_stage",
    "reward": "mixtune.train.reward:run_stage",
    "dpo": "mixtune.train.dpo:run_stage",
    "spin": "mixtune.train.spin:run_stage",
    "self_reward": "mixtune.train.self_reward:run_stage",
    "rlaif": "mixtune.train.rlaif:run_stage",
    "distill": "mixtune.train.distill:run_stage",
    "grpo": "mixtune.train.grpo:run_stage",
    "ppo": "mixtune.train.ppo:run_stage",
}
"""kind -> "module:function" taking a StageContext and returning a StageResult (imported when a stage runs)."""

STAGE_DATA: dict[str, str] = {"sft": "chats", "reward": "pairs", "dpo": "pairs", "spin": "chats",
                              "self_reward": "prompts", "rlaif": "pairs", "distill": "chats", "grpo": "chats",
                              "ppo": "chats"}
"""kind -> the records its sources must hold: `chats` (conversations ending with an answer), `pairs` (preference
pairs: prompt turns + chosen / rejected) or `prompts` (anything with a prompt: chats, whose answer is not used, or
pairs, whose answers are not used). Checked before the run folder exists. RL stages take chats: the reward reads the
answer (GSM8K's number, the code task's canonical solution for CCCS)."""

ITERATED = ("spin", "self_reward")
"""Kinds whose every iteration is a DPO stage with the iteration's start model as its reference."""

ONE_PROCESS = ("spin", "self_reward", "rlaif", "grpo", "ppo")
"""Kinds that run in one process: they generate from the model being trained (samples, rollouts, labels), which is
not sharded across ranks; under torchrun / accelerate launch a recipe with one of them is refused before any
training. The other kinds shard each step's examples over the ranks (train/distributed.py)."""


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
    tensorboard_dir: Path | None = None
    """The run's TensorBoard folder (with train.tensorboard; `engine.metrics_log` writes there)."""
    step_offset: int = 0
    """Optimizer steps of the run's earlier stages: TensorBoard's x axis goes on across stages."""


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
    model: Any = field(default=None, repr=False)
    """The stage's output model when it is not the object it was given (a reward stage returns a new
    sequence-classification model); the run adopts it for the following stages and the final save."""

    def record(self) -> dict:
        """The JSON-able summary (without the optimizer state and the model)."""
        return {k: v for k, v in self.__dict__.items() if k not in ("optimizer_state", "model")}


def stage_runner(kind: str) -> Callable[[StageContext], StageResult]:
    """The `run_stage` function of a stage kind; an unknown kind lists the valid ones."""
    if kind not in STAGE_KINDS:
        raise ValueError(f"unknown stage kind {kind!r}; valid: {', '.join(STAGE_KINDS)}")
    module, name = STAGE_KINDS[kind].split(":")
    return getattr(importlib.import_module(module), name)


def output_model(kind: str, model: Any, recipe: Recipe, tokenizer: Any) -> Any:
    """The model object a finished stage of `kind` leaves, before its saved weights are loaded into it (resume and
    study caches): a new one built by the kind's `output_model(model, recipe, tokenizer)` when the kind changes the
    model's class (reward), else `model` itself."""
    module = importlib.import_module(STAGE_KINDS[kind].split(":")[0])
    build = getattr(module, "output_model", None)
    return build(model, recipe, tokenizer) if build else model


def check_stage(name: str, kind: str, recipe: Recipe, sources: dict[str, list[dict]]) -> None:
    """What can be checked before a stage runs: its sources hold the records its kind trains on (`STAGE_DATA`;
    kinds not listed take any), and its adapter suits it. A RecipeError names the stage, the source and the fix."""
    from mixtune.data.preference import is_pair

    want = STAGE_DATA.get(kind)
    for source, examples in sources.items():
        pairs = sum(is_pair(ex) for ex in examples)
        if want == "pairs" and pairs < len(examples):
            raise RecipeError(f"stage {name} ({kind}) needs preference pairs, but source {source} has "
                              f"{len(examples) - pairs} records without chosen/rejected; give it a preference file")
        if want == "chats" and pairs:
            raise RecipeError(f"stage {name} ({kind}) trains conversations, but source {source} holds {pairs} "
                              f"preference pairs; train it in a preference stage (strategy.then: [{{kind: dpo, "
                              f"sources: [{source}]}}])")
    check_stage_recipe(name, kind, recipe)


def check_stage_recipe(name: str, kind: str, recipe: Recipe) -> None:
    """The checks of `check_stage` that need the recipe only (a study makes them for every run before it starts):
    the teacher, the adapter the kind trains, the reference, the labeller."""
    want = STAGE_DATA.get(kind)
    adapter = recipe.adapter.type
    if kind == "distill":
        check_teacher_path(recipe, name)
    if kind in ("reward", "rlaif") and adapter not in ("none", "lora"):
        raise RecipeError(f"stage {name} ({kind}): a reward model trains with adapter none or lora, not {adapter}")
    if kind in ITERATED and recipe.preference.reference != "start":
        raise RecipeError(f"stage {name} ({kind}): the reference of iteration t is the model as it starts (θ_t); "
                          f"set preference.reference start")
    pref = recipe.preference
    if kind == "rlaif" and not (pref.labeller or pref.labeller_url):
        raise RecipeError(f"stage {name} (rlaif): no AI labeller; set preference.labeller (a local model or run "
                          f"folder) or preference.labeller_url + labeller_model (an OpenAI-compatible endpoint)")
    if want == "pairs" and recipe.preference.reference == "base" and adapter not in ("lora", "prefix", "prompt"):
        raise RecipeError(f"stage {name}: preference.reference base disables a peft adapter (lora, prefix, prompt); "
                          f"adapter {adapter} has none to disable: use reference start")


def check_teacher_path(recipe: Recipe, stage: str) -> str:
    """`distill.teacher` if it is set and a folder (checked before the run folder exists), else a RecipeError."""
    path = recipe.distill.teacher
    if not path:
        raise RecipeError(f"stage {stage} (distill): distill.teacher is not set; give the teacher's checkpoint "
                          f"folder, e.g. distill.teacher=runs/distill-teacher/final")
    if not Path(path).is_dir():
        raise RecipeError(f"stage {stage} (distill): distill.teacher {path} is not a folder; train the teacher "
                          f"first (e.g. mixtune train -c recipes/distill-teacher.yaml)")
    return path


def generates(model: Any) -> bool:
    """Whether the model generates text (ability benchmarks need that; a reward model does not)."""
    from mixtune.model.adapters import unwrap_base

    return bool(unwrap_base(model).can_generate())


def evaluate_abilities(ctx: StageContext, step: int | None = None) -> dict[str, dict]:
    """Score the model on every benchmark of the recipe, now: after the stage (`step` None, `eval.limit` examples) or
    mid-stage (`step`, `eval.subset` examples). Outputs go to `<run>/eval/<stage>[/step-N]/`, scores to the results
    database. {} when the recipe names no benchmarks. Under several processes rank 0 evaluates (on a whole copy of
    the model under FSDP) while the others wait; they get {}."""
    if not ctx.recipe.eval.benchmarks:
        return {}
    from mixtune.evaluate.runner import evaluate_model
    from mixtune.train.distributed import dist_setup

    subset = ctx.recipe.eval.subset if step is not None else None
    with dist_setup().main_model(ctx.model) as model:
        if model is None:
            return {}
        return evaluate_model(model, ctx.tokenizer, ctx.recipe, ctx.run_dir, stage=ctx.name, step=step,
                              subset=subset, db_path=ctx.db_path, log=ctx.log)
