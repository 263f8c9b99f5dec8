"""Iterated DPO, the bookkeeping SPIN (`train/spin.py`) and self-rewarding (`train/self_reward.py`) share: one
folder per iteration, the pairs generated once and saved, a DPO stage per iteration through `train/dpo.run_stage`
(reference = the model as the iteration starts, θ_t / M_t: DPO's reference cache from its start model), the model
at the end of each iteration saved, and a resume that continues at the iteration and step a kill stopped at.

    <stage>/iter-<t>/pairs.jsonl         the iteration's generated pairs (pair records), written once: a resume
                                         trains on the same pairs and never samples them again
    <stage>/iter-<t>/generation.json     what making them counted (prompts, pairs, skipped, judge statistics)
    <stage>/iter-<t>/checkpoints/        the DPO loop's checkpoints (removed once the iteration is finished)
    <stage>/iter-<t>/metrics.jsonl, stage.json    the iteration's DPO stage (stage.json: it finished)
    <stage>/iter-<t>/weights.safetensors  θ_{t+1}: the trainable weights at the end of the iteration

A resume loads the weights of the last finished iteration (θ_t of the next one) before the next iteration's DPO stage
takes its reference, then that stage resumes from its own checkpoints. `ctx.stop_at_step` counts the optimizer steps
of the whole stage, over its iterations (tests kill a run in its second iteration with it).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from safetensors.torch import load_file

from mixtune.config import Recipe
from mixtune.jsonl import read_jsonl
from mixtune.runs import atomic_write_json, write_jsonl
from mixtune.train import engine
from mixtune.train.stages import StageContext, StageResult

PAIRS = "pairs.jsonl"
GENERATION = "generation.json"
WEIGHTS = "weights.safetensors"


def iteration_dir(ctx: StageContext, t: int) -> Path:
    return ctx.folder / f"iter-{t}"


def finished(ctx: StageContext, t: int) -> dict | None:
    """The iteration's DPO stage record when iteration t finished (stage.json and its end weights saved)."""
    folder = iteration_dir(ctx, t)
    done = folder / "stage.json"  # the DPO stage writes it when stopped too: `finished` says which
    if not (done.exists() and (folder / WEIGHTS).exists()):
        return None
    record = json.loads(done.read_text())
    return record if record.get("finished") else None


def resume_point(ctx: StageContext, iterations: int) -> int:
    """The first iteration left to train. On resume, the model gets the end weights of the last finished iteration
    (the start model of the next one); without a resume (or with nothing finished) 0 and the model as it is."""
    if not ctx.resume:
        return 0
    done = 0
    while done < iterations and finished(ctx, done):
        done += 1
    if done:
        engine.dist_setup().load_model_state(ctx.model, load_file(str(iteration_dir(ctx, done - 1) / WEIGHTS)))
        ctx.log(f"stage {ctx.name}: iterations 0..{done - 1} finished, resuming at iteration {done}")
    return done


def iteration_pairs(ctx: StageContext, t: int, make: Callable[[int], tuple[list[dict], dict]]
                    ) -> tuple[list[dict], dict]:
    """(pairs, counts) of iteration t: read from its folder when saved, else `make(t)` and saved (atomically)."""
    folder = iteration_dir(ctx, t)
    if (folder / PAIRS).exists() and (folder / GENERATION).exists():
        ctx.log(f"stage {ctx.name}: iteration {t} pairs read from {folder / PAIRS} (not sampled again)")
        return read_jsonl(folder / PAIRS, what="generated pairs"), json.loads((folder / GENERATION).read_text())
    pairs, counts = make(t)
    if engine.dist_setup().is_main:
        folder.mkdir(parents=True, exist_ok=True)
        write_jsonl(folder / PAIRS, pairs)
        atomic_write_json(folder / GENERATION, counts)  # written last: pairs.jsonl is complete when this exists
    return pairs, counts


def generation(ctx: StageContext, t: int) -> dict:
    """What making iteration t's pairs counted (its generation.json)."""
    return json.loads((iteration_dir(ctx, t) / GENERATION).read_text())


def saved_pairs(ctx: StageContext, t: int) -> list[dict]:
    """The saved pairs of an earlier iteration (the data mix of SPIN reads iteration t−1's)."""
    return read_jsonl(iteration_dir(ctx, t) / PAIRS, what="generated pairs")


def steps_before(ctx: StageContext, t: int) -> int:
    """Optimizer steps of the finished iterations before t."""
    return sum(int((finished(ctx, i) or {}).get("steps") or 0) for i in range(t))


