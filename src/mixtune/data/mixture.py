"""SFT data mixtures: sources drawn by fraction, count or ratio, seeded, and the manifest of what was drawn.

Ours (no library composes SFT data by ability): DMT (Dong et al. 2023) needs fractions of each source (RQ1/RQ2),
ratios between specialised and general data (RQ3) and replay of k·|D| earlier examples (DMT stage 2). Sampling is
without replacement unless a source asks for replacement, which is logged. The manifest (ids per source, example and
token counts per source and ability) is saved with every run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from mixtune.config import SourceConfig
from mixtune.data.hf_sources import read_source, source_size
from mixtune.errors import UserError

MINILAB_FILES = {"math": "math.jsonl", "code": "code.jsonl", "general": "general.jsonl", "knowledge": "knowledge.jsonl",
                 "preference_math": "preference_math.jsonl", "preference_code": "preference_code.jsonl",
                 "preference_instruct": "preference_instruct.jsonl"}
"""mini-lab source name -> its file under `<world>/sft/` (the preference_* files hold chosen/rejected pairs)."""


def minilab_ability(name: str) -> str:
    """The ability of a mini-lab source's examples: its name, or `preference` for the pair files."""
    return "preference" if name.startswith("preference_") else name


class MixtureError(UserError, ValueError):
    """A mixture that cannot be drawn (unknown ratio reference, more examples than a source holds, ...)."""


@dataclass
class Mixture:
    """The drawn training examples, the held-out eval examples per source, and the manifest."""

    train: list[dict]
    eval: dict[str, list[dict]] = field(default_factory=dict)
    manifest: dict = field(default_factory=dict)


def source_path(src: SourceConfig, world_dir: str | Path) -> Path:
    if src.path is not None:
        return Path(src.path)
    return Path(world_dir) / "sft" / MINILAB_FILES[src.minilab]


def load_source(src: SourceConfig, world_dir: str | Path, log=print,
                skipped: dict[str, int] | None = None, keep: set[int] | None = None) -> list[dict]:
    """All examples of one source (validated; a reader error names file, record and field). With
    `src.skip_invalid` bad records are skipped, logged and counted into `skipped[src.name]`. `keep`: only the
    records at these 0-based positions (a streamed draw); each example then carries its `_index`."""
    fmt = src.format
    if src.minilab and fmt == "auto":
        fmt = "pairs" if minilab_ability(src.minilab) == "preference" else "messages"
    result = read_source(source_path(src, world_dir), format=fmt, source=src.name,
                         ability=src.ability or (src.minilab and minilab_ability(src.minilab)),
                         task_type=src.task_type, skip_invalid=src.skip_invalid,
                         dataset_info=src.dataset_info, split=src.split, columns=src.columns, keep=keep)
    if keep is not None:
        for ex, index in zip(result.examples, result.indices):
            ex["_index"] = index
    for warning in result.warnings:  # once per file
        log(f"source {src.name}: warning: {warning}")
    if result.skipped:
        log(f"source {src.name}: skipped {len(result.skipped)} invalid records (first: {result.skipped[0]})")
    for note, count in result.notes.items():
        log(f"source {src.name}: {note}: {count}")
    if skipped is not None:
        skipped[src.name] = len(result.skipped)
    return result.examples


def _amount(src: SourceConfig, available: int, drawn: dict[str, int]) -> int:
    if src.count is not None:
        return src.count
    if src.fraction is not None:
        return max(1, round(src.fraction * available))
    if src.ratio is not None:
        if src.relative_to not in drawn:
            raise MixtureError(f"source {src.name}: relative_to {src.relative_to!r} is not an earlier source "
                               f"(known: {', '.join(drawn) or 'none'})")
        return max(1, round(src.ratio * drawn[src.relative_to]))
    return available


def draw_mixture(sources: list[SourceConfig], world_dir: str | Path, seed: int,
                 pools: dict[str, list[dict]] | None = None, log=print) -> Mixture:
    """Draw every source. `pools` may give a source's examples directly (strategies pass the subsets of earlier
    stages, so DMT's replay is drawn from the same data stage 1 saw)."""
    mixture = Mixture(train=[])
    drawn: dict[str, int] = {}
    skipped: dict[str, int] = {}
    for src in sources:
        rng = random.Random(f"{seed}:{src.name}")
        if src.streaming and not (pools and src.name in pools):
            picked, held = _draw_streamed(src, world_dir, rng, drawn, log, skipped)
            _add_drawn(mixture, src, picked, held, len(picked) + len(held), skipped, drawn)
            continue
        pool = list(pools[src.name]) if pools and src.name in pools else load_source(src, world_dir, log, skipped)
        if src.eval_count:
            if src.eval_count >= len(pool):
                raise MixtureError(f"source {src.name}: eval_count {src.eval_count} ≥ its {len(pool)} examples")
            held = set(rng.sample(range(len(pool)), src.eval_count))
            mixture.eval[src.name] = [pool[i] for i in sorted(held)]
            pool = [ex for i, ex in enumerate(pool) if i not in held]
        k = _amount(src, len(pool), drawn)
        if src.replace:
            log(f"source {src.name}: sampling {k} of {len(pool)} WITH replacement")
            picked = [pool[i] for i in rng.choices(range(len(pool)), k=k)]
        elif k > len(pool):
            raise MixtureError(f"source {src.name}: asks for {k} examples but holds {len(pool)}; "
                               f"lower the amount or set replace: true")
        else:
            picked = [pool[i] for i in sorted(rng.sample(range(len(pool)), k))]
        _add_drawn(mixture, src, picked, mixture.eval.get(src.name, []), len(pool), skipped, drawn)
    return mixture


