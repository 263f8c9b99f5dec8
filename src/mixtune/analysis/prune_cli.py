"""`mixtune analyze prune -c recipe.yaml [key.sub=value ...]`:
abilities vs sparsity for each pruning method, with an optional recovery SFT.

The model `model.path` is scored dense, then each method of `prune.methods` at each of `prune.sparsities` is applied
to a fresh copy (calibration: `prune.calibration` chats drawn from `data.sources`), saved as a normal HF checkpoint
(`<out>/<method>-s<sparsity>/model`) and scored on `eval.benchmarks`. With `prune.recovery_steps`, the checkpoint is
SFT'd on `data.sources` for that many steps by `train.run.train` (recovery runs in `<out>/recovery/`; the dense model
gets the same SFT, the control) and scored again; unstructured masks are re-applied after the recovery SFT, which
updates every weight, so the recovered model keeps its sparsity exactly.

Writes `<out>/results.sqlite` (one run per method × sparsity: `strategy` = method, `fraction` = sparsity, stages
`pruned` / `recovered`; metrics linear_sparsity, params, checkpoint_mb), `<out>/prune.png` and `<out>/prune.json`.
Resumable: a finished (method, sparsity) is read back, not redone.
"""

from __future__ import annotations

import copy
import json
import random
import shutil
import sys
import time
from pathlib import Path

from mixtune.config import Recipe, RecipeError, validate
from mixtune.results import DB_NAME, END_OF_STAGE, ResultsDB
from mixtune.runs import RunLock, atomic_write_json, prepare_run_dir

UNSTRUCTURED = ("magnitude_layer", "magnitude_global", "wanda")


