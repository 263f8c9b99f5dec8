"""`mixtune data <verb> INPUT --out OUTPUT [options]`: dedup, decontaminate, filter, synth, check.

Each sub-verb is a "module:function" taking argv and returning an exit code, imported only when it runs (as
`mixtune.cli` does for verbs): so `mixtune data --help` is fast, and the verbs that need benchmark loaders or
generation backends live on the evaluate side of the import rule (data never imports evaluate or model).
"""

from __future__ import annotations

import importlib
import sys

# sub-verb -> ("module:function", one-line help).
DATA_VERBS: dict[str, tuple[str, str]] = {
    "dedup": ("mixtune.data.dedup:main", "exact and near-duplicate removal (MinHash LSH) and the line rule"),
    "decontaminate": ("mixtune.evaluate.contamination:main", "flag or drop records overlapping benchmark test items"),
    "filter": ("mixtune.model.reference_filter:main", "Gopher / C4 / FineWeb heuristics, then a reference-model filter"),
    "synth": ("mixtune.evaluate.synth:main", "self-instruct synthesis of SFT records from seed tasks"),
    "check": ("mixtune.data.check:main", "check records of any format and every data verb's output"),
}


def usage() -> str:
    lines = ["usage: mixtune data <verb> INPUT --out OUTPUT [options]", "", "verbs:"]
    lines += [f"  {verb:<14} {text}" for verb, (_, text) in DATA_VERBS.items()]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in DATA_VERBS:
        print(f"mixtune data: unknown verb {verb!r}; valid verbs: {', '.join(DATA_VERBS)}", file=sys.stderr)
        return 2
    module, function = DATA_VERBS[verb][0].split(":")
    try:
        loaded = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise
        print(f"mixtune data {verb}: not available in this build ({module} is missing)", file=sys.stderr)
        return 2
    return int(getattr(loaded, function)(rest) or 0)