def _add_drawn(mixture: Mixture, src: SourceConfig, picked: list[dict], held: list[dict], available: int,
               skipped: dict[str, int], drawn: dict[str, int]) -> None:
    drawn[src.name] = len(picked)
    mixture.train.extend(picked)
    if held:
        mixture.eval[src.name] = held
    mixture.manifest[src.name] = {
        "available": available, "drawn": len(picked), "replace": src.replace, "skipped": skipped.get(src.name, 0),
        "ability": picked[0]["ability"] if picked else src.ability, "ids": [ex["id"] for ex in picked],
        "eval_ids": [ex["id"] for ex in held], **({"streamed": True} if src.streaming else {}),
    }


def _draw_streamed(src: SourceConfig, world_dir: str | Path, rng: random.Random, drawn: dict[str, int], log,
                   skipped: dict[str, int]) -> tuple[list[dict], list[dict]]:
    """(train, held-out) examples of a streaming source: the positions are drawn first, from the size the files
    declare, with the same random calls as an in-memory draw (the same examples when every record is valid), then
    one pass keeps only those records. Positions of invalid records (skip_invalid) are dropped and counted."""
    amount = src.count is not None or src.fraction is not None or src.ratio is not None or src.eval_count
    size = source_size(source_path(src, world_dir), src.dataset_info, src.split)
    if size is None:
        if amount:
            raise MixtureError(f"source {src.name}: streaming: true with count / fraction / ratio / eval_count needs "
                               f"the number of records up front, which {src.path} does not declare (csv, JSON); "
                               "convert it to parquet or a save_to_disk folder, or drop streaming")
        examples = load_source(src, world_dir, log, skipped)
        return examples, []
    if src.eval_count >= size:
        raise MixtureError(f"source {src.name}: eval_count {src.eval_count} ≥ its {size} records")
    held = set(rng.sample(range(size), src.eval_count)) if src.eval_count else set()
    rest = [i for i in range(size) if i not in held]
    k = _amount(src, len(rest), drawn)
    if src.replace:
        chosen = [rest[i] for i in rng.choices(range(len(rest)), k=k)]
    elif k > len(rest):
        raise MixtureError(f"source {src.name}: asks for {k} examples but holds {len(rest)}; "
                           f"lower the amount or set replace: true")
    else:
        chosen = [rest[i] for i in sorted(rng.sample(range(len(rest)), k))]
    by_index = {ex.pop("_index"): ex for ex in load_source(src, world_dir, log, skipped, keep=held | set(chosen))}
    log(f"source {src.name}: streamed {size} records, kept {len(by_index)}")
    return [by_index[i] for i in chosen if i in by_index], [by_index[i] for i in sorted(held) if i in by_index]


def add_token_counts(manifest: dict, per_source: dict[str, dict], no_target: dict[str, list[str]] | None = None) -> None:
    """Write tokens, target tokens and trained examples per source into `manifest` in place, from
    `TokenizedSet.summary()["per_source"]` of the drawn training examples. `no_target` (source -> ids, from
    `TokenizedSet.no_target_by_source()`) lists drawn examples left without a target token: they are drawn but
    not trained, so `drawn == trained + len(dropped)` and the drop is named with its reason."""
    for name, m in manifest.items():
        counts = per_source.get(name, {})
        m["tokens"] = counts.get("tokens", 0)
        m["target_tokens"] = counts.get("target_tokens", 0)
        m["trained"] = counts.get("examples", 0)
        dropped = (no_target or {}).get(name, [])
        m["dropped"] = {"no target token after truncation": dropped} if dropped else {}


def manifest_summary(manifest: dict) -> dict[str, dict]:
    """Counts per source and per ability, without the id lists (for logs and the results database)."""
    per_source = {name: {k: v for k, v in m.items() if not k.endswith("ids")} for name, m in manifest.items()}
    for m in per_source.values():  # counts of dropped examples, without their id lists
        m["dropped"] = {reason: len(ids) for reason, ids in m.get("dropped", {}).items()}
    per_ability: dict[str, dict] = {}
    for m in per_source.values():
        agg = per_ability.setdefault(m["ability"], {"examples": 0, "tokens": 0, "target_tokens": 0})
        agg["examples"] += m["drawn"]
        agg["tokens"] += m.get("tokens", 0)
        agg["target_tokens"] += m.get("target_tokens", 0)
    return {"sources": per_source, "abilities": per_ability}
