"""`mixtune train -c recipe.yaml [--resume]`: SFT with a strategy (one stage or several).

The sources are drawn once (data/mixture.py); the strategy compiles to stages (train/strategies.py); each stage
starts from the previous stage's weights with a fresh optimizer and schedule unless `train.fresh_optimizer` is false,
and the recipe's benchmarks run after every stage, so forgetting is recorded stage by stage. A finished stage is
never redone: `--resume` loads its saved weights and continues with the next (or mid-stage from a checkpoint).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mixtune.cliutil import recipe_parser
from mixtune.config import Recipe, load_recipe
from mixtune.data.mixture import add_token_counts, draw_mixture, manifest_summary
from mixtune.data.sft_dataset import build_sft_rows
from mixtune.model.adapters import apply_adapter
from mixtune.model.load import count_parameters, load_model_and_tokenizer
from mixtune.runs import atomic_write_json, prepare_run_dir
from mixtune.train import engine
from mixtune.train.save import save_final
from mixtune.train.sft import sft_stage
from mixtune.train.strategies import Stage, plan_stages, stage_examples

STAGE_WEIGHTS = "stage_weights.safetensors"
STAGE_OPTIMIZER = "stage_optimizer.pt"  # only with train.fresh_optimizer: false


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


def make_evaluator(recipe: Recipe, tokenizer, run_dir: Path, db_path: Path | None = None):
    """The after-stage (and every-N-steps) ability evaluation, or None when the recipe names no benchmarks."""
    if not recipe.eval.benchmarks:
        return None
    from mixtune.evaluate.runner import evaluate_model

    def evaluate(model, stage: str, step: int | None = None) -> dict:
        subset = recipe.eval.subset if step is not None else None
        return evaluate_model(model, tokenizer, recipe, run_dir, stage=stage, step=step, subset=subset,
                              db_path=db_path)

    return evaluate


def prefix_key(recipe: Recipe, stages: list[Stage], index: int) -> str:
    """Identity of a run's state after stage `index`: base model, the sources those stages draw from, optimisation
    and what each stage trains (not its name). Runs of a study with the same key train it once: mixed sequential's
    and every DMT(k)'s first stage; a single-ability run and sequential's stage on that ability."""
    tree = recipe.model_dump(mode="json")
    used = {name for s in stages[:index + 1] for name in (*s.sources, *(n for n, _ in s.replay))}
    what = {k: tree[k] for k in ("model", "train", "adapter", "tokenizer")}
    what["data"] = {**tree["data"], "sources": [s for s in tree["data"]["sources"] if s["name"] in used]}
    what["world"] = recipe.world.out_dir
    what["eval"] = [recipe.eval.benchmarks, recipe.eval.limit, recipe.eval.max_new_tokens]
    what["stages"] = [[sorted(s.sources), sorted(s.replay)] for s in stages[:index + 1]]
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def _restore_cached(model, cached: Path, folder: Path, recipe: Recipe, stage: Stage, db_path: Path | None) -> dict:
    record = {**json.loads((cached / "stage.json").read_text()), "name": stage.name}
    load_stage_weights(model, cached)
    for name in (STAGE_WEIGHTS, STAGE_OPTIMIZER):
        if (cached / name).exists():
            shutil.copy2(cached / name, folder / name)
    atomic_write_json(folder / "stage.json", {**record, "reused_from": str(cached)})
    if db_path and record.get("scores"):
        from mixtune.evaluate.registry import ABILITY_OF
        from mixtune.study.db import ResultsDB

        with ResultsDB(db_path) as db:
            for bench, summary in record["scores"].items():
                metrics = {k: v for k, v in summary.items() if k not in ("benchmark", "ability", "backend", "template")}
                db.add_scores(recipe.run_dir.name, stage.name, bench, ABILITY_OF.get(bench, ""), metrics)
    return record


def train(recipe: Recipe, resume: bool = False, stop_at_step: int | None = None, log=print,
          stage_cache: Path | None = None, db_path: Path | None = None) -> dict:
    """Run every stage of the recipe's strategy; returns a summary with per-stage results and scores.

    `stage_cache`: a folder shared by the runs of a study; a stage whose prefix key is there is loaded, not trained.
    `db_path`: results database for stage records (scores go where the evaluator writes them).
    """
    engine.setup_torch(recipe.train)
    run_dir = prepare_run_dir(recipe, verb="train")
    model, tokenizer = load_model_and_tokenizer(recipe.model, tokenizer_path=recipe.tokenizer.out_dir,
                                                seed=recipe.train.seed)
    model = apply_adapter(model, recipe.adapter).to(engine.pick_device())
    trainable, total = count_parameters(model)
    log(f"train {recipe.name}: {total / 1e6:.2f}M params, {trainable / 1e6:.3f}M trainable "
        f"(adapter {recipe.adapter.type}), strategy {recipe.strategy.name}")
    mixture = draw_mixture(recipe.data.sources, recipe.world.out_dir, seed=recipe.data.shuffle_seed, log=log)
    pools = group_by_source(mixture.train)
    # token counts of the drawn data, per source (the stages tokenise their own example lists again)
    token_cache: dict = {}  # each drawn example is tokenised once per run, whatever the stages
    drawn = build_sft_rows(mixture.train, tokenizer, recipe.data, token_cache)
    add_token_counts(mixture.manifest, drawn.summary()["per_source"])
    stages = plan_stages(recipe.strategy, recipe.data.sources)
    atomic_write_json(run_dir / "manifest.json", {"sources": mixture.manifest,
                                                  "stages": [s.key() for s in stages]})
    evaluate = make_evaluator(recipe, tokenizer, run_dir, db_path)
    full = recipe.adapter.type == "none"
    summary = {"run_dir": str(run_dir), "stages": [], "scores": {}}
    optimizer_state = None  # carried between stages only when train.fresh_optimizer is false
    for i, stage in enumerate(stages):
        folder = stage_dir(run_dir, i, stage)
        folder.mkdir(parents=True, exist_ok=True)
        cached = stage_cache / prefix_key(recipe, stages, i) if stage_cache else None
        with _cache_lock(cached):
            if resume and (done := finished_stage(folder)):
                load_stage_weights(model, folder)
                optimizer_state = _load_optimizer(folder)
                log(f"stage {i} {stage.name}: already finished, weights loaded")
                record = done
            elif cached and finished_stage(cached):
                record = _restore_cached(model, cached, folder, recipe, stage, db_path)
                optimizer_state = _load_optimizer(cached)
                log(f"stage {i} {stage.name}: reused from {cached}")
            else:
                record, optimizer_state = _train_stage(model, tokenizer, recipe, stage, pools, mixture, folder,
                                                       resume, evaluate, stop_at_step, optimizer_state,
                                                       token_cache)
                if record is None:
                    return {**summary, "stopped": True}
                save_stage_weights(model, folder, full)
                if optimizer_state is not None:
                    torch.save(optimizer_state, folder / STAGE_OPTIMIZER)
                atomic_write_json(folder / "stage.json", record)
                if cached:
                    _publish(folder, cached)
        _record_stage(db_path, recipe, i, record)
        summary["stages"].append(record)
        summary["scores"][stage.name] = record.get("scores", {})
    atomic_write_json(run_dir / "mixture.json", manifest_summary(mixture.manifest))
    save_final(model, tokenizer, run_dir / "final", adapter=recipe.adapter.type, base=recipe.model.path)
    atomic_write_json(run_dir / "summary.json", summary)
    log(f"train done: final model in {run_dir / 'final'}")
    return summary


def _load_optimizer(folder: Path) -> dict | None:
    path = folder / STAGE_OPTIMIZER
    return torch.load(path, weights_only=True) if path.exists() else None


def _train_stage(model, tokenizer, recipe, stage, pools, mixture, folder, resume, evaluate, stop_at_step,
                 optimizer_state, token_cache):
    """Train one stage; returns (record, optimizer state for the next stage) or (None, None) when interrupted."""
    examples, stage_manifest = stage_examples(stage, pools, recipe.data.shuffle_seed)
    atomic_write_json(folder / "manifest.json", stage_manifest)
    t0 = time.perf_counter()
    result = sft_stage(model, tokenizer, recipe, examples, folder, eval_examples=mixture.eval, stage=stage.name,
                       resume=resume, evaluate=evaluate, stop_at_step=stop_at_step, optimizer_state=optimizer_state,
                       token_cache=token_cache)
    if not result.finished:
        return None, None
    scores = evaluate(model, stage.name) if evaluate else {}
    return {**result.record(), "wall_s": time.perf_counter() - t0, "scores": scores}, result.optimizer_state


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
    tmp = cached.with_name(f".tmp-{cached.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in (STAGE_WEIGHTS, "stage.json", "manifest.json", STAGE_OPTIMIZER):
        if (folder / name).exists():
            shutil.copy2(folder / name, tmp / name)
    shutil.rmtree(cached, ignore_errors=True)
    os.replace(tmp, cached)


def _record_stage(db_path: Path | None, recipe: Recipe, index: int, record: dict) -> None:
    if not db_path:
        return
    from mixtune.study.db import ResultsDB

    with ResultsDB(db_path) as db:
        db.add_stage(recipe.run_dir.name, index, record["name"], n_examples=record.get("n_examples"),
                     n_tokens=record.get("n_tokens"), steps=record.get("steps"), wall_s=record.get("wall_s"))


def main(argv: list[str]) -> int:
    parser = recipe_parser("train", __doc__.split("\n")[0],
                           sections=["model", "data", "train", "adapter", "strategy", "eval"])
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run")
    args = parser.parse_args(argv)
    train(load_recipe(args.config, args.overrides), resume=args.resume)
    return 0
