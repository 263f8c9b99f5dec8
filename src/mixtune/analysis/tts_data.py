"""The samples test-time scaling works on: the policy's answers to mini-lab math and code problems, each marked
correct or not by the benchmark's own scorer, and the reward models' training data made from them.

- test: `tts.n_max` samples for each of the first `tts.math_problems` / `tts.code_tasks` benchmark items
  (minilab_math: GSM8K strict-match; minilab_code: the hidden tests in the sandbox);
- train: `tts.train_samples` samples for seeded draws of the world's SFT training questions and code tasks (never a
  benchmark item), labelled the same way. The PRM learns from their step labels (`tts.step_labels`, recomputed)
  plus the reference solution of each question; the ORM from best-vs-worst outcome pairs of the same samples and
  references (a correct and a wrong answer to one prompt, `train/pairs.best_vs_worst`), so both reward models see
  the same answers and differ only in the granularity of their supervision (Lightman et al. 2023 §3).

Samples are generated once and kept in `<out>/samples/*.jsonl` with a stamp of what made them; a rerun with the
same policy and sampling settings reads them back.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from mixtune.analysis.tts import step_labels
from mixtune.config import Recipe
from mixtune.jsonl import iter_jsonl
from mixtune.runs import atomic_write_json, write_jsonl


def _prompt(example: dict) -> list[dict]:
    messages = list(example["messages"])
    return messages[:-1] if messages and messages[-1]["role"] == "assistant" else messages


def sample_groups(backend, prompts: list[list[dict]], n: int, recipe: Recipe, seed: int) -> list[list[str]]:
    """`n` sampled answers per prompt (each prompt repeated n times in one seeded generation call)."""
    cfg = recipe.tts
    texts = backend.chat([p for p in prompts for _ in range(n)], max_new_tokens=cfg.max_new_tokens,
                         temperature=cfg.temperature, top_p=cfg.top_p, seed=seed, desc=f"sample x{n}")
    return [list(texts[i * n:(i + 1) * n]) for i in range(len(prompts))]


def code_example(task_id: str, prompt: str, tests: str, entry_point: str) -> dict:
    """A HumanEval-format item the code task's sandboxed scorer runs."""
    return {"task_id": task_id, "format": "humaneval", "prompt": prompt, "test": tests, "entry_point": entry_point}


def mark(items: list[dict], answers: list[list[str]], ability: str, world_dir: str) -> list[list[bool]]:
    """Whether each answer is right: math by GSM8K strict-match, code by the hidden tests in the sandbox."""
    from mixtune.evaluate.registry import get_task

    if ability == "math":
        from mixtune.evaluate.gsm8k import score_gsm8k

        return [[bool(score_gsm8k(a, item["gold"])["strict"]) for a in group] for item, group in zip(items, answers)]
    task = get_task("minilab_code", world_dir=world_dir)
    flat = [(item["code"], a) for item, group in zip(items, answers) for a in group]
    results = iter(bool(r["passed"]) for r in task.score_all([c for c, _ in flat], [a for _, a in flat]))
    return [[next(results) for _ in group] for group in answers]


def test_items(recipe: Recipe) -> dict[str, list[dict]]:
    """The benchmark items: {ability: [{id, prompt, gold (math) | code (code)}]}."""
    from mixtune.evaluate.registry import get_task

    world, cfg = recipe.world.out_dir, recipe.tts
    math = get_task("minilab_math", world_dir=world).examples()[:cfg.math_problems]
    items = {"math": [{"id": ex["task_id"], "prompt": ex["messages"], "gold": ex["answer"]} for ex in math]}
    if cfg.code_tasks:
        code = get_task("minilab_code", world_dir=world).examples()[:cfg.code_tasks]
        items["code"] = [{"id": ex["task_id"], "prompt": ex["messages"], "code": ex} for ex in code]
    return items


def train_items(recipe: Recipe) -> dict[str, list[dict]]:
    """Seeded draws of the world's SFT training questions and code tasks: {ability: [item]}."""
    world, cfg = Path(recipe.world.out_dir), recipe.tts
    items: dict[str, list[dict]] = {}
    for ability, n in (("math", cfg.train_questions), ("code", cfg.train_code_tasks)):
        if not n:
            continue
        records = [obj for _, obj in iter_jsonl(world / "sft" / f"{ability}.jsonl", what="mini-lab SFT file")]
        picked = random.Random(f"{recipe.seed}:tts:{ability}").sample(records, min(n, len(records)))
        out = []
        for rec in picked:
            item = {"id": rec["id"], "prompt": _prompt(rec), "reference": rec["messages"][-1]["content"]}
            if ability == "math":
                item["gold"] = item["reference"]  # the solution, "... #### N"
            else:
                item["code"] = code_example(rec["id"], rec["messages"][0]["content"], rec["tests"], rec["entry_point"])
            out.append(item)
        items[ability] = out
    return items


def sampled(backend, recipe: Recipe, folder: Path, name: str, items: list[dict], n: int, seed: int,
            ability: str, log=print) -> list[dict]:
    """Each item with `answers` (n samples) and `correct` (bools), read back from `folder/<name>.jsonl` when its
    stamp matches (same policy, sampling settings, items)."""
    cfg = recipe.tts
    stamp = {"model": recipe.model.path, "n": n, "seed": seed, "temperature": cfg.temperature, "top_p": cfg.top_p,
             "max_new_tokens": cfg.max_new_tokens, "template": recipe.data.template, "ids": [i["id"] for i in items]}
    path, stamp_path = folder / f"{name}.jsonl", folder / f"{name}.stamp.json"
    if path.exists() and stamp_path.exists() and json.loads(stamp_path.read_text()) == stamp:
        log(f"[tts] {name}: samples read back from {path}")
        return [obj for _, obj in iter_jsonl(path)]
    answers = sample_groups(backend, [i["prompt"] for i in items], n, recipe, seed)
    correct = mark(items, answers, ability, recipe.world.out_dir)
    rows = [{**item, "answers": a, "correct": c} for item, a, c in zip(items, answers, correct)]
    write_jsonl(path, rows)
    atomic_write_json(stamp_path, stamp)
    share = sum(sum(c) for c in correct) / max(sum(len(c) for c in correct), 1)
    log(f"[tts] {name}: {len(items)} x {n} samples, {share:.3f} correct")
    return rows


def prm_solutions(rows: list[dict], mode: str) -> list[dict]:
    """PRM training solutions {prompt, answer, labels}: every sample with its step labels, plus each gold solution
    (all steps correct)."""
    out = []
    for row in rows:
        for answer in [*row["answers"], row["gold"]]:
            out.append({"prompt": row["prompt"], "answer": answer, "labels": step_labels(answer, row["gold"], mode)})
    return out


def orm_pairs(rows: list[dict]) -> tuple[list[dict], int]:
    """Outcome pairs: a correct answer chosen over a wrong one to the same prompt (a correct sample when there is
    one, else the reference answer, which the PRM also learns from), and the number of prompts without a wrong
    sample (no pair: counted, not used)."""
    from mixtune.train.pairs import best_vs_worst

    pairs, ties = [], 0
    for row in rows:
        example = {"id": row["id"], "source": "tts", "messages": row["prompt"]}
        answers, scores = [*row["answers"], row["reference"]], [*map(float, row["correct"]), 1.0]
        pair = best_vs_worst(example, answers, scores)
        if pair is None:
            ties += 1
        else:
            pairs.append({"messages": pair["messages"], "chosen": pair["chosen"], "rejected": pair["rejected"]})
    return pairs, ties
