"""Readers: SFT data files (alpaca, sharegpt, OpenAI messages, GSM8K, HumanEval, plain text) and preference data
(mixtune pairs, TRL standard / conversational, Anthropic HH, ranked lists: `data/preference.py`) → example records.

An example follows the data contract (DESIGN.md, docs/CONTRACTS.md):
`{id, source, ability, task_type, messages: [{role, content}], ...}` with optional `answer` (math), `tests` +
`entry_point` (code), `instruction_ids` + `kwargs` (verifiable instructions). A `text` example carries `text` instead
of `messages` (every token is trained). A preference pair carries the prompt turns in `messages` plus `chosen`,
`rejected` and `weight` (`data/preference.py`).

Files read here are JSONL or one JSON list, optionally gzipped (`data/hf_sources.py` reads parquet, csv, arrow,
folders, save_to_disk folders and LLaMA-Factory entries into the same `convert_records`). Every record is validated;
a problem reads `{path}:{n}: {field}: {problem}` where n is the 1-based line of a JSONL file or the 1-based position of
the item in a JSON list (`file: row N`, 0-based, for columnar files; `ReadResult.position` and the `DataError` header
say which). Nothing is dropped silently: by default all problems raise one `DataError`; with `skip_invalid=True` bad
records are skipped and their messages returned.

Our own code: the formats are plain dict records, no library reads them with validation and line numbers.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixtune.data import preference
from mixtune.data.records import Expanded, RecordError
from mixtune.data.records import text_field as _text
from mixtune.data.records import turns as _turns
from mixtune.errors import UserError
from mixtune.jsonl import iter_lines, parse_line

MAX_LISTED = 20
"""Problems listed in a DataError before `... and N more`."""

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
KEEP_FIELDS = ("answer", "tests", "entry_point", "instruction_ids", "kwargs", "chosen", "rejected", "task_id")
"""Extra fields of a mixtune (messages-format) record kept on the example."""


class DataError(UserError, ValueError):
    """Invalid data; `problems` holds every `path:n: field: problem` message."""

    def __init__(self, header: str, problems: list[str] | None = None):
        problems = list(problems or [])
        self.problems = problems
        listed = problems[:MAX_LISTED]
        more = len(problems) - len(listed)
        tail = [f"... and {more} more"] if more else []
        super().__init__("\n".join([header, *listed, *tail]))


@dataclass
class ReadResult:
    """Examples read from one source, plus one message per skipped record (empty unless skip_invalid)."""

    examples: list[dict]
    skipped: list[str] = field(default_factory=list)
    format: str = ""
    position: str = "1-based lines"
    """What the number in a message counts: 1-based lines (JSONL) or items (JSON list), 0-based rows (columnar)."""
    indices: list[int] = field(default_factory=list)
    """The 0-based record position of each example (a streamed draw keeps only some)."""
    notes: dict[str, int] = field(default_factory=dict)
    """What valid records left out on purpose, counted (e.g. tied pairs of ranked lists)."""
    n_records: int = 0
    """Records in the source (read or passed over); a ranked list gives several examples from one record."""
    warnings: list[str] = field(default_factory=list)
    """Said once per file: fields that look like misspellings of a field the format reads (they are ignored)."""


# -------------------------------------------------------------------------------------------------- converters
def from_alpaca(rec: dict) -> dict:
    """instruction (+ blank line + input when non-empty) → user; output → assistant."""
    prompt = _text(rec, "instruction")
    extra = _text(rec, "input", allow_empty=True) if rec.get("input") is not None else ""
    if extra.strip():
        prompt = f"{prompt}\n\n{extra}"
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": _text(rec, "output")}]}


def from_sharegpt(rec: dict) -> dict:
    """FastChat/ShareGPT: `conversations: [{from: human|gpt|system|user|assistant, value}]`."""
    return {"messages": _turns(rec, "conversations", "from", "value", SHAREGPT_ROLES)}


def from_messages(rec: dict) -> dict:
    """OpenAI `messages: [{role, content}]`; mixtune's own records keep their extra fields (KEEP_FIELDS)."""
    roles = {r: r for r in ("system", "user", "assistant")}
    out = {"messages": _turns(rec, "messages", "role", "content", roles)}
    out.update({k: rec[k] for k in KEEP_FIELDS if k in rec})
    if "ability" in rec:
        out["ability"] = _text(rec, "ability")
    if "task_type" in rec:
        if rec["task_type"] not in (0, 1) or isinstance(rec["task_type"], bool):
            raise RecordError("task_type", f"expected 0 or 1, got {rec['task_type']!r}")
        out["task_type"] = rec["task_type"]
    return out


