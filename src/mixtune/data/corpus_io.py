"""Corpus records for the data verbs: read JSONL / JSON-list / parquet records with their text, write the kept ones.

A corpus record is either a plain document (`{"id", "text"}`) or a record of any supported SFT format (alpaca,
sharegpt, messages, gsm8k, humaneval; `mixtune.data.formats` converts it to messages, this module does not re-read
those formats) or a preference pair (`chosen` / `rejected`, strings or message lists, optional `prompt`). Its *text*
(what dedup, decontamination and filters look at) is the document's text or its messages' contents joined by
newlines.

Outputs keep records unchanged: a JSONL input's kept lines are copied byte for byte, a JSON list is re-serialised
item by item (same fields and values), a parquet table keeps its schema (`Table.take`). Input order is kept. Every
record a verb drops, flags or edits goes to the side file `OUTPUT.removed.jsonl` with its reason, and the summary goes
to `OUTPUT.summary.json`.

A bad record stops the verb with one line `file:line: field: problem (and N more invalid records)` (`CorpusError`).
"""

from __future__ import annotations

import gzip
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixtune.data.formats import FORMATS, RecordError, detect_format
from mixtune.runs import atomic_write_bytes, atomic_write_json

PREFERENCE = "preference"
"""Format name of `{prompt?, chosen, rejected}` records (HH-RLHF style strings or message lists)."""


class CorpusError(ValueError):
    """Unreadable input; the message is one line naming the file, the record and the field."""


@dataclass
class Corpus:
    """A file's records in order: ids, texts and where each came from; enough to write the kept ones unchanged."""

    path: Path
    kind: str
    """jsonl | json | parquet: how the file is stored (a JSON list is `json`)."""
    format: str
    """text | alpaca | sharegpt | messages | gsm8k | humaneval | preference."""
    ids: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    """1-based line (jsonl), item (json) or row (parquet) of each record."""
    lines: list[str] | None = None
    """The raw JSONL lines (kept byte for byte in the output)."""
    records: list[dict] | None = None
    """The parsed records (json list and parquet)."""
    table: Any = None
    """The pyarrow table of a parquet input."""
    invalid: dict[int, str] = field(default_factory=dict)
    """index -> `file:n: field: problem` of records that could not be read (their text is ""), with --invalid."""

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def position_name(self) -> str:
        return {"jsonl": "line", "json": "item", "parquet": "row"}[self.kind]

    def where(self, index: int) -> str:
        return f"{self.path}:{self.positions[index]}"


def file_kind(path: str | Path) -> str:
    """jsonl | json | parquet from the file name (`.gz` allowed on the JSON kinds); a `.json` file may hold JSONL."""
    name = Path(path).name.lower().removesuffix(".gz")
    if name.endswith(".parquet"):
        return "parquet"
    return "json" if name.endswith(".json") else "jsonl"


def _open_text(path: Path) -> str:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return f.read()


def _messages_text(value: Any, name: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in value):
        return "\n".join(m["content"] for m in value)
    raise RecordError(name, "expected a string or a list of {role, content} messages")


def record_text(rec: Any, fmt: str, text_field: str = "text") -> str:
    """The text a data verb looks at; raises RecordError(field, problem) for a record the format cannot read."""
    if not isinstance(rec, dict):
        raise RecordError("<record>", f"expected an object, got {type(rec).__name__}")
    if fmt == "text":
        value = rec.get(text_field)
        if text_field not in rec:
            raise RecordError(text_field, "missing")
        if not isinstance(value, str) or not value.strip():
            raise RecordError(text_field, "expected a non-empty string")
        return value
    if fmt == PREFERENCE:
        parts = [_messages_text(rec[k], k) for k in ("prompt", "chosen", "rejected") if k in rec]
        if "chosen" not in rec or "rejected" not in rec:
            raise RecordError("chosen" if "chosen" not in rec else "rejected", "missing")
        return "\n".join(parts)
    part = FORMATS[fmt](rec)
    return "\n".join(m["content"] for m in part["messages"])


def record_id(rec: dict, source: str, index: int) -> str:
    """The record's `id` (or HumanEval `task_id`) as a string, else `<source>/<0-based index>` (as formats does)."""
    for key in ("id", "task_id"):
        value = rec.get(key)
        if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip():
            return str(value)
    return f"{source}/{index}"


def _detect(rec: Any) -> str:
    keys = set(rec) if isinstance(rec, dict) else set()
    if {"chosen", "rejected"} <= keys and not keys & {"messages", "conversations"}:
        return PREFERENCE
    return detect_format(rec)


def _parse_rows(path: Path, kind: str) -> tuple[list[tuple[int, Any, str | None]], list[str] | None, Any]:
    """[(position, record or None, JSON problem or None)], the raw lines (jsonl) and the table (parquet)."""
    if kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowException) as e:
            raise CorpusError(f"{path}: not a readable parquet file ({e})") from None
        return [(i + 1, rec, None) for i, rec in enumerate(table.to_pylist())], None, table
    text = _open_text(path)
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise CorpusError(f"{path}:{e.lineno}: <json>: invalid JSON list: {e.msg} (column {e.colno})") from None
        return [(i + 1, rec, None) for i, rec in enumerate(items)], None, None
    rows, lines = [], []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((n, json.loads(line), None))
        except json.JSONDecodeError as e:
            rows.append((n, None, f"invalid JSON: {e.msg} (column {e.colno})"))
        lines.append(line)
    return rows, lines, None


INVALID_POLICIES = ("error", "keep", "drop")


