"""`mixtune train -c recipe.yaml [--resume]`: a run of one or more stages (SFT, and any other stage kind).

The sources are drawn once (data/mixture.py); the strategy compiles to stages (train/strategies.py), each of a kind
from the stage registry (train/stages.py); each stage starts from the previous stage's weights with a fresh
optimizer and schedule unless `train.fresh_optimizer` is false, and the recipe's benchmarks run after every stage,
so forgetting is recorded stage by stage. A finished stage is never redone: `--resume` loads its saved weights and
continues with the next (or mid-stage from its newest loadable checkpoint).

Everything that can be checked before training is checked before the run folder is made: the stage plan and each
stage's overrides, the sequence lengths against the model's context, the tokenizer and its chat template (the one
trained with is installed on the tokenizer, so `final/` is saved with it), the judge, the data files (read and
validated), the model. One process writes a run folder at a time (`RunLock`). Under torchrun / accelerate launch
every rank runs this file and trains its share of each step (train/distributed.py); rank 0 alone holds the lock,
decides from the files what each stage does (broadcast to the others), and writes.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from mixtune.config import Recipe, apply_override, parse_override, validate
from mixtune.data.mixture import Mixture, add_token_counts, draw_mixture, manifest_summary
from mixtune.data.pair_dataset import build_pair_rows
from mixtune.data.preference import is_pair
from mixtune.data.sft_dataset import build_sft_rows
from mixtune.evaluate.runner import check_judges
from mixtune.model.adapters import apply_adapter
from mixtune.model.folders import check_context
from mixtune.model.load import count_parameters, load_model_and_tokenizer, prepare_tokenizer
from mixtune.results import ResultsDB
from mixtune.runs import (
    RunLock,
    atomic_dir,
    atomic_write_file,
    atomic_write_json,
    prepare_run_dir,
    remove_stale_temps,
)
from mixtune.train import engine, levers
from mixtune.train.distributed import DistributedError
from mixtune.train.save import save_final
from mixtune.train.stages import (
    ONE_PROCESS,
    StageContext,
    check_stage,
    evaluate_abilities,
    generates,
    output_model,
    stage_runner,
)
from mixtune.train.strategies import Stage, plan_stages, stage_examples

STAGE_WEIGHTS = "stage_weights.safetensors"
STAGE_OPTIMIZER = "stage_optimizer.pt"  # only with train.fresh_optimizer: false
STAGE_FILES = (STAGE_WEIGHTS, "stage.json", "manifest.json", "metrics.jsonl", STAGE_OPTIMIZER)
"""What a finished stage folder holds (and what the study's stage cache keeps of it)."""


def group_by_source(examples: list[dict]) -> dict[str, list[dict]]:
    pools: dict[str, list[dict]] = {}
    for ex in examples:
        pools.setdefault(ex["source"], []).append(ex)
    return pools


def stage_dir(run_dir: Path, index: int, stage: Stage) -> Path:
    return run_dir / "stages" / f"{index}-{stage.name}"


def finished_stage(folder: Path) -> dict | None:
    done = folder / "stage.json"
    return json.loads(done.read_text()) if done.exists() and (folder / STAGE_WEIGHTS).exists() else None


def load_stage_weights(model, folder: Path) -> None:
    engine.dist_setup().load_model_state(model, load_file(str(folder / STAGE_WEIGHTS)))


def stage_recipe(recipe: Recipe, stage: Stage) -> Recipe:
    """The recipe a stage trains with: the run's recipe plus the stage's own overrides (validated)."""
    if not stage.overrides:
        return recipe
    tree = recipe.model_dump(mode="json")
    for text in stage.overrides:
        keys, value = parse_override(text)
        apply_override(tree, keys, value)
    return validate(Recipe, tree, f"stage {stage.name}")


def split_budget(budget: int, sizes: list[int]) -> list[int]:
    """`budget` optimizer steps over stages in proportion to `sizes` (largest-remainder rounding: the parts sum to
    exactly `budget`, each at least 1)."""
    if budget < len(sizes):
        raise ValueError(f"train.step_budget {budget} is smaller than the number of stages ({len(sizes)})")
    sizes = sizes if any(sizes) else [1] * len(sizes)
    shares = [budget * n / sum(sizes) for n in sizes]
    steps = [max(1, int(x)) for x in shares]
    by_remainder = sorted(range(len(sizes)), key=lambda i: (-(shares[i] - int(shares[i])), i))
    for i in by_remainder[: budget - sum(steps)]:
        steps[i] += 1
    while sum(steps) > budget:  # the ≥ 1 floor overshot: take from the largest
        steps[max(range(len(steps)), key=steps.__getitem__)] -= 1
    return steps


def budget_recipes(recipe: Recipe, stages: list[Stage], recipes: list[Recipe], pools: dict[str, list]) -> list[Recipe]:
    """With `train.step_budget`: each stage's recipe gets `train.max_steps`, its share of the budget by the stage's
    distinct examples (its sources in full; replayed subsets add examples to a stage, not steps, so DMT(k) and
    mixed sequential split one budget the same way and share their first stage)."""
    if recipe.train.step_budget is None:
        return recipes
    sizes = [sum(len(pools.get(name, ())) for name in stage.sources) for stage in stages]
    steps = split_budget(recipe.train.step_budget, sizes)
    return [r.model_copy(update={"train": r.train.model_copy(update={"max_steps": n})}) for r, n in zip(recipes, steps)]


def prefix_key(recipe: Recipe, stages: list[Stage], index: int, recipes: list[Recipe] | None = None,
               steps: list[int | None] | None = None) -> str:
    """Identity of a run's state after stage `index`: base model, the sources those stages draw from, the
    optimisation of each of those stages (its own recipe: overrides and step budget share included) and what each
    stage trains (its kind, sources, replay and overrides, not its name). Runs of a study with the same key train it
    once: mixed sequential's and every DMT(k)'s first stage; a single-ability run and sequential's stage on that
    ability (under fixed epochs).

    `steps`: each SFT stage's optimizer steps (`sft_steps`). A stage is then keyed by the steps it takes, not by
    how they were asked for (train.max_steps from a step budget, or epochs): a multi-task, sequential or mixed
    sequential run under matched steps and under fixed epochs is one training, trained once."""
    tree = recipe.model_dump(mode="json")
    used = {name for s in stages[:index + 1] for name in (*s.sources, *(n for n, _ in s.replay))}
    what = {k: tree[k] for k in ("model", "adapter", "tokenizer")}
    stage_train = [r.train.model_dump(mode="json") for r in (recipes or [recipe] * len(stages))[:index + 1]]
    for train_tree, n in zip(stage_train, steps or []):
        if n is not None and train_tree["max_steps"] is None:  # epochs that come to n steps: the same as max_steps n
            train_tree["max_steps"] = n
    what["train"] = [{k: v for k, v in t.items() if k != "step_budget"} for t in stage_train]
    what["data"] = {**tree["data"], "sources": [s for s in tree["data"]["sources"] if s["name"] in used]}
    what["world"] = recipe.world.out_dir
    what["eval"] = [recipe.eval.benchmarks, recipe.eval.limit, recipe.eval.max_new_tokens]
    what["stages"] = [[sorted(s.sources), sorted(s.replay)] + ([s.kind, list(s.overrides)] if s.kind != "sft"
                                                                or s.overrides else [])
                      for s in stages[:index + 1]]
    if any(s.kind != "sft" for s in stages[:index + 1]):  # SFT-only keys stay as they were
        what["preference"] = tree["preference"]
    if any(s.kind == "distill" for s in stages[:index + 1]):  # the teacher and the loss define a distill stage
        what["distill"] = tree["distill"]
    if any(s.kind in ("ppo", "grpo") for s in stages[:index + 1]):  # the rl section trains them (SFT keys unchanged)
        what["rl"] = tree["rl"]
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def sft_steps(stages: list[Stage], recipes: list[Recipe], pools: dict[str, list], token_cache: dict,
              seed: int) -> list[int | None]:
    """The optimizer steps each SFT stage will take (engine.stage_steps on its examples that keep a target token, as
    tokenised in `token_cache`); None for the other kinds, and for a stage with an example the cache lacks."""
    world_size = engine.dist_setup().world_size
    out: list[int | None] = []
    for stage, srecipe in zip(stages, recipes):
        examples = stage_examples(stage, pools, seed)[0] if stage.kind == "sft" else []
        tokens = [token_cache.get((ex.get("source", ""), ex["id"])) for ex in examples]
        if stage.kind != "sft" or any(t is None for t in tokens):
            out.append(None)
            continue
        out.append(engine.stage_steps(srecipe.train, sum(t["n_target_tokens"] > 0 for t in tokens), world_size))
    return out


def _check_processes(stages: list[Stage]) -> None:
    alone = [f"{s.name} ({s.kind})" for s in stages if s.kind in ONE_PROCESS]
    if alone and engine.dist_setup().world_size > 1:
        raise DistributedError(f"stage {', '.join(alone)} runs in one process (it generates from the model being "
                               f"trained, which is not sharded across ranks); launch it without torchrun / "
                               f"accelerate launch, or split the recipe (docs/distributed.md)")


def prefix_keys(recipe: Recipe) -> list[str]:
    """The stage-cache key of every stage of a run, as `train` computes them (a study scheduler shares prefixes by
    them): the stage plan, each stage's recipe, with a step budget its split over the drawn data, and the steps of
    each SFT stage (which tokenises the drawn data)."""
    stages = plan_stages(recipe.strategy, recipe.data.sources)
    _check_processes(stages)
    recipes = [stage_recipe(recipe, s) for s in stages]
    mixture = draw_mixture(recipe.data.sources, recipe.world.out_dir, seed=recipe.data.shuffle_seed,
                           log=lambda _: None)
    pools = group_by_source(mixture.train)
    recipes = budget_recipes(recipe, stages, recipes, pools)
    tokenizer = prepare_tokenizer(recipe.model, recipe.data.template, recipe.tokenizer.out_dir, log=lambda _: None)
    token_cache: dict = {}
    build_sft_rows([ex for ex in mixture.train if not is_pair(ex)], tokenizer, recipe.data, token_cache)
    steps = sft_steps(stages, recipes, pools, token_cache, recipe.data.shuffle_seed)
    return [prefix_key(recipe, stages, i, recipes, steps) for i in range(len(stages))]


@dataclass
class RunPlan:
    """Everything checked before the run folder exists: stages, each stage's recipe, the drawn data, the model."""

    stages: list[Stage]
    recipes: list[Recipe]
    mixture: Mixture
    model: torch.nn.Module
    tokenizer: object


def plan_run(recipe: Recipe, log=print) -> RunPlan:
    """Check and load what the run needs, writing nothing (a bad recipe fails before the first step and before
    a run folder exists)."""
    stages = plan_stages(recipe.strategy, recipe.data.sources)
    _check_processes(stages)
    recipes = [stage_recipe(recipe, s) for s in stages]
    for r in recipes:  # cheap checks first: config.json only, no weights
        check_context(r.model, {"data.max_seq_len": r.data.max_seq_len, "data.pack_len": r.data.pack_len})
    tokenizer = prepare_tokenizer(recipe.model, recipe.data.template, recipe.tokenizer.out_dir, log=log)
    check_judges(recipe, log)
    mixture = draw_mixture(recipe.data.sources, recipe.world.out_dir, seed=recipe.data.shuffle_seed, log=log)
    pools = group_by_source(mixture.train)
    recipes = budget_recipes(recipe, stages, recipes, pools)
    for r in recipes:
        levers.check_compiler(r.train)
    for stage, srecipe in zip(stages, recipes):
        check_stage(stage.name, stage.kind, srecipe, {n: pools.get(n, []) for n in (*stage.sources,
                                                                                   *(s for s, _ in stage.replay))})
    model, tokenizer = load_model_and_tokenizer(recipe.model, tokenizer_path=recipe.tokenizer.out_dir,
                                                seed=recipe.train.seed, tokenizer=tokenizer)
    model = apply_adapter(model, recipe.adapter).to(engine.pick_device())
    return RunPlan(stages, recipes, mixture, model, tokenizer)


def train(recipe: Recipe, resume: bool = False, stop_at_step: int | None = None, log=print,
          stage_cache: Path | None = None, db_path: Path | None = None, stop_after_stage: int | None = None,
          tensorboard_dir: Path | None = None) -> dict:
    """Run every stage of the recipe's plan; returns a summary with per-stage results and scores.

    `stage_cache`: a folder shared by the runs of a study; a stage whose prefix key is there is loaded, not trained.
    `db_path`: results database for stage records and scores (a study's).
    `stop_after_stage`: return once stage i is finished (and published to the cache): a study trains a shared prefix.
    `tensorboard_dir`: the run's TensorBoard folder (default `<run>/tensorboard`; in a study
    `<study>/tensorboard/<run>`).
    """
    dist = engine.dist_setup(recipe.train)
    log = log if dist.is_main else _quiet
    if dist.world_size > 1:
        log(f"distributed: {dist.world_size} processes, {dist.mode} on {dist.device.type}")
    engine.setup_torch(recipe.train)
    plan = plan_run(recipe, log)
    with RunLock(recipe.run_dir) if dist.is_main else nullcontext():
        if dist.is_main:
            prepare_run_dir(recipe, verb="train")
            for stale in remove_stale_temps(recipe.run_dir):
                log(f"removed {stale}, left by a killed writer")
        dist.barrier()
        options = {"stage_cache": stage_cache, "db_path": db_path, "stop_after_stage": stop_after_stage,
                   "tensorboard_dir": Path(tensorboard_dir or recipe.run_dir / "tensorboard")}
        return _train(recipe, plan, recipe.run_dir, resume, stop_at_step, log, **options)


def _quiet(_line: str) -> None:
    """The log of ranks other than 0."""


def _train(recipe, plan: RunPlan, run_dir: Path, resume, stop_at_step, log, stage_cache, db_path, stop_after_stage,
           tensorboard_dir: Path) -> dict:
    model, tokenizer, mixture = plan.model, plan.tokenizer, plan.mixture
    trainable, total = count_parameters(model)
    budget = f", step budget {recipe.train.step_budget} = " + " + ".join(
        str(r.train.max_steps) for r in plan.recipes) if recipe.train.step_budget else ""
    log(f"train {recipe.name}: {total / 1e6:.2f}M params, {trainable / 1e6:.3f}M trainable "
        f"(adapter {recipe.adapter.type}), strategy {recipe.strategy.name}, "
        f"stages {' -> '.join(f'{s.name}:{s.kind}' for s in plan.stages)}{budget}")
    pools = group_by_source(mixture.train)
    token_cache: dict = {}  # each drawn example is tokenised once per run, whatever the stages
    drawn = build_sft_rows([ex for ex in mixture.train if not is_pair(ex)], tokenizer, recipe.data, token_cache)
    pairs = build_pair_rows([ex for ex in mixture.train if is_pair(ex)], tokenizer, recipe.data,
                            recipe.preference.max_prompt_len, token_cache)
    add_token_counts(mixture.manifest, {**drawn.summary()["per_source"], **pairs.per_source()},
                     {**drawn.no_target_by_source(), **pairs.dropped_by_source()})
    dist = engine.dist_setup()
    if dist.is_main:
        atomic_write_json(run_dir / "manifest.json", {"sources": mixture.manifest,
                                                      "stages": [s.key() for s in plan.stages]})
    steps = sft_steps(plan.stages, plan.recipes, pools, token_cache, recipe.data.shuffle_seed)
    full = recipe.adapter.type == "none"
    summary = {"run_dir": str(run_dir), "stages": [], "scores": {}}
    optimizer_state = None  # carried between stages only when train.fresh_optimizer is false
    offset = 0  # optimizer steps of the earlier stages (TensorBoard's x axis)
    for i, (stage, srecipe) in enumerate(zip(plan.stages, plan.recipes)):
        folder = stage_dir(run_dir, i, stage)
        folder.mkdir(parents=True, exist_ok=True)
        examples, stage_manifest = stage_examples(stage, pools, recipe.data.shuffle_seed)
        ctx = StageContext(recipe=srecipe, name=stage.name, kind=stage.kind, model=model, tokenizer=tokenizer,
                           examples=examples, folder=folder, run_dir=run_dir, eval_sets=mixture.eval,
                           db_path=db_path, resume=resume, stop_at_step=stop_at_step,
                           optimizer_state=optimizer_state, token_cache=token_cache, log=log,
                           tensorboard_dir=tensorboard_dir, step_offset=offset)
        cached = stage_cache / prefix_key(recipe, plan.stages, i, plan.recipes, steps) if stage_cache else None
        with _cache_lock(cached if dist.is_main else None):
            how = dist.broadcast("finished" if resume and finished_stage(folder) else
                                 "cached" if cached and finished_stage(cached) else "train")
            if how == "finished":
                model = ctx.model = output_model(stage.kind, model, srecipe, tokenizer)
                load_stage_weights(model, folder)
                optimizer_state = _load_optimizer(folder)
                log(f"stage {i} {stage.name}: already finished, weights loaded")
                record = finished_stage(folder)
                if cached and dist.is_main and not finished_stage(cached):  # killed before it was published
                    _publish(folder, cached)
            elif how == "cached":
                model = ctx.model = output_model(stage.kind, model, srecipe, tokenizer)
                record = _restore_cached(model, cached, folder, stage, run_dir, db_path)
                optimizer_state = _load_optimizer(cached)
                log(f"stage {i} {stage.name}: reused from {cached}")
            else:
                record, optimizer_state = _train_stage(ctx, stage_manifest)
                if record is None:
                    return {**summary, "stopped": True}
                model = ctx.model  # a stage may hand back a new model (reward: a sequence-classification model)
                _save_stage(model, folder, record, optimizer_state, full, cached)
            if how != "finished" and srecipe.train.tensorboard and dist.is_main:
                _tensorboard_scores(tensorboard_dir, offset + int(record.get("steps") or 0), record)
        if dist.is_main:
            _record_stage(db_path, run_dir, i, record)
        summary["stages"].append(record)
        summary["scores"][stage.name] = record.get("scores", {})
        offset += int(record.get("steps") or 0)
        if stop_after_stage is not None and i >= stop_after_stage:
            return {**summary, "stopped": True}
    _save_run(model, tokenizer, recipe, run_dir, mixture, summary)
    log(f"train done: final model in {run_dir / 'final'}")
    return summary


def _save_run(model, tokenizer, recipe: Recipe, run_dir: Path, mixture: Mixture, summary: dict) -> None:
    """final/, mixture.json and summary.json, by rank 0 (from a whole copy under FSDP); the other ranks wait."""
    with engine.dist_setup().main_model(model) as plain:
        if plain is not None:
            atomic_write_json(run_dir / "mixture.json", manifest_summary(mixture.manifest))
            save_final(plain, tokenizer, run_dir / "final", adapter=recipe.adapter.type, base=recipe.model.path)
            atomic_write_json(run_dir / "summary.json", summary)


def _save_stage(model, folder: Path, record: dict, optimizer_state: dict | None, full: bool,
                cached: Path | None) -> None:
    """Save a finished stage (weights, optimizer state, stage.json) and publish it to the study's cache. Every rank
    calls it (sharded tensors are gathered); rank 0 writes."""
    dist = engine.dist_setup()
    engine.save_weights(model, folder / STAGE_WEIGHTS, full)
    whole = dist.gather(optimizer_state) if optimizer_state is not None else None
    if dist.is_main:
        if whole is not None:
            atomic_write_file(folder / STAGE_OPTIMIZER, lambda tmp: torch.save(whole, tmp))
        atomic_write_json(folder / "stage.json", record)
        if cached:
            _publish(folder, cached)
    dist.barrier()


def _tensorboard_scores(folder: Path, step: int, record: dict) -> None:
    """A stage's ability scores (`score/<benchmark>/<metric>`) and kind-specific metrics (`<kind>/<name>`, or the
    name itself when it has a `/`) as TensorBoard scalars at the stage's last step of the run."""
    scalars = {f"score/{bench}/{metric}": value for bench, summary in (record.get("scores") or {}).items()
               for metric, value in summary.items()}
    scalars.update({name if "/" in name else f"{record.get('kind', 'stage')}/{name}": value
                    for name, value in (record.get("metrics") or {}).items()})
    scalars = {k: v for k, v in scalars.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
    if not scalars:
        return
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(folder)) as writer:
        for tag, value in scalars.items():
            writer.add_scalar(tag, value, step)


def _train_stage(ctx: StageContext, stage_manifest: dict) -> tuple[dict | None, dict | None]:
    """Train one stage, then score every ability (a plain call); returns (record, optimizer state for the next
    stage) or (None, None) when interrupted. The stage's manifest gets drawn and trained counts and every drop."""
    t0 = time.perf_counter()
    if engine.dist_setup().is_main:
        atomic_write_json(ctx.folder / "manifest.json", {"drawn": stage_manifest})
    result = stage_runner(ctx.kind)(ctx)
    if not result.finished:
        return None, None
    if result.model is not None:
        ctx.model = result.model
    scores = evaluate_abilities(ctx) if generates(ctx.model) else {}  # a reward model has no text to score
    if engine.dist_setup().is_main:
        atomic_write_json(ctx.folder / "manifest.json", {
            "drawn": stage_manifest, "n_drawn": len(ctx.examples), "n_trained": result.n_examples,
            "dropped": result.dropped})
    return {**result.record(), "wall_s": time.perf_counter() - t0, "scores": scores}, result.optimizer_state


def _load_optimizer(folder: Path) -> dict | None:
    path = folder / STAGE_OPTIMIZER
    return torch.load(path, weights_only=True) if path.exists() else None


def _restore_cached(model, cached: Path, folder: Path, stage: Stage, run_dir: Path, db_path: Path | None) -> dict:
    """Load a stage another run of the study trained, copy its files (manifest included: the audit trail of this
    run lists every stage it used) and record its scores under this run."""
    record = {**json.loads((cached / "stage.json").read_text()), "name": stage.name}
    load_stage_weights(model, cached)
    if not engine.dist_setup().is_main:
        return record
    for name in STAGE_FILES:
        if (cached / name).exists() and name != "stage.json":
            shutil.copy2(cached / name, folder / name)
    atomic_write_json(folder / "stage.json", {**record, "reused_from": str(cached)})
    if db_path and record.get("scores"):
        from mixtune.evaluate.registry import ABILITY_OF

        with ResultsDB(db_path) as db:
            for bench, summary in record["scores"].items():
                metrics = {k: v for k, v in summary.items() if k not in ("benchmark", "ability", "backend", "template")}
                db.add_scores(run_dir.name, stage.name, bench, ABILITY_OF.get(bench, ""), metrics)
    return record


class _cache_lock:
    """An exclusive file lock on a stage-cache entry, so two workers never train the same prefix at once."""

    def __init__(self, cached: Path | None):
        self.path = cached.with_suffix(".lock") if cached else None

    def __enter__(self):
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fh = self.path.open("w")
            fcntl.flock(self.fh, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self.path:
            fcntl.flock(self.fh, fcntl.LOCK_UN)
            self.fh.close()


def _publish(folder: Path, cached: Path) -> None:
    """Copy a finished stage into the study's stage cache (atomically: a reader sees all of it or nothing)."""
    with atomic_dir(cached) as tmp:
        for name in STAGE_FILES:
            if (folder / name).exists():
                shutil.copy2(folder / name, tmp / name)


def _record_stage(db_path: Path | None, run_dir: Path, index: int, record: dict) -> None:
    if not db_path:
        return
    with ResultsDB(db_path) as db:
        db.add_stage(run_dir.name, index, record["name"], n_examples=record.get("n_examples"),
                     n_tokens=record.get("n_tokens"), steps=record.get("steps"), wall_s=record.get("wall_s"))
        if record.get("metrics"):  # replaced, not appended: a resumed or retried run records its stages again
            db.set_metrics(run_dir.name, record["name"], int(record.get("steps") or 0), record["metrics"])