def from_gsm8k(rec: dict) -> dict:
    """question/answer (GSM8K) or query/response (GSM8K-RFT) → user/assistant; `answer` = the number after ####."""
    q_key, a_key = ("query", "response") if "query" in rec else ("question", "answer")
    question, solution = _text(rec, q_key), _text(rec, a_key)
    if "####" not in solution:
        raise RecordError(a_key, "no '#### <answer>' line")
    final = solution.rsplit("####", 1)[1].strip().replace(",", "")
    if not final:
        raise RecordError(a_key, "empty answer after ####")
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": solution}],
            "answer": final}


def from_humaneval(rec: dict) -> dict:
    """prompt (signature + docstring) → user; canonical_solution (the body) → assistant; test → tests."""
    out = {"messages": [{"role": "user", "content": _text(rec, "prompt")},
                        {"role": "assistant", "content": _text(rec, "canonical_solution")}]}
    if "test" in rec:
        out["tests"] = _text(rec, "test")
    if "entry_point" in rec:
        out["entry_point"] = _text(rec, "entry_point")
    if "task_id" in rec:
        out["id"] = _text(rec, "task_id")
    return out


def from_text(rec: dict) -> dict:
    """`{text}`: a plain document, every token trained."""
    return {"text": _text(rec, "text")}


FORMATS: dict[str, Callable[[dict], dict]] = {
    "alpaca": from_alpaca,
    "sharegpt": from_sharegpt,
    "messages": from_messages,
    "gsm8k": from_gsm8k,
    "humaneval": from_humaneval,
    "text": from_text,
    # preference pairs (data/preference.py)
    "pairs": preference.from_pairs,
    "trl_standard": preference.from_trl_standard,
    "trl_conversational": preference.from_trl_conversational,
    "hh": preference.from_hh,
    "ranked": preference.from_ranked,
}
"""Record converters: record → partial example (messages/text + extra fields), or an `Expanded` of several (a
ranked list's pairs); they raise RecordError."""

DEFAULT_ABILITY = {"alpaca": "general", "sharegpt": "general", "messages": "general", "gsm8k": "math",
                   "humaneval": "code", "text": "text", "pairs": "preference", "trl_standard": "preference",
                   "trl_conversational": "preference", "hh": "preference", "ranked": "preference"}


def detect_format(rec: Any) -> str:
    """The format whose keys the record has; raises ValueError naming the keys seen and the valid formats."""
    keys = set(rec) if isinstance(rec, dict) else set()
    if (pref := preference.detect(rec)) is not None:
        return pref
    if "conversations" in keys:
        return "sharegpt"
    if "messages" in keys:
        return "messages"
    if {"instruction", "output"} <= keys:
        return "alpaca"
    if {"prompt", "canonical_solution"} <= keys:
        return "humaneval"
    if {"question", "answer"} <= keys or {"query", "response"} <= keys:
        return "gsm8k"
    if "text" in keys:
        return "text"
    raise ValueError(f"cannot detect the format from keys {sorted(keys)}; give one of {sorted(FORMATS)}")


# ------------------------------------------------------------------------------------------------------ reading
def iter_records(path: str | Path) -> tuple[str, list[tuple[int, Any, str | None]]]:
    """(position kind, [(n, record or None, problem or None)]) for a JSONL or JSON-list file (.gz allowed).

    A file whose first non-blank character is `[` is a JSON list (n = 1-based item); otherwise JSONL
    (n = 1-based line, split on `\n` only, as JSON Lines defines; blank lines are skipped but counted). A line that
    is not UTF-8 or not JSON is a problem of that line; the other lines are still read (`mixtune.jsonl`).
    """
    lines = list(iter_lines(path, DataError, "data file"))
    first = next((ln.text for ln in lines if ln.text is None or ln.text.strip()), "")
    if first is not None and first.lstrip().startswith("["):
        bad = next((ln for ln in lines if ln.problem), None)
        if bad is not None:
            return "line", [(bad.number, None, bad.problem)]
        try:
            items = json.loads("\n".join(ln.text for ln in lines))
        except json.JSONDecodeError as e:
            return "line", [(e.lineno, None, f"invalid JSON list: {e.msg} (column {e.colno})")]
        return "item", [(i + 1, rec, None) for i, rec in enumerate(items)]
    rows = []
    for line in lines:
        if line.text is not None and not line.text.strip():
            continue
        value, problem = parse_line(line)
        rows.append((line.number, value, problem))
    return "line", rows


