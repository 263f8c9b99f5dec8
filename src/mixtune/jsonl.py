"""The one JSON Lines reader (ground floor): every JSONL file mixtune reads goes through `iter_lines`; files are
written with `mixtune.runs.write_jsonl` (atomically, one `dumps_line` per record).

JSON Lines (jsonlines.org) separates records by `\\n` only. `str.splitlines()` also breaks at U+2028, U+2029,
U+0085 and \\x1c–\\x1e, which are legal inside JSON strings, so it would split one valid record into two broken
ones and shift every later line number; here the file is split on the byte `\\n` (a trailing `\\r` is dropped).
Each line is decoded as strict UTF-8: a bad byte is reported as `file:line: not UTF-8 (byte 0x..)`, never a
traceback; a UTF-8 byte-order mark on the first line is accepted and dropped. `.gz` files are read transparently.
Line numbers are 1-based file lines; blank lines are skipped by `iter_jsonl` but counted.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, NamedTuple

from mixtune.errors import UserError

BOM = b"\xef\xbb\xbf"


class JsonlError(UserError, ValueError):
    """A JSONL file that cannot be read; the message is `file:line: problem` (or `file: problem`)."""


class Line(NamedTuple):
    """One line of a file: its 1-based number, its text (None when it is not UTF-8) and the decoding problem."""

    number: int
    text: str | None
    problem: str | None = None


def open_binary(path: str | Path) -> IO[bytes]:
    """The file opened for reading bytes, gunzipped when it ends in `.gz`."""
    path = Path(path)
    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")


def _decode(raw: bytes, number: int) -> Line:
    if number == 1 and raw.startswith(BOM):
        raw = raw[len(BOM):]
    raw = raw.rstrip(b"\n")
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    try:
        return Line(number, raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        return Line(number, None, f"not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})")


def iter_lines(path: str | Path, error: type[ValueError] = JsonlError, what: str = "file") -> Iterator[Line]:
    """Every line of a text file, split on `\\n` only. A missing path or a folder raises `error`."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{path}: is a folder, expected a {what}")
    if not path.is_file():
        raise error(f"{path}: {what} not found")
    with open_binary(path) as f:
        for number, raw in enumerate(f, start=1):  # binary iteration splits on b"\n" only
            yield _decode(raw, number)


def read_text(path: str | Path, error: type[ValueError] = JsonlError, what: str = "file") -> str:
    """The whole file as text (for JSON documents), with the same BOM and UTF-8 rules as `iter_lines`."""
    parts = []
    for line in iter_lines(path, error, what):
        if line.problem:
            raise error(f"{path}:{line.number}: {line.problem}")
        parts.append(line.text)
    return "\n".join(parts)


def parse_line(line: Line) -> tuple[Any, str | None]:
    """(value, None) for a line holding one JSON value, or (None, problem)."""
    if line.problem:
        return None, line.problem
    try:
        return json.loads(line.text), None
    except json.JSONDecodeError as e:
        return None, f"invalid JSON: {e.msg} (column {e.colno})"


def iter_jsonl(path: str | Path, error: type[ValueError] = JsonlError, what: str = "file",
               objects: bool = True) -> Iterator[tuple[int, Any]]:
    """(1-based line number, value) for each non-blank line; the first bad line raises `error("file:line: ...")`.

    `objects`: every value must be a JSON object."""
    for line in iter_lines(path, error, what):
        if line.text is not None and not line.text.strip():
            continue
        value, problem = parse_line(line)
        if problem is None and objects and not isinstance(value, dict):
            problem = f"expected a JSON object, got {type(value).__name__}"
        if problem:
            raise error(f"{path}:{line.number}: {problem}")
        yield line.number, value


def read_jsonl(path: str | Path, error: type[ValueError] = JsonlError, what: str = "file") -> list[dict[str, Any]]:
    """Every object of a JSONL file, in order."""
    return [obj for _, obj in iter_jsonl(path, error, what)]


def dumps_line(row: Any) -> str:
    """One JSON Lines record: UTF-8 text kept as is; U+2028/U+2029 stay inside their JSON string, which `iter_lines`
    never splits. Lone surrogates cannot be written as UTF-8, so they are escaped (`\\ud800`), which JSON allows."""
    return json.dumps(row, ensure_ascii=False).encode("utf-8", "backslashreplace").decode("utf-8") + "\n"
