"""`mixtune data <verb> INPUT --out OUTPUT [options]`: dedup, decontaminate, filter, synth, check.

Each sub-verb is a "module:function" taking argv and returning an exit code, imported only when it runs (as
`mixtune.cli` does for verbs): so `mixtune data --help` is fast, and the verbs that need benchmark loaders or
generation backends live on the evaluate side of the import rule (data never imports evaluate or model).
"""

from __future__ import annotations

from mixtune.cliutil import dispatch

# sub-verb -> ("module:function", one-line help).
DATA_VERBS: dict[str, tuple[str, str]] = {
    "dedup": ("mixtune.data.dedup:main", "exact and near-duplicate removal (MinHash LSH) and the line rule"),
    "decontaminate": ("mixtune.evaluate.contamination:main", "flag or drop records overlapping benchmark test items"),
    "filter": ("mixtune.model.reference_filter:main", "Gopher / C4 / FineWeb heuristics, then a reference-model filter"),
    "synth": ("mixtune.evaluate.synth:main", "self-instruct synthesis of SFT records from seed tasks"),
    "check": ("mixtune.data.check:main", "check records of any format and every data verb's output"),
}


def main(argv: list[str]) -> int:
    return dispatch("mixtune data", DATA_VERBS, argv, "<verb> INPUT --out OUTPUT [options]")
