"""`mixtune eval run -c recipe.yaml [key.sub=value ...] [--db PATH] [--stage NAME]`, and `evaluate_model`.

For each benchmark in `eval.benchmarks`: build the prompts, generate (`eval.n_samples` per prompt), score, and write
`<out>/<benchmark>/samples.jsonl` (one row per generation), `scored.jsonl` (the same rows plus the task's per-sample
scores) and `summary.json`, then the summary into the results database and a per-ability table on stdout.

Prompting: a chat prompt (the example's `messages`, rendered with the recipe's `data.template`) whenever the
generator can chat, i.e. the OpenAI backend, or a template that is not `tokenizer`, or a tokenizer with a chat
template; otherwise the example's completion-style `prompt_text`. Multi-turn tasks (MT-Bench) generate turn by turn:
each turn's answer is appended to the conversation before the next user turn.

Judged benchmarks (MT-Bench) start with one connection check of the judge (`check_judges`, also run before any
training): an unreachable judge fails in seconds with the URL and how to fix it, or, with
`eval.judge.on_unreachable: skip`, the benchmark is skipped with a warning and recorded as `status: skipped`. A
benchmark whose primary metric is NaN (no valid sample, e.g. every verdict failed) is `status: failed` in its
summary.json and the database, never a score; `mixtune eval run` then exits 1.

`evaluate_model` is what the training loop calls after each stage (and every N steps on `eval.subset` examples), so
scores across stages show forgetting. Outputs go to `<run_dir>/eval/<stage>[/step-N]/`, `eval run` writes to
`<run_dir>/eval/`. Scores go to `<run_dir>/../results.sqlite` (the study's file) under run id `<run_dir>` name.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mixtune.config import Recipe, dump_recipe
from mixtune.evaluate.base import score_samples, select_examples
from mixtune.evaluate.registry import ABILITY_OF, get_task
from mixtune.evaluate.samples import write_jsonl
from mixtune.results import DB_NAME, ResultsDB
from mixtune.runs import atomic_write_json, atomic_write_text


# ------------------------------------------------------------------------------------------------------ prompting
def can_chat(backend: Any) -> bool:
    """Whether chat prompts can be rendered: always for a server; for HF, a named template or a tokenizer one."""
    if getattr(backend, "name", "") != "hf":
        return True
    return backend.template != "tokenizer" or bool(getattr(backend.tokenizer, "chat_template", None))


def generate_for_task(task: Any, examples: list[dict[str, Any]], backend: Any, gen: dict[str, Any],
                      n_samples: int = 1) -> list[dict[str, Any]]:
    """Samples `{task_id, sample_idx, completion, messages | prompt_text}`, `n_samples` per example, grouped by
    example. A multi-turn task's completion is the list of per-turn answers."""
    stop = list(getattr(task, "stop", ()) or ())
    reps = [(ex, k) for ex in examples for k in range(n_samples)]
    if getattr(task, "multi_turn", False):
        convs, answers = _multi_turn(task, [ex for ex, _ in reps], backend, gen, stop)
        return [{"task_id": ex["task_id"], "sample_idx": k, "completion": a, "messages": c}
                for (ex, k), a, c in zip(reps, answers, convs)]
    chat = not getattr(task, "completion_only", False) and (
        can_chat(backend) or any("prompt_text" not in ex for ex in examples))
    if chat:
        texts = backend.chat([ex["messages"] for ex, _ in reps], stop=stop, desc=task.name, **gen)
    else:
        texts = backend.complete([ex["prompt_text"] for ex, _ in reps], stop=stop, desc=task.name, **gen)
    key = "messages" if chat else "prompt_text"
    return [{"task_id": ex["task_id"], "sample_idx": k, "completion": t, key: ex[key]}
            for (ex, k), t in zip(reps, texts)]


