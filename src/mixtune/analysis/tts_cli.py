"""`mixtune analyze tts -c recipe.yaml [key.sub=value ...]`:
test-time scaling of the policy `model.path` on the mini-lab math and code benchmarks.

1. samples (`analysis/tts_data.py`): `tts.n_max` per test problem, `tts.train_samples` per training question/task,
   each marked correct by the benchmark's scorer;
2. reward models from the training samples: a PRM (`analysis/prm.py`, step labels by recomputation, initialised
   from the policy) and an ORM (the `reward` stage of `train/reward.py` through `train.run.train`, on best-vs-worst
   outcome pairs of the same samples), unless `tts.prm` / `tts.orm` name trained ones;
3. every test sample scored by both; accuracy at N = 1, 2, 4, ..., n_max for self-consistency (majority vote of
   GSM8K-extracted answers), best-of-N by the ORM, best-of-N by the PRM (min and/or product of step scores; both
   among the samples that give an answer), the PRM-weighted vote, and the oracle pass@N; on code, pass@k from the
   sandboxed tests vs best-of-N by the ORM. Each reward model's AUROC (right vs wrong samples) goes with them.

Writes `<out>/results.sqlite` (one run per curve, `strategy` = selection rule; scores at `step` = N, metric
`accuracy`; the reward models' numbers in `metrics`), `<out>/tts.png` and `<out>/tts.json`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from mixtune.analysis import tts
from mixtune.config import Recipe, RecipeError, TrainConfig, validate
from mixtune.results import DB_NAME, END_OF_STAGE, ResultsDB
from mixtune.runs import RunLock, atomic_write_json, prepare_run_dir, write_jsonl


def train_orm(recipe: Recipe, rows: list[dict], log=print) -> tuple[Path, dict[str, float]]:
    """Train the ORM with the `reward` stage on outcome pairs of `rows`; returns (its final/ folder, counts)."""
    from mixtune.analysis.tts_data import orm_pairs
    from mixtune.train.run import train

    pairs, ties = orm_pairs(rows)
    if not pairs:
        raise RecipeError("tts: no outcome pair for the ORM (every prompt's samples are all right or all wrong); "
                          "raise tts.train_samples or tts.temperature")
    folder = recipe.run_dir / "orm"
    write_jsonl(folder / "pairs.jsonl", pairs)
    tree = recipe.model_dump(mode="json")
    tree.update(name="orm", out_dir=str(folder / "run"),
                strategy={"name": "stages", "stages": [{"name": "orm", "kind": "reward", "sources": ["pairs"]}]})
    tree["data"] = {**tree["data"], "sources": [{"name": "pairs", "path": str(folder / "pairs.jsonl"),
                                                 "format": "pairs", "ability": "preference"}]}
    tree["train"] = {**tree["train"], "lr": recipe.tts.orm_lr, "max_steps": None, "step_budget": None}
    # a tenth of the pairs held out: the stage reports the ORM's held-out pair accuracy
    tree["preference"] = {**tree["preference"], "reward_epochs": recipe.tts.orm_epochs, "eval_fraction": 0.1}
    tree["eval"] = {**tree["eval"], "benchmarks": []}
    summary = train(validate(Recipe, tree, "tts orm"), log=log)
    stage_metrics = {f"orm/{k}": float(v) for k, v in summary["stages"][0].get("metrics", {}).items()
                     if isinstance(v, (int, float))}
    return Path(summary["run_dir"]) / "final", {"orm/pairs": float(len(pairs)), "orm/ties": float(ties),
                                                **stage_metrics}


def train_prm_model(policy, tokenizer, recipe: Recipe, rows: list[dict], log=print):
    """A PRM initialised from the policy, trained on the step labels of the math training samples and saved."""
    from mixtune.analysis.prm import prm_from_causal, train_prm
    from mixtune.analysis.tts_data import prm_solutions

    cfg = recipe.tts
    prm = prm_from_causal(policy, tokenizer.pad_token_id, seed=recipe.seed)
    train_cfg = TrainConfig(**{**recipe.train.model_dump(), "lr": cfg.prm_lr, "schedule": "cosine",
                               "max_steps": None, "step_budget": None})
    solutions = prm_solutions(rows, cfg.prm_labels)
    stats = train_prm(prm, tokenizer, solutions, train_cfg, epochs=cfg.prm_epochs, template=recipe.data.template,
                      max_len=recipe.data.max_seq_len, log=log)
    stats["prm/wrong_step_share"] = sum(not x for s in solutions for x in s["labels"]) / max(
        sum(len(s["labels"]) for s in solutions), 1)
    prm.save_pretrained(recipe.run_dir / "prm")
    tokenizer.save_pretrained(recipe.run_dir / "prm")
    return prm, stats


def math_curves(rows: list[dict], orm: list[list[float]], prm: dict[str, list[list[float]]], ns: list[int]) -> dict:
    """label -> [(N, accuracy)] on math: self-consistency, ORM / PRM best-of-N, the oracle pass@N."""
    from mixtune.evaluate.code import pass_at_k

    correct, completions = [r["correct"] for r in rows], [r["answers"] for r in rows]
    weighted = prm.get("min") or next(iter(prm.values()))
    picks = {"self-consistency": tts.pick_by_vote(completions),
             "best-of-N ORM": tts.pick_by_scores(orm, completions),
             **{f"best-of-N PRM ({how})": tts.pick_by_scores(scores, completions) for how, scores in prm.items()},
             f"PRM-weighted vote ({'min' if 'min' in prm else next(iter(prm))})":
                 tts.pick_by_weighted_vote(completions, weighted)}
    curves = {label: [(n, tts.selection_accuracy(correct, pick, n)) for n in ns] for label, pick in picks.items()}
    curves["oracle pass@N"] = [(n, sum(pass_at_k(len(c), sum(c), n) for c in correct) / len(correct)) for n in ns]
    return curves


def code_curves(rows: list[dict], orm: list[list[float]], ns: list[int]) -> dict:
    """label -> [(N, pass rate)] on code: pass@k from the tests, best-of-N by the ORM."""
    from mixtune.evaluate.code import pass_at_k

    correct, pick = [r["correct"] for r in rows], tts.pick_by_scores(orm)
    return {"pass@k (tests)": [(n, sum(pass_at_k(len(c), sum(c), n) for c in correct) / len(correct)) for n in ns],
            "best-of-N ORM": [(n, tts.selection_accuracy(correct, pick, n)) for n in ns]}


def orm_scores(orm_dir: Path, rows: list[dict], recipe: Recipe) -> list[list[float]]:
    """The ORM's reward for every sample (`evaluate/reward_model.score_texts`)."""
    from mixtune.evaluate.reward_model import score_texts
    from mixtune.model.load import load_checkpoint, load_tokenizer

    model, tok = load_checkpoint(orm_dir), load_tokenizer(orm_dir)
    convs = [[*r["prompt"], {"role": "assistant", "content": a}] for r in rows for a in r["answers"]]
    flat = iter(score_texts(model, tok, convs, recipe.data.template, batch_size=recipe.tts.batch_size))
    return [[next(flat) for _ in r["answers"]] for r in rows]