def calibration_batches(recipe: Recipe, tokenizer, log=print) -> list[dict]:
    """`prune.calibration` chats drawn (seeded) from the recipe's sources, packed into micro-batches of ≤ 8."""
    from mixtune.data.mixture import draw_mixture
    from mixtune.data.sft_dataset import batches_for_step, build_sft_rows

    pool = draw_mixture(recipe.data.sources, recipe.world.out_dir, seed=recipe.seed, log=log).train
    picked = random.Random(f"{recipe.seed}:calibration").sample(pool, min(recipe.prune.calibration, len(pool)))
    rows = build_sft_rows(picked, tokenizer, recipe.data)
    chunks = max(1, -(-len(rows) // 8))
    return batches_for_step(rows, list(range(len(rows))), chunks, recipe.data.max_seq_len, tokenizer.pad_token_id)


def prune_copy(model, method: str, sparsity: float, batches: list[dict]):
    """(a pruned deep copy of `model`, its unstructured keep masks or None, the achieved sparsity: the share of
    weights zeroed, or of heads / channels removed)."""
    from mixtune.analysis.prune import linear_sparsity, prune_unstructured
    from mixtune.analysis.prune_structured import prune_structured

    pruned = copy.deepcopy(model)
    if method in UNSTRUCTURED:
        masks = prune_unstructured(pruned, method, sparsity, batches)
        return pruned, masks, linear_sparsity(pruned)
    info = prune_structured(pruned, method, sparsity, batches)
    return pruned, None, 1.0 - info["units_after"] / info["units_before"]


def model_stats(model, folder: Path | None) -> dict[str, float]:
    from mixtune.analysis.prune import linear_sparsity
    from mixtune.model.load import count_parameters

    size = sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 2**20 if folder else 0.0
    return {"linear_sparsity": linear_sparsity(model), "params": float(count_parameters(model)[1]),
            "checkpoint_mb": size}


def recovery_recipe(recipe: Recipe, checkpoint: Path, label: str) -> Recipe:
    """The recovery SFT: the recipe's data and optimisation, from `checkpoint`, `prune.recovery_steps` steps, no
    benchmarks (the analysis scores the result itself, after re-applying the masks)."""
    tree = recipe.model_dump(mode="json")
    tree.update(name=label, out_dir=str(recipe.run_dir / "recovery" / label),
                model={**tree["model"], "path": str(checkpoint), "tokenizer": None},
                strategy={"name": "stages", "stages": [{"name": "recovered",
                                                        "sources": [s.name for s in recipe.data.sources]}]})
    tree["train"] = {**tree["train"], "max_steps": recipe.prune.recovery_steps, "step_budget": None}
    tree["eval"] = {**tree["eval"], "benchmarks": []}
    return validate(Recipe, tree, f"prune recovery {label}")


def _score(model, tokenizer, recipe: Recipe, label: str, stage: str, db: Path, log) -> dict[str, float]:
    from mixtune.evaluate.runner import evaluate_model

    results = evaluate_model(model, tokenizer, recipe, recipe.run_dir / label, stage=stage, db_path=db, log=log)
    return {name: float(r[r["primary_metric"]]) for name, r in results.items()}


def one_point(dense, tokenizer, recipe: Recipe, method: str, sparsity: float, batches, db: Path, log) -> None:
    """Prune, save, score; then recover, re-mask, score. Writes the run's rows into the results database."""
    from mixtune.model.load import load_checkpoint
    from mixtune.train.run import train
    from mixtune.train.save import save_final

    label = "dense" if method == "dense" else f"{method}-s{sparsity:g}"
    t0 = time.perf_counter()
    model, masks, achieved = ((copy.deepcopy(dense), None, 0.0) if method == "dense"
                              else prune_copy(dense, method, sparsity, batches))
    folder = save_final(model, tokenizer, recipe.run_dir / label / "model", adapter="none", base=None)
    stats = {**model_stats(model, folder), "achieved_sparsity": achieved, "prune_s": time.perf_counter() - t0}
    with ResultsDB(db) as rdb:
        rdb.upsert_run(label, study=recipe.name, strategy=method, fraction=sparsity, seed=recipe.seed,
                       setup="prune", status="running", config_json=recipe.model_dump(mode="json"))
        rdb.add_metrics(label, "pruned", END_OF_STAGE, stats)
    scores = _score(model, tokenizer, recipe, label, "pruned", db, log)
    cfg = recipe.prune
    if cfg.recovery_steps and (not cfg.recovery_sparsities or sparsity in cfg.recovery_sparsities or
                               method == "dense"):
        summary = train(recovery_recipe(recipe, folder, label), db_path=db, log=log)
        recovered = load_checkpoint(Path(summary["run_dir"]) / "final")
        if masks is not None:
            from mixtune.analysis.prune import apply_masks

            apply_masks(recovered, masks)
        with ResultsDB(db) as rdb:
            rdb.add_metrics(label, "recovered", END_OF_STAGE, model_stats(recovered, None))
        scores.update({f"{k} recovered": v for k, v in
                       _score(recovered, tokenizer, recipe, label, "recovered", db, log).items()})
    if cfg.save_models == "none":
        shutil.rmtree(recipe.run_dir / label / "model", ignore_errors=True)
    with ResultsDB(db) as rdb:
        rdb.set_status(label, "finished")
    log(f"[prune] {label}: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()) +
        f" (linear sparsity {stats['linear_sparsity']:.3f}, {stats['params'] / 1e6:.2f}M params)")


def collect(db: Path, study: str) -> dict:
    """{method: {sparsity: {stage: {benchmark: primary score}}}} and per-run metrics, read from the database."""
    from mixtune.evaluate.registry import task_class

    table: dict = {}
    with ResultsDB(db) as rdb:
        runs = {r["run_id"]: r for r in rdb.runs(study) if r["status"] == "finished"}
        primary = {}
        for row in rdb.rows(study):
            if row["run_id"] not in runs or row["step"] != END_OF_STAGE:
                continue
            bench = row["benchmark"]
            primary.setdefault(bench, task_class(bench).primary_metric)
            if row["metric"] == primary[bench]:
                cell = table.setdefault(row["strategy"], {}).setdefault(row["fraction"], {})
                cell.setdefault(row["stage"], {})[bench] = row["value"]
        stats = {rid: {m["name"]: m["value"] for m in rdb.metrics(rid) if m["stage"] == "pruned"} for rid in runs}
    return {"scores": table, "stats": stats}


def plot(result: dict, out_path: Path) -> Path:
    """One panel per benchmark: score vs achieved sparsity, a line per method (dashed: after recovery), the dense
    model as dotted references."""
    from mixtune.analysis.curves import curves_png

    panels: dict[str, dict] = {}
    references: dict[str, dict] = {}
    for method, by_sparsity in result["scores"].items():
        for requested, stages in by_sparsity.items():
            label_of = "dense" if method == "dense" else f"{method}-s{requested:g}"
            sparsity = result["stats"].get(label_of, {}).get("achieved_sparsity", requested)
            for stage, scores in stages.items():
                for bench, value in scores.items():
                    if method == "dense":
                        references.setdefault(bench, {})[f"dense ({stage})"] = value
                        continue
                    label = method + (" + recovery" if stage == "recovered" else "")
                    panels.setdefault(bench, {}).setdefault(label, []).append((sparsity, value))
    dense = result["scores"].get("dense", {}).get(0.0, {}).get("pruned", {})
    for bench, series in panels.items():  # every pruned curve starts at the dense model (sparsity 0)
        for label, points in series.items():
            if "recovery" not in label and bench in dense:
                points.append((0.0, dense[bench]))
    return curves_png(panels, out_path, xlabel="sparsity (weights or units removed)", dashed=("recovery",),
                      references=references)


def run_prune(recipe: Recipe, log=print) -> dict:
    """The whole analysis (see the module docstring); returns the collected table."""
    from mixtune.model.load import load_model_and_tokenizer
    from mixtune.train import engine

    if not recipe.model.path:
        raise RecipeError("prune: model.path is not set; give the trained model to prune (a run's final/ folder)")
    if not recipe.eval.benchmarks:
        raise RecipeError("prune: eval.benchmarks is empty; name the abilities to measure (e.g. [minilab_math])")
    engine.setup_torch(recipe.train)
    with RunLock(recipe.run_dir, what="analysis"):
        prepare_run_dir(recipe, verb="analyze prune")
        db = recipe.run_dir / DB_NAME
        dense, tokenizer = load_model_and_tokenizer(recipe.model, tokenizer_path=recipe.tokenizer.out_dir)
        dense.eval()
        batches = calibration_batches(recipe, tokenizer, log)
        with ResultsDB(db) as rdb:
            done = rdb.finished_runs(recipe.name)
        points = [("dense", 0.0)] + [(m, s) for m in recipe.prune.methods for s in recipe.prune.sparsities]
        t0 = time.perf_counter()
        for method, sparsity in points:
            label = "dense" if method == "dense" else f"{method}-s{sparsity:g}"
            if label in done:
                log(f"[prune] {label}: finished earlier, read back")
                continue
            one_point(dense, tokenizer, recipe, method, sparsity, batches, db, log)
        result = collect(db, recipe.name)
        result["wall_s_last_invocation"] = round(time.perf_counter() - t0, 1)
        atomic_write_json(recipe.run_dir / "prune.json", result)
        log(f"[prune] plot: {plot(result, recipe.run_dir / 'prune.png')}")
    return result


def main(argv: list[str]) -> int:
    from mixtune.cliutil import parse_recipe, recipe_parser

    parser = recipe_parser("analyze prune", __doc__.split("\n")[0], sections=["prune", "model", "data", "eval"])
    try:
        _, recipe = parse_recipe(parser, argv)
        result = run_prune(recipe)
    except RecipeError as e:
        print(f"mixtune analyze prune: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result["scores"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
