"""Heuristic quality filters: datatrove's reference implementations of the Gopher, C4 and FineWeb rules.

The rules are datatrove's own classes (Rae et al. 2021 Gopher quality and repetition rules, Raffel et al. 2020 C4,
Penedo et al. 2024 FineWeb), called through their `filter(doc)` method on a fresh `Document` per record and filter,
so that a filter that edits the document (C4QualityFilter drops lines from `doc.text`) never changes the record we
write: OUTPUT keeps records unchanged, and each filter judges the original text. The first filter that rejects a
record gives the reason `<filter>:<datatrove reason>`.

Thresholds are the filters' constructor arguments, set in an options file (YAML or JSON)
`{filters: [gopher_quality, c4], gopher_quality: {min_doc_words: 20}, c4: {min_num_sentences: 2}}` or by
`--set gopher_quality.min_doc_words=20` flags (flags win); an unknown filter or argument is an error naming the
valid ones. Word splitting uses datatrove's English tokenizer (spaCy's, offline: a blank `en` pipeline).
"""

from __future__ import annotations

import importlib
import inspect
import json
from pathlib import Path
from typing import Any

import yaml

from mixtune.data.corpus_io import CorpusError

FILTERS: dict[str, str] = {
    "gopher_quality": "datatrove.pipeline.filters.gopher_quality_filter:GopherQualityFilter",
    "gopher_repetition": "datatrove.pipeline.filters.gopher_repetition_filter:GopherRepetitionFilter",
    "c4": "datatrove.pipeline.filters.c4_filters:C4QualityFilter",
    "fineweb": "datatrove.pipeline.filters.fineweb_quality_filter:FineWebQualityFilter",
}
"""Filter name -> datatrove class, imported on use."""
DEFAULT_FILTERS = ("gopher_repetition", "gopher_quality", "c4", "fineweb")
NOT_SETTABLE = ("exclusion_writer", "language")


def filter_class(name: str) -> type:
    if name not in FILTERS:
        raise CorpusError(f"unknown filter {name!r}; valid filters: {', '.join(FILTERS)}")
    module, cls = FILTERS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def settable(name: str) -> list[str]:
    """Constructor arguments of a filter that a recipe may set (its thresholds and switches)."""
    params = inspect.signature(filter_class(name).__init__).parameters
    return [p for p in params if p not in ("self", *NOT_SETTABLE)]


def parse_value(text: str) -> Any:
    """A `--set` value: YAML scalars and lists (`20`, `0.3`, `false`, `[[2, 0.2]]`)."""
    return yaml.safe_load(text)


def load_options(path: str | None, sets: list[str], filters: str | None) -> dict[str, Any]:
    """{"filters": [names in order], name: {constructor kwargs}} from an options file, `--set` flags, `--filters`."""
    opts: dict[str, Any] = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise CorpusError(f"{path}: options file not found")
        loaded = json.loads(p.read_text()) if p.suffix == ".json" else yaml.safe_load(p.read_text())
        if not isinstance(loaded, dict):
            raise CorpusError(f"{path}: expected a mapping of filter name -> settings")
        opts = loaded
    for item in sets:
        key, sep, value = item.partition("=")
        name, dot, arg = key.partition(".")
        if not sep or not dot:
            raise CorpusError(f"--set {item!r}: expected filter.argument=value")
        opts.setdefault(name, {})[arg] = parse_value(value)
    names = filters.split(",") if filters else opts.get("filters", list(DEFAULT_FILTERS))
    out: dict[str, Any] = {"filters": [n.strip() for n in names if n.strip()]}
    for key, value in opts.items():
        if key not in ("filters", "reference", *FILTERS):
            raise CorpusError(f"options: unknown key {key!r}; valid: filters, reference, {', '.join(FILTERS)}")
        if key != "filters":
            out[key] = value
    for name in out["filters"]:
        kwargs = out.setdefault(name, {})
        valid = settable(name)
        bad = [k for k in kwargs if k not in valid]
        if bad:
            raise CorpusError(f"options: {name}: unknown argument {bad[0]!r}; valid: {', '.join(valid)}")
    return out


def build_filters(options: dict[str, Any]) -> list[tuple[str, Any]]:
    """[(name, datatrove filter)] in the order given."""
    return [(name, filter_class(name)(**_tuples(options.get(name, {})))) for name in options["filters"]]


def _tuples(kwargs: dict[str, Any]) -> dict[str, Any]:
    """YAML lists where datatrove expects tuples (GopherRepetitionFilter's top_n_grams / dup_n_grams)."""
    return {k: tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v
            for k, v in kwargs.items()}


def verdict(filters: list[tuple[str, Any]], text: str, doc_id: str) -> str | None:
    """None if every filter keeps the text, else `<filter>:<reason>` of the first that rejects it."""
    from datatrove.data import Document

    for name, flt in filters:
        result = flt.filter(Document(text=text, id=doc_id))  # a fresh document: C4 edits doc.text
        keep, reason = (result, None) if isinstance(result, bool) else result
        if not keep:
            return f"{name}:{reason or 'rejected'}"
    return None