def _multi_turn(task: Any, examples: list[dict[str, Any]], backend: Any, gen: dict[str, Any],
                stop: list[str]) -> tuple[list[list[dict[str, str]]], list[list[str]]]:
    """Turn-by-turn generation (FastChat gen_model_answer): turn t sees the questions and answers before it."""
    convs: list[list[dict[str, str]]] = [[] for _ in examples]
    answers: list[list[str]] = [[] for _ in examples]
    n_turns = max(len(ex["turns"]) for ex in examples) if examples else 0
    for t in range(n_turns):
        live = [i for i, ex in enumerate(examples) if t < len(ex["turns"])]
        for i in live:
            convs[i].append({"role": "user", "content": examples[i]["turns"][t]})
        texts = backend.chat([convs[i] for i in live], stop=stop, desc=f"{task.name} turn {t + 1}", **gen)
        for i, text in zip(live, texts):
            convs[i].append({"role": "assistant", "content": text})
            answers[i].append(text)
    return convs, answers


# ------------------------------------------------------------------------------------------------------ the judge
JUDGE_FIX = "start the judge server, fix eval.judge.base_url, or set eval.judge.on_unreachable=skip"


def judge_reachable(judge_cfg: Any) -> str | None:
    """None when the judge answers its connection check; the one-line reason when it does not and the recipe
    says `on_unreachable: skip`. Raises ServerUnreachableError (a user error) under `fail`."""
    from mixtune.evaluate.openai_client import ChatClient, ServerUnreachableError

    with ChatClient(judge_cfg.base_url, judge_cfg.model, api_key_env=judge_cfg.api_key_env, concurrency=1) as client:
        try:
            client.check(judge_cfg.check_timeout_s, fix=JUDGE_FIX)
        except ServerUnreachableError as e:
            if judge_cfg.on_unreachable == "fail":
                raise
            return str(e)
    return None


def check_judges(recipe: Recipe, log: Callable[[str], None] | None = print) -> list[str]:
    """Check the judge of every judged benchmark of the recipe once, before any training or generation; returns
    the benchmarks that will be skipped (`on_unreachable: skip`), after a loud warning."""
    ev = recipe.eval
    judged = [n for n in ev.benchmarks if hasattr(get_task(n, data_dir=ev.data_dir, world_dir=ev.world_dir),
                                                   "use_judge")]
    reason = judge_reachable(ev.judge) if judged else None
    if reason and log:
        log(f"WARNING: {', '.join(judged)} will be SKIPPED (no score): the judge is unreachable: {reason}")
    return judged if reason else []


def _skipped(name: str, reason: str, recipe: Recipe) -> dict[str, Any]:
    return {"benchmark": name, "ability": ABILITY_OF.get(name, ""), "status": "skipped", "reason": reason,
            "primary_metric": "status", "template": recipe.data.template}