def _record_id(value: Any) -> str:
    """A record's own id: a non-empty string or an integer (kept as its string)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise RecordError("id", f"expected a string or integer, got {type(value).__name__}")
    if not value.strip():
        raise RecordError("id", "empty")
    return value


def _finish(part: dict, index: int, fmt: str, source: str, ability: str | None, task_type: int | None) -> dict:
    """Fill id/source/ability/task_type: explicit arguments win over the record's own, then format defaults."""
    ex = {"id": part.pop("id", None) or f"{source}/{index}", "source": source}
    own_ability = part.pop("ability", None)
    ex["ability"] = ability or own_ability or DEFAULT_ABILITY[fmt]
    own_type = part.pop("task_type", None)
    ex["task_type"] = task_type if task_type is not None else (
        own_type if own_type is not None else int(ex["ability"] == "knowledge"))
    ex.update(part)
    return ex


def check_format(format: str) -> None:
    if format != "auto" and format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; valid: {['auto', *sorted(FORMATS)]}")


def _first_at(first: str, current: str, position: str) -> str:
    """Where an earlier record is, short when it is in the same file: "line 8", "item 3", "row 2"."""
    first_file, first_pos = first.rsplit(":", 1)
    if first_file != current.rsplit(":", 1)[0]:
        return first
    first_pos = first_pos.strip()
    return f"{position.split()[-1].rstrip('s')} {first_pos}" if first_pos.isdigit() else first_pos


def read_examples(path: str | Path, format: str = "auto", source: str | None = None, ability: str | None = None,
                  task_type: int | None = None, skip_invalid: bool = False) -> ReadResult:
    """Read and validate every record of a JSONL / JSON-list file `path` into examples (see the module docstring
    for messages and ids; `data.hf_sources.read_source` reads every other kind of source the same way).

    source defaults to the file name without suffixes. Ids: the record's `id` (HumanEval: `task_id`) if present,
    else f"{source}/{index}" with the 0-based record index. Duplicate ids are a problem of the later record.
    Raises DataError (all problems, listing capped at 20) unless skip_invalid; an unknown format raises ValueError.
    """
    check_format(format)
    path = Path(path)
    position, rows = iter_records(path)
    return convert_records(((f"{path}:{n}", rec, bad) for n, rec, bad in rows), str(path), f"1-based {position}s",
                           format, source or path.name.split(".")[0], ability, task_type, skip_invalid)


class _Watched(dict):
    """A record that notes which fields its converter asked for (read, `get` or `in`), so a field the converter
    wanted and did not find can be matched against the fields nobody read: a misspelling (`instrcution`)."""

    def __init__(self, rec: dict):
        super().__init__(rec)
        self.asked: set[str] = set()

    def __getitem__(self, key):
        self.asked.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.asked.add(key)
        return super().get(key, default)

    def __contains__(self, key) -> bool:
        self.asked.add(key)
        return super().__contains__(key)

    def misspelled(self) -> dict[str, str]:
        """{field present but never read: the asked-for absent field it is close to}."""
        unread = [k for k in self if k not in self.asked and isinstance(k, str)]
        wanted = [k for k in self.asked if isinstance(k, str) and not dict.__contains__(self, k)]
        out = {}
        for key in wanted:
            close = difflib.get_close_matches(key, unread, n=1, cutoff=0.8)
            if close:
                out[close[0]] = key
        return out


