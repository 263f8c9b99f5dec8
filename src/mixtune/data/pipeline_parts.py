"""The worker side of a data verb, shared by the datatrove steps (`pipeline_steps`) and the orchestrator
(`pipeline`): map one block of records to features, save/load those parts, and reduce them into the outputs."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mixtune.data.corpus_io import Corpus, block, write_outputs


def resolve(target: str) -> Callable[..., Any]:
    """The function named by "module:function"."""
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def save_part(folder: Path, rank: int, result: dict[str, Any]) -> None:
    """numpy arrays to `<rank>.npz`, everything else to `<rank>.json`."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {k: v for k, v in result.items() if isinstance(v, np.ndarray)}
    np.savez(folder / f"{rank:05d}.npz", **arrays)
    rest = {k: v for k, v in result.items() if k not in arrays}
    (folder / f"{rank:05d}.json").write_text(json.dumps(rest))


def load_part(folder: Path, rank: int) -> dict[str, Any]:
    with np.load(folder / f"{rank:05d}.npz", allow_pickle=False) as npz:
        part: dict[str, Any] = {k: npz[k] for k in npz.files}
    part.update(json.loads((folder / f"{rank:05d}.json").read_text()))
    return part


def reduce_and_write(corpus: Corpus, fn: str, parts: list[dict[str, Any]], options: dict[str, Any], out: str,
                     text_field: str, verb: str) -> dict[str, Any]:
    """The reduce step's body: decide, then write OUTPUT, the side file and the summary (summary first keys)."""
    decisions, summary = resolve(fn)(corpus, parts, options)
    policy = options.get("invalid", "error")
    for i, problem in corpus.invalid.items():  # unreadable records: passed through or dropped, always listed
        decisions[i] = {"action": "dropped" if policy == "drop" else "skipped", "reason": "invalid_record",
                        "problem": problem}
    dropped = sum(d["action"] == "dropped" for d in decisions.values())
    head = {"verb": verb, "input_file": str(corpus.path), "format": corpus.format, "input": len(corpus),
            "kept": len(corpus) - dropped}
    tail = {"invalid": len(corpus.invalid)} if corpus.invalid else {}
    return write_outputs(corpus, out, decisions, {**head, **summary, **head, **tail}, text_field)


def map_block(corpus: Corpus, fn: str, rank: int, world_size: int, options: dict[str, Any]) -> dict[str, Any]:
    return resolve(fn)(corpus, block(len(corpus), rank, world_size), options)
