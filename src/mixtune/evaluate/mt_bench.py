"""MT-Bench: 80 two-turn questions, single-answer grading by an LLM judge (FastChat `llm_judge`, METHODS §10).

Files (FastChat's, in `<data_dir>/mt_bench/`): question.jsonl, judge_prompts.jsonl, reference_answer_gpt-4.jsonl.
Rules taken from FastChat (gen_judgment.py / common.py, mode `single`):
- judge prompts: `single-v1` for turn 1 and `single-v1-multi-turn` for turn 2; questions in the categories
  math, reasoning and coding use `single-math-v1` / `single-math-v1-multi-turn` with GPT-4's reference answers.
- the judge runs at temperature 0, max_tokens 2048; the rating is `[[x]]`, then `[x]`, else -1 (invalid).
- scores: the mean over valid ratings of both turns (`score`), and per turn (`turn1`, `turn2`); invalid ratings
  are excluded from the means, as FastChat's show_result does, and counted in `n_invalid`.
- question 104's reference answer is known to be wrong (it says David has one brother; the answer is zero).
  FastChat kept it, and so do we, so that scores stay comparable.

Generation differs from FastChat in one documented way: FastChat samples with a per-category temperature
(writing/roleplay 0.7, stem/humanities 0.1, others 0); we use the recipe's `eval.temperature` for all.

A completion for this task is the list of the model's answers, one per turn (`multi_turn = True`); the runner
generates turn 1, appends it to the conversation, then generates turn 2. A plain string is read as turn 1 only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mixtune.evaluate.base import Task, iter_jsonl, user_messages
from mixtune.evaluate.judge import INVALID, Judge, JudgePrompt, load_judge_prompts

NEED_REF_CATS = ("math", "reasoning", "coding")  # FastChat's NEED_REF_CATS (less arena-hard-200)
N_TURNS = 2


class MTBench(Task):
    """The `mt_bench` benchmark. Scoring needs a judge: pass `judge=` or call `use_judge(JudgeConfig | Judge)`."""

    name = "mt_bench"
    ability = "general"
    metric_names = ("score", "turn1", "turn2", "n_invalid")
    primary_metric = "score"
    multi_turn = True

    def __init__(self, data_dir: str = "../shared/data", world_dir: str | None = None, path: str | None = None,
                 judge: Any = None):
        super().__init__(data_dir=data_dir, world_dir=world_dir, path=path)
        self.judge: Judge | None = None
        if judge is not None:
            self.use_judge(judge)

    def use_judge(self, judge: Any) -> None:
        """Set the judge: a ready `Judge`, or a `JudgeConfig` to build one from."""
        self.judge = judge if isinstance(judge, Judge) else Judge.from_config(judge)

    # -- data -----------------------------------------------------------------------------------------------------
    def default_path(self) -> Path:
        return Path(self.data_dir) / "mt_bench" / "question.jsonl"

    def load(self) -> list[dict[str, Any]]:
        refs = {}
        ref_path = self.source_path().parent / "reference_answer_gpt-4.jsonl"
        if ref_path.exists():
            refs = {r["question_id"]: r["choices"][0]["turns"] for _, r in iter_jsonl(ref_path)}
        examples = []
        for _, q in iter_jsonl(self.source_path()):
            examples.append({
                "task_id": f"mt_bench/{q['question_id']}",
                "question_id": q["question_id"],
                "category": q["category"],
                "turns": list(q["turns"]),
                "messages": user_messages(q["turns"][0]),
                "reference": refs.get(q["question_id"]) if q["category"] in NEED_REF_CATS else None,
            })
        return examples

    def judge_prompts(self) -> dict[str, JudgePrompt]:
        return load_judge_prompts(self.source_path().parent / "judge_prompts.jsonl")

    # -- scoring --------------------------------------------------------------------------------------------------
    def judge_messages(self, example: dict[str, Any], answers: Sequence[str], turn: int,
                       prompts: dict[str, JudgePrompt]) -> list[dict[str, str]]:
        """The judge conversation for `turn` (1 or 2), filled as FastChat's `run_judge_single`."""
        ref = example.get("reference")
        if example["category"] in NEED_REF_CATS and ref is None:
            raise ValueError(f"{example['task_id']}: category {example['category']} needs a reference answer")
        q = example["turns"]
        if turn == 1:
            prompt = prompts["single-math-v1" if ref else "single-v1"]
            fields = {"question": q[0], "answer": answers[0]}
            if ref:
                fields["ref_answer_1"] = ref[0]
        else:
            prompt = prompts["single-math-v1-multi-turn" if ref else "single-v1-multi-turn"]
            fields = {"question_1": q[0], "question_2": q[1], "answer_1": answers[0], "answer_2": answers[1]}
            if ref:
                fields.update(ref_answer_1=ref[0], ref_answer_2=ref[1])
        return prompt.messages(**fields)

    def score(self, example: dict[str, Any], completion: Any) -> dict[str, Any]:
        return self.score_all([example], [completion])[0]

    def score_all(self, examples: list[dict[str, Any]], completions: list[Any]) -> list[dict[str, Any]]:
        """Judge every turn of every example in one concurrent batch.

        Per example: `rating_turn1`, `rating_turn2` (-1 invalid, absent when that turn was not answered),
        `judgment_turn*`, `n_invalid`, `passed` (= every answered turn got a valid rating; the metric is the
        rating, not `passed`) and `result` ("turn1=7 turn2=8").
        """
        if len(examples) != len(completions):
            raise ValueError(f"{len(examples)} examples but {len(completions)} completions")
        if self.judge is None:
            raise RuntimeError("mt_bench needs a judge: set eval.judge (base_url, model) in the recipe")
        prompts = self.judge_prompts()
        jobs: list[tuple[int, int]] = []  # (example index, turn)
        convs = []
        for i, (ex, completion) in enumerate(zip(examples, completions)):
            answers = [completion] if isinstance(completion, str) else list(completion)[:N_TURNS]
            for turn in range(1, len(answers) + 1):
                jobs.append((i, turn))
                convs.append(self.judge_messages(ex, answers, turn, prompts))
        verdicts = self.judge.rate_many(convs)
        rows: list[dict[str, Any]] = [{"task_id": ex["task_id"], "category": ex["category"]} for ex in examples]
        for (i, turn), v in zip(jobs, verdicts):
            rows[i][f"rating_turn{turn}"] = v["rating"]
            rows[i][f"judgment_turn{turn}"] = v["judgment"]
            if v.get("error"):
                rows[i][f"error_turn{turn}"] = v["error"]
        for row in rows:
            ratings = [row[f"rating_turn{t}"] for t in range(1, N_TURNS + 1) if f"rating_turn{t}" in row]
            row["n_invalid"] = sum(r == INVALID for r in ratings)
            row["passed"] = bool(ratings) and row["n_invalid"] == 0
            row["result"] = " ".join(f"turn{t}={_fmt(r)}" for t, r in enumerate(ratings, start=1))
        return rows

    def summarize(self, scored: list[dict[str, Any]]) -> dict[str, Any]:
        """`score` (mean of valid ratings over both turns), `turn1`, `turn2`, per-category means, counts, judge."""
        def valid(rows: list[dict[str, Any]], turns: Sequence[int]) -> list[float]:
            return [r[k] for r in rows for t in turns if (k := f"rating_turn{t}") in r and r[k] != INVALID]

        all_turns = range(1, N_TURNS + 1)
        summary: dict[str, Any] = {
            "score": _mean(valid(scored, all_turns)),
            **{f"turn{t}": _mean(valid(scored, [t])) for t in all_turns},
            "n": len(scored),
            "n_verdicts": sum(f"rating_turn{t}" in r for r in scored for t in all_turns),
            "n_invalid": sum(r.get("n_invalid", 0) for r in scored),
            "n_judge_errors": sum(f"error_turn{t}" in r for r in scored for t in all_turns),
        }
        for cat in sorted({r.get("category") for r in scored if r.get("category")}):
            summary[f"category/{cat}"] = _mean(valid([r for r in scored if r.get("category") == cat], all_turns))
        summary["judge_model"] = self.judge.model if self.judge else ""
        return summary


def _mean(values: list[float]) -> float:
    """Mean, NaN when there is nothing valid (0 would read as a real, terrible score)."""
    return sum(values) / len(values) if values else float("nan")


def _fmt(rating: float) -> str:
    return "invalid" if rating == INVALID else f"{rating:g}"
