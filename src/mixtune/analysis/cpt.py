"""`mixtune analyze cpt -c recipes/analysis/cpt.yaml`: continued pre-training on a new domain from three starts of
one WSD base (MiniCPM, Hu et al. 2024; METHODS §9).

1. The base: a WSD pre-training of the recipe's model on the world's corpus, keeping the checkpoint at the end of
   the stable phase (step (1 − decay_ratio)·T, lr still at its peak) and the decayed one at step T.
2. The new domain: biographies of `new_people` people who are not in the world (the same draw, continued), each
   read `new_exposures` times (templates and order re-drawn), plus `replay_fraction` of the documents drawn from the
   first half of the world's corpus (its tail holds the base's eval rows); `heldout_exposures` more biographies per
   new person, never trained, are the new-domain eval. The old domain is the world's corpus.
3. Three continued pre-trainings of `steps` steps on the new domain, each ending with a 1-sqrt decay over
   `decay_ratio` of its steps: (a) `stable`: from the stable-phase checkpoint, no warm-up; (b) `decayed-rewarm`:
   from the decayed checkpoint with a linear re-warm-up over `warmup_ratio` of the steps; (c) `decayed`: from the
   decayed checkpoint, straight back to the peak lr. Each starts from its checkpoint's AdamW moments
   (`carry_optimizer`; false: weights only, a fresh optimizer). The new-domain loss (the held-out biographies) and
   the old-domain loss (rows the base held out) are measured every `eval_every` steps and at the start.
4. Abilities: biography completion (`minilab_facts`) of new and old people right after each CPT; then the same
   small SFT (`sft_recipe`, train/run.py) on each, scored on its benchmarks, plus new-people facts.

Writes into the run folder: `base/` (pretrain run), `new-domain/{corpus,heldout}.jsonl` and `world.json`, `cpt/<start>/`,
`sft/sft-<start>/`, `results.sqlite`, `summary.json`, `report/cpt.png`, `report/index.html`. Results rows: run
`cpt/<start>` (strategy "cpt", setup = start) with `metrics` at its last step: start_step, new_loss_start,
new_loss_end, old_loss_start, old_loss_end, old_loss_peak and new_loss_peak (the highest loss in the first quarter
of the steps), old_spike (peak − start), facts_new, facts_old (exact match, before SFT), wall_s; curves
`eval_new` / `eval_old` (stage and name, one row per eval step, step = steps since the start); the SFT runs' scores
go to `scores` under run id `sft-<start>` (`sft-base`: the base without CPT), as `mixtune train` writes them, plus
the new people's facts (stage `facts-new`).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from mixtune.analysis.report import AnalysisError, analysis_main, record_run, run_parallel, worker_threads
from mixtune.config import Recipe, load_recipe
from mixtune.jsonl import read_jsonl
from mixtune.results import DB_NAME, ResultsDB
from mixtune.runs import atomic_write_json, prepare_run_dir, write_jsonl
from mixtune.world import people

STARTS = ("stable", "decayed-rewarm", "decayed")


def sub_recipe(recipe: Recipe, out_dir: Path, corpus: list[str] | None = None, **train: object) -> Recipe:
    """A pretrain recipe of this analysis: its model and tokenizer, its own folder, schedule and corpus."""
    model = recipe.model.model_copy(update={"path": None,
                                            "tokenizer": recipe.model.tokenizer or recipe.tokenizer.out_dir})
    update = {"name": out_dir.name, "out_dir": str(out_dir), "model": model,
              "train": recipe.train.model_copy(update=train)}
    if corpus is not None:
        update["pretrain_corpus"] = corpus
    return recipe.model_copy(update=update)


def base_steps(recipe: Recipe) -> tuple[int, int]:
    """(stable-phase checkpoint step, final step) of the base: the decay starts at T − round(decay_ratio·T)."""
    if not recipe.train.max_steps or recipe.train.schedule != "wsd":
        raise AnalysisError("analysis cpt: the base needs train.schedule: wsd and train.max_steps")
    total = recipe.train.max_steps
    return total - max(1, round(recipe.train.decay_ratio * total)), total


def write_new_domain(recipe: Recipe, folder: Path) -> tuple[Path, Path, Path]:
    """The continued pre-training corpus (new people's biographies + replayed old documents), the held-out new
    biographies, and a `world.json` listing the new people; returns (corpus, held-out, the folder: a world folder
    `minilab_facts` reads)."""
    from mixtune.train.pretrain import read_corpus

    cpt, world = recipe.analysis.cpt, recipe.world
    newcomers = people.make_people(world.n_people + cpt.new_people, world.seed)[world.n_people:]
    rng = random.Random(f"new-domain/{world.seed}")
    docs = [people.biography(p, rng) for _ in range(cpt.new_exposures) for p in newcomers]
    heldout = [people.biography(p, rng) for _ in range(cpt.heldout_exposures) for p in newcomers]
    n_replay = round(len(docs) * cpt.replay_fraction / (1 - cpt.replay_fraction))
    if n_replay:
        old = read_corpus([Path(p) for p in old_corpus(recipe)])
        pool = old[: len(old) // 2]  # the base held out the corpus's last rows: replay never touches them
        if n_replay > len(pool):
            raise AnalysisError(f"analysis.cpt.replay_fraction {cpt.replay_fraction} needs {n_replay} old documents; "
                                f"the first half of the old corpus has {len(pool)}")
        docs += random.Random(f"replay/{world.seed}").sample(pool, n_replay)
    rng.shuffle(docs)
    rng.shuffle(heldout)
    corpus = write_jsonl(folder / "corpus.jsonl", ({"text": d} for d in docs))
    held = write_jsonl(folder / "heldout.jsonl", ({"text": d} for d in heldout))
    atomic_write_json(folder / "world.json", {"people": [p.to_dict() for p in newcomers]})
    return corpus, held, folder


def old_corpus(recipe: Recipe) -> list[str]:
    return list(recipe.pretrain_corpus) or [str(Path(recipe.world.out_dir) / "corpus" / "pretrain.jsonl")]


def start_recipe(recipe: Recipe, start: str, folder: Path, corpus: Path) -> Recipe:
    """The continued pre-training of one start: `steps` on the new corpus, warm-up only for (b), decay at the end."""
    cpt = recipe.analysis.cpt
    warmup = cpt.warmup_ratio if start == "decayed-rewarm" else 0.0
    return sub_recipe(recipe, folder, [str(corpus)], schedule="wsd", max_steps=cpt.steps, warmup_ratio=warmup,
                      decay_ratio=cpt.decay_ratio, eval_every=cpt.eval_every, eval_batches=cpt.eval_batches,
                      save_every=0, threads=worker_threads(min(cpt.workers, len(STARTS))))


def facts(model, tokenizer, recipe: Recipe, world_dir: Path, folder: Path, stage: str,
          db_path: Path | None = None) -> float:
    """Biography completion exact match of the people in `world_dir`/world.json (first `eval.limit`)."""
    from mixtune.evaluate.runner import evaluate_model

    ev = recipe.eval.model_copy(update={"benchmarks": ["minilab_facts"], "world_dir": str(world_dir)})
    scored = recipe.model_copy(update={"eval": ev})
    result = evaluate_model(model, tokenizer, scored, folder, stage=stage, out_dir=folder / "eval" / stage,
                            db_path=db_path or folder / "facts.sqlite", log=None)
    return float(result["minilab_facts"]["exact_match"])


def continue_one(recipe: Recipe, start: str, checkpoint: str, corpus: str, heldout: str, new_world: str,
                 out: str) -> dict:
    """Worker: one continued pre-training, its curves and its facts (before SFT)."""
    from mixtune.model.load import load_checkpoint, load_tokenizer
    from mixtune.train.pretrain import pretrain

    folder, cpt = Path(out) / "cpt" / start, recipe.analysis.cpt
    done = folder / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    t0 = time.perf_counter()
    check_old_rows_held_out(recipe)
    sub = start_recipe(recipe, start, folder, Path(corpus))
    if not cpt.carry_optimizer:  # weights only: the model is built from the checkpoint folder (its config.json)
        sub = sub.model_copy(update={"model": sub.model.model_copy(update={"path": checkpoint})})
    summary = pretrain(sub, resume=True, branch_from=checkpoint if cpt.carry_optimizer else None,
                       eval_corpora={"new": [Path(heldout)], "old": [Path(p) for p in old_corpus(recipe)]})
    model, tokenizer = load_checkpoint(folder / "final"), load_tokenizer(folder / "final")
    record = {"start": start, "checkpoint": checkpoint, **curves(folder, summary["start_step"], cpt.steps),
              "facts_new": facts(model, tokenizer, recipe, Path(new_world), folder, "facts-new"),
              "facts_old": facts(model, tokenizer, recipe, Path(recipe.world.out_dir), folder, "facts-old"),
              "wall_s": time.perf_counter() - t0}
    atomic_write_json(done, record)
    return record


def check_old_rows_held_out(recipe: Recipe) -> None:
    """The old-domain eval reads the corpus's last `cpt.eval_batches × batch_size` rows: they must be rows the base
    held out (pretrain's rule), or the old-domain loss would be measured on trained rows."""
    from mixtune.model.load import load_tokenizer
    from mixtune.train.pretrain import read_corpus, split_eval, tokenize_rows

    tokenizer = load_tokenizer(recipe.model.tokenizer or recipe.tokenizer.out_dir)
    rows = tokenize_rows(read_corpus([Path(p) for p in old_corpus(recipe)]), tokenizer, recipe.train.seq_len)
    held, wanted = len(split_eval(rows, recipe.train)[1]), recipe.analysis.cpt.eval_batches * recipe.train.batch_size
    if wanted > held:
        raise AnalysisError(f"analysis.cpt.eval_batches x train.batch_size = {wanted} old-domain eval rows, but the "
                            f"base held out only the last {held}; lower analysis.cpt.eval_batches")


def curves(folder: Path, start_step: int, steps: int) -> dict:
    """The eval curves of a CPT run (steps since its start) and their summary numbers."""
    rows = [r for r in read_jsonl(folder / "metrics.jsonl") if "eval_loss_new" in r]
    new = sorted({r["step"] - start_step: r["eval_loss_new"] for r in rows}.items())
    old = sorted({r["step"] - start_step: r["eval_loss_old"] for r in rows}.items())
    early = max(1, steps // 4)
    return {"start_step": start_step, "curve_new": new, "curve_old": old,
            "new_loss_start": new[0][1], "new_loss_end": new[-1][1], "old_loss_start": old[0][1],
            "old_loss_end": old[-1][1], "new_loss_peak": max(v for s, v in new if s <= early),
            "old_loss_peak": max(v for s, v in old if s <= early),
            "old_spike": max(v for s, v in old if s <= early) - old[0][1]}


def sft_one(recipe: Recipe, start: str, model_path: str, new_world: str, out: str) -> dict:
    """Worker: the analysis's SFT recipe on one CPT model (or the base), then new-people facts."""
    from mixtune.model.load import load_checkpoint, load_tokenizer
    from mixtune.train.run import train

    folder = Path(out) / "sft" / f"sft-{start}"  # the folder name is the run id of its scores
    done = folder / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    t0 = time.perf_counter()
    sft = load_recipe(recipe.analysis.cpt.sft_recipe)
    sft = sft.model_copy(update={
        "name": folder.name, "out_dir": str(folder), "world": recipe.world, "tokenizer": recipe.tokenizer,
        "model": sft.model.model_copy(update={"path": model_path, "tokenizer": None}),
        "train": sft.train.model_copy(update={"threads": worker_threads(recipe.analysis.cpt.workers)})})
    summary = train(sft, resume=True, db_path=Path(out) / DB_NAME)
    scores = {b: s[s["primary_metric"]] for b, s in summary["stages"][-1]["scores"].items()}
    model, tokenizer = load_checkpoint(folder / "final"), load_tokenizer(folder / "final")
    scores["minilab_facts_new"] = facts(model, tokenizer, sft, Path(new_world), folder, "facts-new",
                                        db_path=Path(out) / DB_NAME)
    record = {"start": start, "scores": scores, "wall_s": time.perf_counter() - t0}
    atomic_write_json(done, record)
    return record


def run_cpt(recipe: Recipe, log=print) -> dict:
    """Base → new domain → three continued pre-trainings → SFT of each → results rows, plot and page."""
    from mixtune.analysis.cpt_report import write_cpt_report
    from mixtune.study.base import prepare_corpus
    from mixtune.train.pretrain import pretrain

    cpt = recipe.analysis.cpt
    stable, total = base_steps(recipe)
    if cpt.eval_batches > recipe.train.eval_batches:
        raise AnalysisError(f"analysis.cpt.eval_batches ({cpt.eval_batches}) must not exceed train.eval_batches "
                            f"({recipe.train.eval_batches}): the old-domain rows must be rows the base held out")
    t0 = time.perf_counter()
    out = prepare_run_dir(recipe, verb="analyze cpt")
    if not recipe.pretrain_corpus:
        prepare_corpus(recipe, log)
    base_dir = out / "base"
    ckpt = {s: base_dir / "checkpoints" / f"step-{s:07d}" for s in (stable, total)}
    if not all((c / "trainer_state.pt").exists() for c in ckpt.values()):
        import math

        log(f"[cpt] base: {total} WSD steps, stable-phase checkpoint at {stable}")
        pretrain(sub_recipe(recipe, base_dir, save_every=math.gcd(stable, total), keep_checkpoints=0), resume=True)
    corpus, heldout, new_world = write_new_domain(recipe, out / "new-domain")
    starts = {"stable": ckpt[stable], "decayed-rewarm": ckpt[total], "decayed": ckpt[total]}
    jobs = [(s, continue_one, (recipe, s, str(c), str(corpus), str(heldout), str(new_world), str(out)),
             out / "cpt" / s / "log.txt") for s, c in starts.items()]
    log(f"[cpt] {len(jobs)} continued pre-trainings of {cpt.steps} steps on {cpt.new_people} new people")
    runs = run_parallel(jobs, cpt.workers, log)
    sft: dict[str, dict] = {}
    if cpt.sft_recipe:
        models = {s: str(out / "cpt" / s / "final") for s in STARTS}
        if cpt.sft_base:
            models["base"] = str(base_dir / "final")
        jobs = [(s, sft_one, (recipe, s, m, str(new_world), str(out)), out / "sft" / f"sft-{s}" / "log.txt")
                for s, m in models.items()]
        sft = run_parallel(jobs, cpt.workers, log)
    with ResultsDB(out / DB_NAME) as db:
        for s, r in runs.items():
            scalars = {k: v for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            record_run(db, "cpt", s, "cpt", scalars, cpt.steps, config={"checkpoint": r["checkpoint"]},
                       curves={"eval_new": r["curve_new"], "eval_old": r["curve_old"]})
    summary = {"base": {"stable_step": stable, "final_step": total}, "cpt": runs, "sft": sft,
               "wall_s_this_invocation": round(time.perf_counter() - t0, 1)}
    atomic_write_json(out / "summary.json", summary)
    write_cpt_report(out, summary, recipe)
    log(f"[cpt] report: {out / 'report' / 'index.html'}")
    return summary


def main(argv: list[str]) -> int:
    """`mixtune analyze cpt -c recipe.yaml [key.sub=value ...]`."""
    return analysis_main("cpt", "continued pre-training from a stable vs a decayed checkpoint", run_cpt, argv)