def _misspelling_warnings(origin: str, fmt: str, seen: dict[tuple[str, str], int]) -> list[str]:
    return [f"{origin}: field {bad!r} in {n} record(s) looks like a misspelling of {good!r}, which the {fmt} "
            f"format reads; it is ignored (rename it, or map it with `columns`)" for (bad, good), n in seen.items()]


def convert_records(rows: Iterable[tuple[str, Any, str | None]], origin: str, position: str, format: str = "auto",
                    source: str = "", ability: str | None = None, task_type: int | None = None,
                    skip_invalid: bool = False, convert: Callable[[dict], dict] | None = None,
                    columns: dict[str, str] | None = None, keep: Container[int] | None = None) -> ReadResult:
    """Validate and convert `(where, record, problem)` rows (where: `file:line` or `file: row N`) into examples.

    `convert`: a converter the source implies (a LLaMA-Factory mapping; `format` then names its formatting).
    `columns`: {field the format reads: column of the file}, renamed before conversion. `keep`: only the records
    at these 0-based positions are converted and validated (a streamed draw); `ReadResult.indices` gives each
    example's position."""
    check_format(format)
    rows = iter(rows)
    result = ReadResult(examples=[], position=position)
    seen: dict[str, str] = {}
    misspelt: dict[tuple[str, str], int] = {}  # (field in the file, field the format reads) -> records
    n_rows = 0
    for index, (where, rec, bad) in enumerate(rows):
        n_rows += 1
        if keep is not None and index not in keep:
            continue
        if isinstance(rec, dict) and columns:
            rec = {**rec, **{field: rec[col] for field, col in columns.items() if col in rec}}
        if format == "auto" and convert is None and bad is None:
            try:
                format = detect_format(rec)
            except ValueError as e:
                raise DataError(f"{origin}: {e} ({where}); set format: on the source", []) from None
        try:
            if bad is not None:
                raise RecordError("<json>", bad)
            if not isinstance(rec, dict):
                raise RecordError("<record>", f"expected an object, got {type(rec).__name__}")
            watched = _Watched(rec)
            try:
                part = (convert or FORMATS[format])(watched)
            except RecordError as e:
                hint = next((k for k, v in watched.misspelled().items() if v == e.field), None)
                raise RecordError(e.field, e.problem + (f" (the record has {hint!r}: a misspelling?)" if hint else "")
                                  ) from None
            for pair in watched.misspelled().items():
                misspelt[pair] = misspelt.get(pair, 0) + 1
            made, counted = _examples_of(rec, part, index, format, source, ability, task_type)
            for ex in made:
                if ex["id"] in seen:
                    raise RecordError("id", f"duplicate id {ex['id']!r} "
                                            f"(first at {_first_at(seen[ex['id']], where, position)})")
            seen.update({ex["id"]: where for ex in made})
            result.examples.extend(made)
            result.indices.extend([index] * len(made))
            for k, v in counted.items():
                result.notes[k] = result.notes.get(k, 0) + v
        except RecordError as e:
            result.skipped.append(f"{where}: {e.field}: {e.problem}")
    if format == "auto" and convert is None:
        raise DataError(f"{origin}: no readable record to detect the format from", result.skipped)
    result.format, result.n_records = format, n_rows
    result.warnings = _misspelling_warnings(origin, format, misspelt)
    if result.skipped and not skip_invalid:
        raise DataError(f"{origin}: {len(result.skipped)} invalid record(s) of {n_rows} ({format} format; numbers "
                        f"are {position}); fix them or set skip_invalid: true on the source", result.skipped)
    return result


def _examples_of(rec: dict, part: dict | Expanded, index: int, fmt: str, source: str, ability: str | None,
                 task_type: int | None) -> tuple[list[dict], dict[str, int]]:
    """The finished example(s) of one converted record and its notes; an Expanded record's examples get the ids
    `<record id>/<j>` and `group` = the record id."""
    own_id = _record_id(rec["id"]) if "id" in rec else None
    if not isinstance(part, Expanded):
        if own_id is not None:
            part["id"] = own_id
        return [_finish(part, index, fmt, source, ability, task_type)], {}
    base = own_id or f"{source}/{index}"
    made = [_finish({**p, "id": f"{base}/{j}", "group": base}, index, fmt, source, ability, task_type)
            for j, p in enumerate(part.parts)]
    return made, part.notes