def prm_scores(prm, tokenizer, rows: list[dict], recipe: Recipe) -> tuple[dict[str, list[list[float]]], float]:
    """{aggregate: per-sample PRM scores}, and the PRM's step accuracy on these (held-out) samples."""
    from mixtune.analysis.prm import aggregate, score_solutions

    prompts = [r["prompt"] for r in rows for _ in r["answers"]]
    answers = [a for r in rows for a in r["answers"]]
    steps = score_solutions(prm, tokenizer, prompts, answers, template=recipe.data.template,
                            batch_size=recipe.tts.batch_size, max_len=recipe.data.max_seq_len)
    golds = [r["gold"] for r in rows for _ in r["answers"]]
    pairs = [(p > 0.5, lab) for s, a, g in zip(steps, answers, golds)
             for p, lab in zip(s, tts.step_labels(a, g, recipe.tts.prm_labels))]
    accuracy = sum(x == y for x, y in pairs) / max(len(pairs), 1)
    out = {}
    for how in recipe.tts.prm_aggregates:
        flat = iter(aggregate(s, how) for s in steps)
        out[how] = [[next(flat) for _ in r["answers"]] for r in rows]
    return out, accuracy


def ranking_quality(samples: dict, scores: dict, out: Path) -> dict[str, float]:
    """AUROC of every reward model on the test samples (right vs wrong answers, all problems pooled, and the mean of
    each problem's own AUROC: the ranking best-of-N uses); the per-sample scores are kept in `<out>/scores_<benchmark>.jsonl` for further analysis."""
    metrics = {}
    for bench, by_model in scores.items():
        rows = samples["test_math" if bench == "minilab_math" else "test_code"]
        correct = [c for r in rows for c in r["correct"]]
        for name, per_row in by_model.items():
            metrics[f"{name}/test_auroc_{bench}"] = tts.auroc([x for row in per_row for x in row], correct)
            metrics[f"{name}/test_auroc_within_{bench}"] = tts.within_problem_auroc(per_row, [r["correct"] for r in rows])
        write_jsonl(out / f"scores_{bench}.jsonl", [
            {"id": r["id"], "correct": r["correct"], **{name: per_row[i] for name, per_row in by_model.items()}}
            for i, r in enumerate(rows)])
    return metrics


def record(db: Path, recipe: Recipe, curves: dict[str, dict], metrics: dict[str, float]) -> None:
    """One run per (benchmark, curve): scores at step = N; the reward models' numbers as metrics of run `tts`."""
    with ResultsDB(db) as rdb:
        for bench, by_label in curves.items():
            ability = "math" if bench == "minilab_math" else "code"
            for label, points in by_label.items():
                run_id = f"{bench}:{label}"
                rdb.upsert_run(run_id, study=recipe.name, strategy=label, seed=recipe.seed, setup="tts",
                               status="finished")
                for n, value in points:
                    rdb.add_scores(run_id, "tts", bench, ability, {"accuracy": value}, step=n)
        rdb.upsert_run("tts", study=recipe.name, strategy="reward models", setup="tts", status="finished")
        rdb.add_metrics("tts", "tts", END_OF_STAGE, metrics)


