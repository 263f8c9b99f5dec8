"""`mixtune train -c recipe.yaml [--resume]`: SFT with a strategy (one stage or several).

The sources are drawn once (data/mixture.py); the strategy compiles to stages (train/strategies.py); each stage
starts from the previous stage's weights with a fresh optimizer and schedule unless `train.fresh_optimizer` is false,
and the recipe's benchmarks run after every stage, so forgetting is recorded stage by stage. A finished stage is
never redone: `--resume` loads its saved weights and continues with the next (or mid-stage from a checkpoint).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from safetensors.torch import load_file, save_file

from mixtune.cliutil import recipe_parser
from mixtune.config import Recipe, load_recipe
from mixtune.data.mixture import draw_mixture, manifest_summary
from mixtune.model.adapters import apply_adapter
from mixtune.model.load import count_parameters, load_model_and_tokenizer
from mixtune.runs import atomic_write_json, prepare_run_dir
from mixtune.train import engine
from mixtune.train.save import save_final
from mixtune.train.sft import sft_stage
from mixtune.train.strategies import Stage, plan_stages, stage_examples

STAGE_WEIGHTS = "stage_weights.safetensors"


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


def save_stage_weights(model, folder: Path, full: bool) -> None:
    tmp = folder / f".{STAGE_WEIGHTS}.tmp"
    save_file(engine.trainable_state_dict(model, full), str(tmp))
    tmp.replace(folder / STAGE_WEIGHTS)


def load_stage_weights(model, folder: Path) -> None:
    model.load_state_dict(load_file(str(folder / STAGE_WEIGHTS)), strict=False)


def make_evaluator(recipe: Recipe, tokenizer, run_dir: Path):
    """The after-stage (and every-N-steps) ability evaluation, or None when the recipe names no benchmarks."""
    if not recipe.eval.benchmarks:
        return None
    from mixtune.evaluate.runner import evaluate_model

    def evaluate(model, stage: str, step: int | None = None) -> dict:
        subset = recipe.eval.subset if step is not None else None
        return evaluate_model(model, tokenizer, recipe, run_dir, stage=stage, step=step, subset=subset)

    return evaluate


def train(recipe: Recipe, resume: bool = False, stop_at_step: int | None = None, log=print) -> dict:
    """Run every stage of the recipe's strategy; returns a summary with per-stage results and scores."""
    engine.setup_torch(recipe.train)
    run_dir = prepare_run_dir(recipe, verb="train")
    model, tokenizer = load_model_and_tokenizer(recipe.model, tokenizer_path=recipe.tokenizer.out_dir,
                                                seed=recipe.train.seed)
    model = apply_adapter(model, recipe.adapter)
    trainable, total = count_parameters(model)
    log(f"train {recipe.name}: {total / 1e6:.2f}M params, {trainable / 1e6:.3f}M trainable "
        f"(adapter {recipe.adapter.type}), strategy {recipe.strategy.name}")
    mixture = draw_mixture(recipe.data.sources, recipe.world.out_dir, seed=recipe.data.shuffle_seed, log=log)
    pools = group_by_source(mixture.train)
    stages = plan_stages(recipe.strategy, recipe.data.sources)
    atomic_write_json(run_dir / "manifest.json", {"sources": mixture.manifest,
                                                  "stages": [s.key() for s in stages]})
    evaluate = make_evaluator(recipe, tokenizer, run_dir)
    full = recipe.adapter.type == "none"
    summary = {"run_dir": str(run_dir), "stages": [], "scores": {}}
    for i, stage in enumerate(stages):
        folder = stage_dir(run_dir, i, stage)
        folder.mkdir(parents=True, exist_ok=True)
        if resume and (done := finished_stage(folder)):
            load_stage_weights(model, folder)
            log(f"stage {i} {stage.name}: already finished, weights loaded")
            summary["stages"].append(done)
            summary["scores"][stage.name] = done.get("scores", {})
            continue
        examples, stage_manifest = stage_examples(stage, pools, recipe.data.shuffle_seed)
        atomic_write_json(folder / "manifest.json", stage_manifest)
        t0 = time.perf_counter()
        result = sft_stage(model, tokenizer, recipe, examples, folder, eval_examples=mixture.eval, stage=stage.name,
                           resume=resume, evaluate=evaluate, stop_at_step=stop_at_step)
        if not result.finished:
            return {**summary, "stopped": True}
        save_stage_weights(model, folder, full)
        scores = evaluate(model, stage.name) if evaluate else {}
        record = {**result.__dict__, "wall_s": time.perf_counter() - t0, "scores": scores}
        atomic_write_json(folder / "stage.json", record)
        summary["stages"].append(record)
        summary["scores"][stage.name] = scores
    mixture.manifest = {k: {**v} for k, v in mixture.manifest.items()}
    atomic_write_json(run_dir / "mixture.json", manifest_summary(mixture.manifest))
    save_final(model, tokenizer, run_dir / "final", adapter=recipe.adapter.type, base=recipe.model.path)
    atomic_write_json(run_dir / "summary.json", summary)
    log(f"train done: final model in {run_dir / 'final'}")
    return summary


def main(argv: list[str]) -> int:
    parser = recipe_parser("train", __doc__.split("\n")[0],
                           sections=["model", "data", "train", "adapter", "strategy", "eval"])
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run")
    args = parser.parse_args(argv)
    train(load_recipe(args.config, args.overrides), resume=args.resume)
    return 0
