"""`mixtune data check FILE [FILE ...] [--format F]`: validate data files of any supported format.

Every record of every file is read with the reader a training run uses (`formats.read_examples`, SFT and preference
formats alike), so a file that passes here loads in a run. For each file it prints the format, the number of records,
examples and bad records, the examples per ability, how many examples carry each field, the bad records per field,
the counted notes (e.g. tied pairs of ranked lists), then every bad record as `file:line: field: problem`; at the end
a total per format. Exit status: 0 when every record is valid, 1 when some record is not (all of them listed), 2 for
a missing file or an unknown format (one line each).

    python -m mixtune.data.check ../shared/data/hh_rlhf/harmless-base-test.jsonl.gz
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from mixtune.data.formats import FORMATS, DataError, ReadResult, read_examples

BOOKKEEPING = ("id", "source", "ability", "task_type")
"""Fields every example has (filled by the reader), left out of the per-field counts."""


def problem_field(message: str, path: str) -> str:
    """The top-level field of a `path:n: field: problem` message (`messages[2].role` -> `messages`)."""
    rest = message[len(path) + 1:].split(": ", 2)
    name = rest[1] if len(rest) > 1 else "?"
    return name.split("[", 1)[0].split(".", 1)[0]


def describe(path: str, result: ReadResult) -> list[str]:
    """The report lines of one file (every bad record listed)."""
    abilities = Counter(ex["ability"] for ex in result.examples)
    fields = Counter(k for ex in result.examples for k in ex if k not in BOOKKEEPING)
    bad_fields = Counter(problem_field(p, path) for p in result.skipped)
    header = (f"{path}: format {result.format}, {result.n_records} records ({result.position}), "
              f"{len(result.examples)} examples, {len(result.skipped)} bad records")
    lines = [header, "  examples per ability: " + _counts(abilities)]
    lines.append("  examples with field: " + _counts(fields))
    if bad_fields:
        lines.append("  bad records per field: " + _counts(bad_fields))
    if result.notes:
        lines.append("  counted: " + _counts(Counter(result.notes)))
    lines += [f"  {p}" for p in result.skipped]
    return lines


def _counts(counter: Counter) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))) or "none"


def check_files(paths: Sequence[str], fmt: str = "auto", out=print) -> int:
    """Validate `paths`, print the report with `out`; returns the exit status (0 ok, 1 bad records, 2 unusable)."""
    per_format: dict[str, Counter] = {}
    status = 0
    for path in paths:
        if not Path(path).is_file():
            out(f"mixtune data check: {path}: no such file")
            status = 2
            continue
        try:
            result = read_examples(path, format=fmt, skip_invalid=True)
        except DataError as e:  # nothing readable to detect the format from, or unknown keys
            out(f"mixtune data check: {e}")
            status = max(status, 1)
            continue
        for line in describe(path, result):
            out(line)
        totals = per_format.setdefault(result.format, Counter())
        totals.update(files=1, records=result.n_records, examples=len(result.examples), bad=len(result.skipped))
        if result.skipped:
            status = max(status, 1)
    for name, totals in sorted(per_format.items()):
        out(f"total {name}: {totals['files']} file(s), {totals['records']} records, {totals['examples']} examples, "
            f"{totals['bad']} bad records")
    return status


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mixtune data check", description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", metavar="FILE", help="JSONL or JSON-list data files (.gz allowed)")
    parser.add_argument("--format", default="auto", help=f"record format: auto, {', '.join(FORMATS)}")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.format != "auto" and args.format not in FORMATS:
        print(f"mixtune data check: unknown format {args.format!r}; valid: auto, {', '.join(FORMATS)}",
              file=sys.stderr)
        return 2
    return check_files(args.files, args.format)


if __name__ == "__main__":
    sys.exit(main())
