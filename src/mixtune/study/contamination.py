"""A study's held-out check: before any training, every training source is compared with the study's own benchmarks.

A held-out score is held out only if no training source touches its items (DMT and every ability table stand on
it). Two checks, on each source drawn in full:
- exact: a training record whose user turn equals a benchmark prompt (case and whitespace normalised) IS the test
  item; the study stops before training and names the source, the record and the benchmark item;
- n-gram: 13-gram overlaps (`mixtune.evaluate.contamination`, the `mixtune data decontaminate` index) are counted
  per source and benchmark, written to `<study>/contamination.json` and shown in the report. Templated data shares
  phrases with its test set without sharing items (the mini-lab's generators do), so these are reported, not fatal.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mixtune.config import Recipe
from mixtune.errors import UserError
from mixtune.runs import atomic_write_json

REPORT_NAME = "contamination.json"


class ContaminationError(UserError):
    """A training record is a test item of one of the study's benchmarks."""


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def _prompts(example: dict[str, Any]) -> list[str]:
    return [_norm(m["content"]) for m in example.get("messages", []) if m.get("role") == "user" and m["content"]]


def check_contamination(study: Recipe, study_dir: Path, log=print) -> dict[str, Any]:
    """Run both checks on the study's sources against `study.eval.benchmarks`; returns the report (also written to
    `<study_dir>/contamination.json`). Raises ContaminationError on an exact test item in training data."""
    from mixtune.data.mixture import load_source
    from mixtune.evaluate.contamination import contamination_report
    from mixtune.evaluate.registry import get_task

    ev = study.eval
    world_dir = ev.world_dir or study.world.out_dir
    sources = {src.name: load_source(src, study.world.out_dir, log=lambda _: None) for src in study.data.sources}
    items: dict[str, tuple[str, str]] = {}
    for bench in ev.benchmarks:
        for ex in get_task(bench, data_dir=ev.data_dir, world_dir=world_dir).examples():
            for prompt in _prompts(ex):
                items.setdefault(prompt, (bench, ex["task_id"]))
    for name, examples in sources.items():
        for ex in examples:
            hit = next((items[p] for p in _prompts(ex) if p in items), None)
            if hit:
                raise ContaminationError(
                    f"source {name}: record {ex['id']} is test item {hit[1]} of benchmark {hit[0]}: its score would "
                    f"not be held out; remove the record from the source (mixtune data decontaminate --drop) or the "
                    f"benchmark from eval.benchmarks")
    report = contamination_report(sources, against=ev.benchmarks, data_dir=ev.data_dir, world_dir=world_dir)
    report["exact_matches"] = 0
    atomic_write_json(Path(study_dir) / REPORT_NAME, report)
    for name, counts in report["sources"].items():
        log(f"[study] held-out check {name}: 0 test items, {counts['flagged']}/{counts['records']} records share a "
            f"{report['ngram']}-gram with a benchmark item ({REPORT_NAME})")
    return report
