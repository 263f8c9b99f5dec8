"""IFEval (Zhou et al. 2023, "Instruction-Following Evaluation for Large Language Models") and the mini-lab
instruction benchmark, as evaluation tasks (duck-typed Task contract, docs/CONTRACTS.md).

Metrics (the reference's evaluation_lib.print_report, for both strict and loose checking):
- prompt-level accuracy: share of prompts whose instructions are all followed;
- instruction-level accuracy: share of all (prompt, instruction) pairs followed, pooled over prompts.
Strict prompt-level accuracy is the per-sample `passed`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mixtune.evaluate.base import BenchmarkDataError
from mixtune.evaluate.ifeval.registry import follow_loose, follow_strict, get_checker
from mixtune.jsonl import iter_jsonl


class IFEval:
    """The 541 IFEval prompts from `<data_dir>/ifeval/input_data.jsonl` (fields key, prompt, instruction_id_list,
    kwargs), scored by the 25 instruction checkers. `path` overrides the file."""

    name = "ifeval"
    ability = "general"
    metric_names = ("prompt_level_strict", "instruction_level_strict", "prompt_level_loose", "instruction_level_loose")
    primary_metric = "prompt_level_strict"
    multi_turn = False

    def __init__(self, data_dir: str = "../shared/data", world_dir: str | None = None, path: str | None = None):
        self.data_dir = data_dir
        self.world_dir = world_dir
        self.path = path
        self._examples: list[dict[str, Any]] | None = None

    def source_path(self) -> Path:
        """The benchmark file read."""
        return Path(self.path) if self.path else Path(self.data_dir) / "ifeval" / "input_data.jsonl"

    def task_id(self, record: dict[str, Any]) -> str:
        """Stable id of one record: `ifeval/<key>`."""
        return f"ifeval/{record['key']}"

    # -- data ---------------------------------------------------------------------------------------------------
    def examples(self) -> list[dict[str, Any]]:
        """All examples in file order, loaded once; every instruction id is checked against the registry."""
        if self._examples is None:
            self._examples = [self._example(i, r) for i, r in enumerate(_read_jsonl(self.source_path()))]
            ids = [ex["task_id"] for ex in self._examples]
            if len(set(ids)) != len(ids):
                raise ValueError(f"{self.source_path()}: duplicate task ids")
        return self._examples

    def example(self, task_id: str) -> dict[str, Any]:
        """The example with this id; `KeyError` when there is none."""
        for ex in self.examples():
            if ex["task_id"] == task_id:
                return ex
        raise KeyError(f"{self.name}: unknown task_id {task_id!r}")

    def _example(self, line: int, record: dict[str, Any]) -> dict[str, Any]:
        """One record -> example dict (task_id, messages, gold fields)."""
        ids, kwargs = list(record["instruction_id_list"]), list(record["kwargs"])
        if len(ids) != len(kwargs):
            raise ValueError(f"{self.source_path()}:{line + 1}: {len(ids)} instruction ids but {len(kwargs)} kwargs")
        for instruction_id in ids:
            get_checker(instruction_id)  # unknown ids fail at load time, with the valid list
        return {
            "task_id": self.task_id(record),
            "key": record["key"],
            "prompt": record["prompt"],
            "messages": [{"role": "user", "content": record["prompt"]}],
            "instruction_id_list": ids,
            "kwargs": kwargs,
        }

    # -- scoring ------------------------------------------------------------------------------------------------
    def score(self, example: dict[str, Any], completion: str) -> dict[str, Any]:
        """Strict and loose verdicts per instruction; `passed` is prompt-level strict."""
        ids, kwargs = example["instruction_id_list"], example["kwargs"]
        strict = follow_strict(completion, ids, kwargs)
        loose = follow_loose(completion, ids, kwargs)
        failed = [i for i, ok in zip(ids, strict) if not ok]
        return {
            "passed": all(strict),
            "result": "passed" if not failed else "failed: " + ", ".join(failed),
            "strict_instructions": strict,
            "loose_instructions": loose,
        }

    def score_all(self, examples: list[dict[str, Any]], completions: list[str]) -> list[dict[str, Any]]:
        """Score aligned lists of examples and completions, in order."""
        if len(examples) != len(completions):
            raise ValueError(f"{len(examples)} examples but {len(completions)} completions")
        return [self.score(ex, c) for ex, c in zip(examples, completions)]

    def summarize(self, scored: list[dict[str, Any]]) -> dict[str, Any]:
        """Prompt- and instruction-level accuracy, strict and loose, and `n` (prompts). 0.0 when empty."""
        summary: dict[str, Any] = {}
        for mode in ("strict", "loose"):
            verdicts = [s[f"{mode}_instructions"] for s in scored]
            n_instructions = sum(len(v) for v in verdicts)
            summary[f"prompt_level_{mode}"] = sum(all(v) for v in verdicts) / len(verdicts) if verdicts else 0.0
            summary[f"instruction_level_{mode}"] = (
                sum(sum(v) for v in verdicts) / n_instructions if n_instructions else 0.0
            )
        summary["n"] = len(scored)
        return summary


class MiniLabInstruct(IFEval):
    """The mini-lab instruction benchmark: `<world_dir>/bench/instruct_test.jsonl` with records
    {task_id, key, prompt, instruction_id_list, kwargs} (IFEval format and ids), scored exactly like IFEval."""

    name = "minilab_instruct"

    def __init__(self, data_dir: str = "../shared/data", world_dir: str | None = None, path: str | None = None):
        super().__init__(
            data_dir=data_dir, world_dir=world_dir if world_dir is not None else "runs/world-mini", path=path
        )

    def source_path(self) -> Path:
        """The benchmark file read."""
        return Path(self.path) if self.path else Path(str(self.world_dir)) / "bench" / "instruct_test.jsonl"

    def task_id(self, record: dict[str, Any]) -> str:
        """The record's own `task_id` (the world builder assigns it); `minilab_instruct/<key>` if absent."""
        return str(record.get("task_id") or f"{self.name}/{record['key']}")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Objects of a JSONL file (blank lines skipped); errors name the file and line."""
    return [obj for _, obj in iter_jsonl(path, BenchmarkDataError, "benchmark file")]