def iteration_recipe(recipe: Recipe, t: int, iterations: int) -> Recipe:
    """The recipe of iteration t's DPO stage: `train.max_steps` (a step budget's share for the whole stage) split
    evenly over the iterations, each at least 1 step."""
    cfg = recipe.train
    if not cfg.max_steps:
        return recipe
    share = max(1, cfg.max_steps // iterations + (t < cfg.max_steps % iterations))
    return recipe.model_copy(update={"train": cfg.model_copy(update={"max_steps": share})})


def train_iteration(ctx: StageContext, t: int, iterations: int, pairs: list[dict],
                    optimizer_state: dict | None) -> StageResult:
    """Iteration t's DPO stage on `pairs` (reference: the model as it is now, θ_t), in its own folder; when it
    finishes, its end weights are saved and its checkpoints removed."""
    from mixtune.train import dpo

    folder = iteration_dir(ctx, t)
    folder.mkdir(parents=True, exist_ok=True)
    stop = None if ctx.stop_at_step is None else ctx.stop_at_step - steps_before(ctx, t)
    sub = replace(ctx, recipe=iteration_recipe(ctx.recipe, t, iterations), name=f"{ctx.name}-iter{t}", kind="dpo",
                  examples=pairs, folder=folder, eval_sets={}, stop_at_step=stop, optimizer_state=optimizer_state)
    result = dpo.run_stage(sub)
    if result.finished:
        engine.save_weights(ctx.model, folder / WEIGHTS, full=ctx.recipe.adapter.type == "none")
        if engine.dist_setup().is_main:
            shutil.rmtree(folder / engine.CHECKPOINTS, ignore_errors=True)  # θ_{t+1} is saved whole above
    return result


def skip_iteration(ctx: StageContext, t: int, reason: str) -> None:
    """Finish iteration t without training (no pair to train on): its end weights are its start weights."""
    ctx.log(f"stage {ctx.name}: iteration {t} trains nothing ({reason}); the model goes on unchanged")
    folder = iteration_dir(ctx, t)
    engine.save_weights(ctx.model, folder / WEIGHTS, full=ctx.recipe.adapter.type == "none")
    record = StageResult(f"{ctx.name}-iter{t}", "dpo", 0, True, metrics={"skipped": 1.0}).record()
    if engine.dist_setup().is_main:
        atomic_write_json(folder / "stage.json", {**record, "skipped": reason})


def write_stage_metrics(ctx: StageContext, iterations: int) -> None:
    """The stage's own metrics.jsonl: every finished iteration's rows with steps continuing across iterations
    (loss curves), plus one row per iteration with its generation counts. Rebuilt from the iteration folders."""
    rows, offset = [], 0
    for t in range(iterations):
        record = finished(ctx, t)
        if record is None:
            break
        path = iteration_dir(ctx, t) / "metrics.jsonl"
        part = read_jsonl(path, what="metrics") if path.exists() else []
        rows += [{**row, "step": int(row.get("step", 0)) + offset, "iteration": t} for row in part]
        offset += int(record.get("steps") or 0)
        rows.append({"step": offset, "iteration": t, **{f"iter{t}/{k}": v for k, v in generation(ctx, t).items()
                                                        if isinstance(v, (int, float))}})
    if engine.dist_setup().is_main:
        write_jsonl(ctx.folder / "metrics.jsonl", rows)


def stage_result(ctx: StageContext, iterations: int, wall_s: float, extra: dict[str, float],
                 dropped: dict[str, list[str]]) -> StageResult:
    """The whole stage's result from its finished iterations: steps, pairs and tokens summed; metrics = the last
    iteration's DPO metrics, every iteration's as `iter<t>/<name>`, its generation counts, and `extra`."""
    records = [finished(ctx, t) for t in range(iterations)]
    metrics: dict[str, float] = {}
    for t, record in enumerate(records):
        metrics.update({f"iter{t}/{k}": v for k, v in {**record["metrics"], **generation(ctx, t)}.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)})
    metrics.update(records[-1]["metrics"])
    metrics.update(extra)
    write_stage_metrics(ctx, iterations)
    result = StageResult(ctx.name, ctx.kind, sum(r["steps"] for r in records), True,
                         sum(r["n_examples"] for r in records), sum(r["n_tokens"] for r in records),
                         train_loss=records[-1].get("train_loss"), wall_s=wall_s,
                         tokens_per_s=records[-1].get("tokens_per_s") or 0.0, metrics=metrics,
                         dropped={k: v for k, v in dropped.items() if v})
    if engine.dist_setup().is_main:
        atomic_write_json(ctx.folder / "stage.json", result.record())
    return result