# ------------------------------------------------------------------------------------------------------- one task
def run_benchmark(name: str, backend: Any, recipe: Recipe, out_dir: Path, limit: int | None) -> dict[str, Any]:
    """Generate, score and write one benchmark's files; returns its summary (task metrics plus bookkeeping and a
    `status`: ok, failed (primary metric NaN: no valid sample) or skipped (unreachable judge, `skip` mode))."""
    ev = recipe.eval
    world_dir = ev.world_dir or recipe.world.out_dir
    task = get_task(name, data_dir=ev.data_dir, world_dir=world_dir)
    if hasattr(task, "use_judge"):
        reason = judge_reachable(ev.judge)  # fails fast (or skips) before any generation
        if reason:
            record = _skipped(name, reason, recipe)
            atomic_write_json(out_dir / name / "summary.json", record)
            return record
        task.use_judge(ev.judge)
    try:
        examples = select_examples(task, limit)
        gen = {"max_new_tokens": ev.max_new_tokens, "temperature": ev.temperature, "top_p": ev.top_p,
               "seed": recipe.seed}
        t0 = time.perf_counter()
        samples = generate_for_task(task, examples, backend, gen, ev.n_samples)
        gen_s = time.perf_counter() - t0
        scores, summary = score_samples(task, [_core(s) for s in samples], ev.pass_k)
        score_s = time.perf_counter() - t0 - gen_s
    finally:
        judge = getattr(task, "judge", None)
        if judge is not None and hasattr(judge, "close"):
            judge.close()
    folder = out_dir / name
    write_jsonl(folder / "samples.jsonl", samples)
    write_jsonl(folder / "scored.jsonl", [{**_core(s), **r} for s, r in zip(samples, scores)])
    primary = getattr(task, "primary_metric", None) or next(iter(summary))
    value = summary.get(primary)
    failed = not isinstance(value, (int, float)) or math.isnan(value)
    record = {"benchmark": name, "ability": ABILITY_OF.get(name, getattr(task, "ability", "")),
              "primary_metric": primary, **summary, "n_examples": len(examples), "n_samples": ev.n_samples,
              "gen_seconds": round(gen_s, 3), "score_seconds": round(score_s, 3), "backend": getattr(backend, "name", "?"),
              "template": recipe.data.template, "status": "failed" if failed else "ok"}
    if failed:
        errors = {k: v for k, v in summary.items() if k.startswith("n_") and "error" in k or k == "n_invalid"}
        record["reason"] = f"{primary} is {value!r}: no valid sample" + (f" ({errors})" if errors else "")
    atomic_write_json(folder / "summary.json", _json_safe(record))
    return record


def _core(sample: dict[str, Any]) -> dict[str, Any]:
    """The sample without its prompt (kept in samples.jsonl only)."""
    return {k: v for k, v in sample.items() if k not in ("messages", "prompt_text")}


