"""The two datatrove `PipelineStep`s every data verb runs (see `mixtune.data.pipeline`); imports datatrove.

A step holds only plain data (paths, "module:function" names, an options dict), so datatrove's executors can
pickle it for their workers (forkserver locally, Slurm array jobs, Ray actors).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datatrove.pipeline.base import PipelineStep

from mixtune.data.corpus_io import block, read_corpus
from mixtune.data.pipeline_parts import load_part, map_block, reduce_and_write, save_part


class _CorpusStep(PipelineStep):
    type = "mixtune"

    def __init__(self, input_path: str, fmt: str, text_field: str, work_dir: str, fn: str, options: dict[str, Any]):
        super().__init__()
        self.input_path, self.fmt, self.text_field = input_path, fmt, text_field
        self.work_dir, self.fn, self.options = work_dir, fn, options


class MapStep(_CorpusStep):
    """Task `rank` computes the features of its block of records and saves them as part `rank`."""

    name = "map"

    def run(self, data: Any = None, rank: int = 0, world_size: int = 1) -> None:
        with self.track_time():
            corpus = read_corpus(self.input_path, self.fmt, self.text_field, self.options.get("invalid", "error"))
            result = map_block(corpus, self.fn, rank, world_size, self.options)
            save_part(Path(self.work_dir) / "map", rank, result)
            self.stat_update("records", value=len(block(len(corpus), rank, world_size)))


class ReduceStep(_CorpusStep):
    """One task: gathers every part in rank order, decides, and writes the outputs."""

    name = "reduce"

    def __init__(self, out: str, n_parts: int, verb: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.out, self.n_parts, self.verb = out, n_parts, verb

    def run(self, data: Any = None, rank: int = 0, world_size: int = 1) -> None:
        with self.track_time():
            corpus = read_corpus(self.input_path, self.fmt, self.text_field, self.options.get("invalid", "error"))
            parts = [load_part(Path(self.work_dir) / "map", r) for r in range(self.n_parts)]
            reduce_and_write(corpus, self.fn, parts, self.options, self.out, self.text_field, self.verb)
