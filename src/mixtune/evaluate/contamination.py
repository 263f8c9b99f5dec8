"""Benchmark items for decontamination, `mixtune data decontaminate`, and `contamination_report` for studies.

The test items come from the evaluate task registry (`get_task(name, data_dir=..., world_dir=...).examples()`), the
same objects the benchmarks score, so there is one reader per benchmark. Each example gives its prompt texts (user
turns, MT-Bench's turns) and its references (GSM8K's solution, a code task's canonical solution) as separate texts;
the n-gram matching is `mixtune.data.decontam` (data never imports evaluate; this module maps the two).

Summary keys of the verb: input, kept, flagged, by_benchmark (flagged records per benchmark), items (indexed test
items per benchmark), items_too_short, plus the settings.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mixtune.data.corpus_io import Corpus, CorpusError
from mixtune.data.decontam import NgramIndex, flag_records
from mixtune.data.pipeline import add_common_args, run_verb
from mixtune.evaluate.base import DEFAULT_DATA_DIR, BenchmarkDataError
from mixtune.evaluate.registry import UnknownTaskError, get_task

DEFAULT_AGAINST = ("gsm8k", "humaneval", "mbpp", "ifeval", "mt_bench", "nq_open")
MINILAB = ("minilab_math", "minilab_code", "minilab_instruct", "minilab_knowledge")
REFERENCE_FIELDS = ("answer", "canonical_solution", "question", "prompt")
_INDEX_CACHE: dict[tuple, NgramIndex] = {}


def item_texts(example: Mapping[str, Any]) -> list[str]:
    """The texts of one benchmark example worth matching: user turns, MT-Bench turns, question / prompt, answers."""
    texts = [m["content"] for m in example.get("messages", []) if m.get("role") == "user"]
    turns = example.get("turns")
    if isinstance(turns, list):
        texts += [t for t in turns if isinstance(t, str)]
    texts += [example[k] for k in REFERENCE_FIELDS if isinstance(example.get(k), str)]
    return list(dict.fromkeys(t for t in texts if t.strip()))


def load_items(against: Sequence[str], data_dir: str | None = None, world_dir: str | None = None
               ) -> list[tuple[str, str, str]]:
    """(benchmark, task_id, text) triples of every example of the named benchmarks."""
    items = []
    for name in against:
        for ex in get_task(name, data_dir=data_dir, world_dir=world_dir).examples():
            items += [(name, ex["task_id"], t) for t in item_texts(ex)]
    return items


def build_index(against: Sequence[str], data_dir: str | None = None, world_dir: str | None = None, n: int = 13,
                min_n: int = 8) -> NgramIndex:
    """The n-gram index of the benchmarks' items (cached per process: each map task builds it once)."""
    key = (tuple(against), data_dir, world_dir, n, min_n)
    if key not in _INDEX_CACHE:
        _INDEX_CACHE[key] = NgramIndex(load_items(against, data_dir, world_dir), n=n, min_n=min_n)
    return _INDEX_CACHE[key]


def _index_from(options: dict[str, Any]) -> NgramIndex:
    return build_index(options["against"], options["data_dir"], options["world_dir"], options["ngram"],
                       options["min_ngram"])


def decontam_map(corpus: Corpus, indices: range, options: dict[str, Any]) -> dict[str, Any]:
    index = _index_from(options)
    flags = flag_records(index, (corpus.texts[i] for i in indices))
    return {"flags": {str(indices.start + k): v for k, v in flags.items()}}