def _json_safe(obj: dict[str, Any]) -> dict[str, Any]:
    """NaN (a metric with nothing valid to average) as null: strict JSON readers reject NaN."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in obj.items()}


# ------------------------------------------------------------------------------------------------------ all tasks
def evaluate_model(model: Any, tokenizer: Any, recipe: Recipe, run_dir: str | Path, stage: str,
                   step: int | None = None, subset: int | None = None, *, out_dir: str | Path | None = None,
                   db_path: str | Path | None = None, backend: Any = None,
                   log: Callable[[str], None] | None = print) -> dict[str, dict[str, Any]]:
    """Evaluate `model` on every benchmark of `recipe.eval`; returns benchmark -> summary.

    `subset` (else `eval.limit`) keeps the first N examples of each benchmark. Scores are written to `db_path`
    (default `<run_dir>/../results.sqlite`) as (run_dir name, stage, benchmark, ability, metrics, step).
    `backend` replaces the backend built by `make_backend` (HF on `model`; OpenAI when `model` is None).
    """
    run_dir = Path(run_dir)
    if out_dir is None:
        out_dir = run_dir / "eval" / stage / (f"step-{step}" if step is not None else "")
    out_dir = Path(out_dir)
    own_backend = backend is None
    if own_backend:
        backend = make_backend(recipe, model, tokenizer)
    limit = subset or recipe.eval.limit
    results: dict[str, dict[str, Any]] = {}
    try:
        with ResultsDB(db_path or run_dir.parent / DB_NAME) as db:
            for name in recipe.eval.benchmarks:
                record = run_benchmark(name, backend, recipe, out_dir, limit)
                metrics = {k: v for k, v in record.items() if k not in ("benchmark", "ability", "backend", "template")}
                db.add_scores(run_dir.name, stage, name, record["ability"], metrics, step=step)
                results[name] = record
                if log:
                    where = stage if step is None else f"{stage} step {step}"
                    log(f"[{where}] {name}: " + (f"{record['status'].upper()}: {record['reason']}"
                                                 if record["status"] != "ok" else
                                                 f"{record['primary_metric']}={_fmt(record[record['primary_metric']])}"))
    finally:
        if own_backend and hasattr(backend, "close"):
            backend.close()
    return results


def make_backend(recipe: Recipe, model: Any, tokenizer: Any) -> Any:
    """HF backend on the given model; without a model, the OpenAI backend (`eval.backend: openai`).

    A model in hand always wins, so a training run with `eval.backend: openai` still scores the model it trains.
    """
    ev = recipe.eval
    if model is None:
        from mixtune.evaluate.generate import OpenAIBackend

        if not ev.base_url or not ev.served_model:
            raise ValueError("eval.backend openai needs eval.base_url and eval.served_model")
        # batch_size doubles as the number of requests in flight; the key, if any, comes from OPENAI_API_KEY.
        return OpenAIBackend(ev.base_url, ev.served_model, concurrency=ev.batch_size)
    from mixtune.evaluate.generate import HFBackend

    return HFBackend(model, tokenizer, recipe.data.template, batch_size=ev.batch_size)


def ability_table(results: dict[str, dict[str, Any]]) -> str:
    """One line per benchmark, sorted by ability: benchmark, ability, primary metric and its value."""
    rows = [("benchmark", "ability", "metric", "value")]
    for name, r in sorted(results.items(), key=lambda kv: (kv[1]["ability"], kv[0])):
        value = _fmt(r.get(r["primary_metric"])) if r.get("status", "ok") == "ok" else r["status"].upper()
        rows.append((name, r["ability"], r["primary_metric"], value))
    widths = [max(len(row[c]) for row in rows) for c in range(4)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


# ------------------------------------------------------------------------------------------------------------ CLI
def main(argv: Sequence[str]) -> int:
    """`mixtune eval run`: load `model.path` (or serve through `eval.backend: openai`), evaluate, print the table.

    The judge is checked and the model loaded before anything is written. Exit 1 when a benchmark has no score."""
    import sys

    from mixtune.cliutil import parse_recipe, recipe_parser

    parser = recipe_parser("eval run", "generate with a model and score the recipe's benchmarks",
                           sections=["model", "data", "eval"])
    parser.add_argument("--db", default=None, help=f"results database (default <run_dir>/../{DB_NAME})")
    parser.add_argument("--stage", default="eval", help="stage name the scores are stored under")
    args, recipe = parse_recipe(parser, list(argv))
    if not recipe.eval.benchmarks:
        parser.error("eval.benchmarks is empty: name at least one benchmark (`mixtune eval list`)")
    check_judges(recipe, log=lambda line: print(line, file=sys.stderr))
    model = tokenizer = None
    if recipe.eval.backend == "hf":
        import torch

        from mixtune.model.load import load_model_and_tokenizer, prepare_tokenizer

        torch.set_num_threads(recipe.train.threads)
        # The template saved with the model is used unless the recipe names another one (then one warning line).
        tokenizer = prepare_tokenizer(recipe.model, recipe.data.template, recipe.tokenizer.out_dir,
                                      log=lambda line: print(f"mixtune eval run: {line}", file=sys.stderr),
                                      required=False)
        model, tokenizer = load_model_and_tokenizer(recipe.model, tokenizer_path=recipe.tokenizer.out_dir,
                                                    seed=recipe.seed, tokenizer=tokenizer)
    run_dir = recipe.run_dir
    atomic_write_text(run_dir / "eval" / "config.yaml", dump_recipe(recipe))  # never clobber a training config
    results = evaluate_model(model, tokenizer, recipe, run_dir, stage=args.stage, out_dir=run_dir / "eval",
                             db_path=args.db)
    print(ability_table(results))
    failed = [name for name, r in results.items() if r.get("status") == "failed"]
    if failed:
        print(f"mixtune eval run: {len(failed)} benchmark(s) have no valid score: "
              + "; ".join(f"{n}: {results[n]['reason']}" for n in failed), file=sys.stderr)
        return 1
    return 0