def collect_samples(policy, tokenizer, recipe: Recipe, log=print) -> dict[str, list[dict]]:
    """{test_math, test_code, train_math, train_code: rows with answers and correct} (cached in <out>/samples)."""
    from mixtune.analysis.tts_data import sampled, test_items, train_items
    from mixtune.evaluate.generate import HFBackend

    cfg = recipe.tts
    backend = HFBackend(policy, tokenizer, recipe.data.template, batch_size=cfg.batch_size, progress=False)
    samples = {}
    for split, groups in (("test", test_items(recipe)), ("train", train_items(recipe))):
        for ability, items in groups.items():
            n, name = (cfg.n_max if split == "test" else cfg.train_samples), f"{split}_{ability}"
            seed = recipe.seed if split == "test" else recipe.seed + 1  # the two splits never share a batch seed
            samples[name] = sampled(backend, recipe, recipe.run_dir / "samples", name, items, n, seed, ability, log)
    return samples


def reward_models(policy, tokenizer, recipe: Recipe, samples: dict, log=print) -> tuple[object, Path, dict]:
    """(the PRM, the ORM's folder, their training numbers): trained here unless tts.prm / tts.orm name them."""
    cfg, metrics = recipe.tts, {}
    if cfg.prm:
        from transformers import AutoModelForTokenClassification

        prm = AutoModelForTokenClassification.from_pretrained(cfg.prm, local_files_only=True)
    else:
        prm, stats = train_prm_model(policy, tokenizer, recipe, samples["train_math"], log)
        metrics.update(stats)
    if cfg.orm:
        return prm, Path(cfg.orm), metrics
    orm_dir, stats = train_orm(recipe, [r for k, v in samples.items() if k.startswith("train") for r in v], log)
    return prm, orm_dir, {**metrics, **stats}


def run_tts(recipe: Recipe, log=print) -> dict:
    """The whole analysis (see the module docstring); returns {curves, metrics, n}."""
    from mixtune.analysis.curves import curves_png
    from mixtune.model.load import load_model_and_tokenizer
    from mixtune.train import engine

    if not recipe.model.path:
        raise RecipeError("tts: model.path is not set; give the policy to sample from (a run's final/ folder)")
    t0 = time.perf_counter()
    engine.setup_torch(recipe.train)
    with RunLock(recipe.run_dir, what="analysis"):
        out = prepare_run_dir(recipe, verb="analyze tts")
        policy, tokenizer = load_model_and_tokenizer(recipe.model, tokenizer_path=recipe.tokenizer.out_dir)
        samples = collect_samples(policy, tokenizer, recipe, log)
        metrics: dict[str, float] = {"tts/sampling_s": time.perf_counter() - t0}
        prm, orm_dir, stats = reward_models(policy, tokenizer, recipe, samples, log)
        metrics.update(stats)
        ns = tts.powers_of_two(recipe.tts.n_max)
        prm_math, metrics["prm/test_step_accuracy"] = prm_scores(prm, tokenizer, samples["test_math"], recipe)
        scores = {"minilab_math": {"orm": orm_scores(orm_dir, samples["test_math"], recipe),
                                   **{f"prm_{k}": v for k, v in prm_math.items()}}}
        curves = {"minilab_math": math_curves(samples["test_math"], scores["minilab_math"]["orm"], prm_math, ns)}
        if "test_code" in samples:
            scores["minilab_code"] = {"orm": orm_scores(orm_dir, samples["test_code"], recipe)}
            curves["minilab_code"] = code_curves(samples["test_code"], scores["minilab_code"]["orm"], ns)
        metrics.update(ranking_quality(samples, scores, out))
        metrics["tts/wall_s"] = time.perf_counter() - t0
        record(out / DB_NAME, recipe, curves, metrics)
        result = {"curves": curves, "metrics": metrics, "n": ns}
        atomic_write_json(out / "tts.json", result)
        curves_png(curves, out / "tts.png", xlabel="N samples per problem", ylabel="accuracy", log2_x=True,
                   dashed=("oracle", "pass@k"))
        log(f"[tts] done in {metrics['tts/wall_s']:.0f} s: " + "; ".join(
            f"{bench} {label} @{ns[-1]}: {points[-1][1]:.3f}" for bench, c in curves.items()
            for label, points in c.items()))
    return result


def main(argv: list[str]) -> int:
    from mixtune.cliutil import parse_recipe, recipe_parser

    parser = recipe_parser("analyze tts", __doc__.split("\n")[0], sections=["tts", "model", "data", "train"])
    try:
        _, recipe = parse_recipe(parser, argv)
        run_tts(recipe)
    except RecipeError as e:
        print(f"mixtune analyze tts: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