def decontam_reduce(corpus: Corpus, parts: list[dict[str, Any]], options: dict[str, Any]
                    ) -> tuple[dict[int, dict[str, Any]], dict[str, Any]]:
    index = _index_from(options)
    flags = {int(k): v for part in parts for k, v in part["flags"].items()}
    action = "dropped" if options["drop"] else "flagged"
    decisions, by_benchmark = {}, dict.fromkeys(options["against"], 0)
    for i in sorted(flags):
        best = flags[i][0]
        decisions[i] = {"action": action, "reason": "contamination", "benchmark": best["benchmark"],
                        "item_id": best["item_id"], "span": best["span"], "matches": flags[i]}
        for bench in {m["benchmark"] for m in flags[i]}:
            by_benchmark[bench] += 1
    summary = {"input": len(corpus), "kept": len(corpus) - (len(flags) if options["drop"] else 0),
               "flagged": len(flags), "by_benchmark": by_benchmark, "items": index.stats.by_benchmark,
               "items_too_short": index.stats.too_short, "settings": options}
    return decisions, summary


def contamination_report(sources_examples: Mapping[str, Iterable[Mapping[str, Any]]],
                         against: Sequence[str] = DEFAULT_AGAINST, data_dir: str | None = DEFAULT_DATA_DIR,
                         world_dir: str | None = None, n: int = 13, min_n: int = 8) -> dict[str, Any]:
    """Contamination counts of SFT sources for a study report (nothing is dropped here).

    `sources_examples`: source name -> data-contract examples (`messages` or `text`). Returns
    `{"against": [...], "ngram": n, "sources": {source: {"records", "flagged", "by_benchmark", "flagged_ids"}}}`
    where `flagged_ids` maps each flagged example id to its first match (benchmark, item_id, span).
    """
    index = build_index(against, data_dir, world_dir, n, min_n)
    sources = {}
    for source, examples in sources_examples.items():
        examples = list(examples)
        texts = ["\n".join(m["content"] for m in ex["messages"]) if "messages" in ex else ex.get("text", "")
                 for ex in examples]
        flags = flag_records(index, texts)
        by_benchmark = dict.fromkeys(against, 0)
        for found in flags.values():
            for bench in {m["benchmark"] for m in found}:
                by_benchmark[bench] += 1
        sources[source] = {
            "records": len(examples), "flagged": len(flags), "by_benchmark": by_benchmark,
            "flagged_ids": {str(examples[i].get("id", i)): {k: found[0][k] for k in ("benchmark", "item_id", "span")}
                            for i, found in flags.items()},
        }
    return {"against": list(against), "ngram": n, "min_ngram": min_n, "sources": sources}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mixtune data decontaminate", description=__doc__.splitlines()[0])
    add_common_args(p)
    p.add_argument("--against", default=",".join(DEFAULT_AGAINST),
                   help=f"benchmarks, comma-separated [default {','.join(DEFAULT_AGAINST)}; mini-lab: "
                   f"{','.join(MINILAB)}]")
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help=f"real benchmark files [default {DEFAULT_DATA_DIR}]")
    p.add_argument("--world-dir", default=None, help="mini-lab world folder [default runs/world-mini]")
    p.add_argument("--ngram", type=int, default=13, help="words per n-gram [default 13]")
    p.add_argument("--min-ngram", type=int, default=8,
                   help="items shorter than this many words are not indexed; shorter items use n = their length "
                   "[default 8]")
    p.add_argument("--drop", action="store_true", help="drop flagged records (default: keep them, listed)")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    against = [a.strip() for a in args.against.split(",") if a.strip()]
    options = {"against": against, "data_dir": args.data_dir, "world_dir": args.world_dir, "ngram": args.ngram,
               "min_ngram": args.min_ngram, "drop": args.drop}
    try:
        if not 1 <= args.min_ngram <= args.ngram:
            raise CorpusError(f"need 1 <= --min-ngram ({args.min_ngram}) <= --ngram ({args.ngram})")
        _index_from(options)  # a bad benchmark name or a missing file fails here, before any work
    except (CorpusError, UnknownTaskError, BenchmarkDataError) as e:
        print(f"mixtune data decontaminate: {e}", file=sys.stderr)
        return 2
    return run_verb(args, "decontaminate", "mixtune.evaluate.contamination:decontam_map",
                    "mixtune.evaluate.contamination:decontam_reduce", options)