def read_corpus(path: str | Path, format: str = "auto", text_field: str = "text", invalid: str = "error") -> Corpus:
    """Read and check every record of `path`.

    invalid="error" raises CorpusError (one line: the first bad record and how many more); "keep" / "drop" read on,
    recording each bad record in `Corpus.invalid` (text "") for the verb to pass through or drop, and list.
    """
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"{path}: input file not found")
    valid = ["auto", *FORMATS, PREFERENCE]
    if format not in valid:
        raise CorpusError(f"unknown format {format!r}; valid: {', '.join(valid)}")
    if invalid not in INVALID_POLICIES:
        raise CorpusError(f"unknown --invalid policy {invalid!r}; valid: {', '.join(INVALID_POLICIES)}")
    kind = file_kind(path)
    rows, lines, table = _parse_rows(path, kind)
    kind = "json" if lines is None and table is None else ("parquet" if table is not None else "jsonl")
    if not rows:
        raise CorpusError(f"{path}: no records")
    if format == "auto":
        first = next((rec for _, rec, bad in rows if bad is None), None)
        try:
            format = "text" if isinstance(first, dict) and text_field in first else _detect(first)
        except ValueError as e:
            raise CorpusError(f"{path}:{rows[0][0]}: <record>: {e}") from None
    corpus = Corpus(path=path, kind=kind, format=format, lines=lines, table=table,
                    records=[rec for _, rec, _ in rows] if lines is None else None)
    source = path.name.split(".")[0]
    problems: list[str] = []
    for index, (n, rec, bad) in enumerate(rows):
        corpus.positions.append(n)
        corpus.ids.append(record_id(rec, source, index) if isinstance(rec, dict) else f"{source}/{index}")
        try:
            if bad is not None:
                raise RecordError("<json>", bad)
            corpus.texts.append(record_text(rec, format, text_field))
        except RecordError as e:
            problems.append(f"{path}:{n}: {e.field}: {e.problem}")
            corpus.texts.append("")
            corpus.invalid[index] = problems[-1]
    if problems and invalid == "error":
        more = f" (and {len(problems) - 1} more invalid records)" if len(problems) > 1 else ""
        raise CorpusError(f"{problems[0]}{more} [{format} format; numbers are 1-based {corpus.position_name}s; "
                          "--invalid keep|drop reads on]")
    return corpus


def block(n: int, rank: int, world_size: int) -> range:
    """The contiguous slice of `n` records that task `rank` of `world_size` handles (blocks keep input order)."""
    size, extra = divmod(n, world_size)
    start = rank * size + min(rank, extra)
    return range(start, start + size + (1 if rank < extra else 0))


# ------------------------------------------------------------------------------------------------------- writing
def side_paths(out: str | Path) -> tuple[Path, Path]:
    """(summary file, removed-records file) beside OUTPUT."""
    out = Path(out)
    return out.with_name(out.name + ".summary.json"), out.with_name(out.name + ".removed.jsonl")


def _edited(rec: dict, text_field: str, new_text: str) -> dict:
    return {**rec, text_field: new_text}


def write_outputs(corpus: Corpus, out: str | Path, decisions: dict[int, dict], summary: dict,
                  text_field: str = "text") -> dict:
    """Write kept records to `out` (same kind as `out`'s name, unchanged unless edited), the side file and summary.

    `decisions[index]` is `{"action": "dropped" | "flagged" | "edited", "reason": ..., **details}`; an edited
    record carries `text` (its new text field). Records without a decision are kept as they are. Returns the
    summary with the file names added.
    """
    out = Path(out)
    summary_path, removed_path = side_paths(out)
    kept = [i for i in range(len(corpus)) if decisions.get(i, {}).get("action") != "dropped"]
    out_kind = file_kind(out)
    if out_kind == corpus.kind == "jsonl":
        assert corpus.lines is not None
        body = "".join((json.dumps(_edited(json.loads(corpus.lines[i]), text_field, decisions[i]["text"]),
                                   ensure_ascii=False) if decisions.get(i, {}).get("action") == "edited"
                        else corpus.lines[i]) + "\n" for i in kept)
        data = body.encode()
    elif out_kind == corpus.kind == "parquet" and not any(d.get("action") == "edited" for d in decisions.values()):
        data = _parquet_bytes(corpus.table.take(kept))
    else:
        records = _records(corpus, kept, decisions, text_field)
        data = _serialise(records, out_kind, corpus)
    if out.suffix == ".gz":
        data = gzip.compress(data, mtime=0)
    atomic_write_bytes(out, data)
    rows = []
    for i in sorted(decisions):
        d = {k: v for k, v in decisions[i].items() if k != "text"}
        rows.append({"id": corpus.ids[i], "index": i, "where": corpus.where(i), **d})
    atomic_write_bytes(removed_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())
    summary = {**summary, "output": str(out), "removed_file": str(removed_path)}
    atomic_write_json(summary_path, summary)
    return summary


def _records(corpus: Corpus, kept: list[int], decisions: dict[int, dict], text_field: str) -> list[dict]:
    if corpus.records is not None:
        source = corpus.records
    else:
        assert corpus.lines is not None
        source = [json.loads(line) for line in corpus.lines]
    return [_edited(source[i], text_field, decisions[i]["text"]) if decisions.get(i, {}).get("action") == "edited"
            else source[i] for i in kept]


def _parquet_bytes(table: Any) -> bytes:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def _serialise(records: list[dict], out_kind: str, corpus: Corpus) -> bytes:
    if out_kind == "parquet":
        import pyarrow as pa

        schema = corpus.table.schema if corpus.table is not None else None
        return _parquet_bytes(pa.Table.from_pylist(records, schema=schema))
    if out_kind == "json":
        items = ",\n".join(json.dumps(r, ensure_ascii=False) for r in records)
        return (f"[\n{items}\n]\n" if records else "[]\n").encode()
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
