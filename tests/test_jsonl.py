"""The one JSONL reader (issue: readers that never split or crash): records split on `\\n` only, non-UTF-8 bytes
named by file and line, a BOM accepted, and every reader of the project going through it."""

from __future__ import annotations

import gzip
import json

import pytest

from mixtune.data.formats import DataError, read_examples
from mixtune.jsonl import JsonlError, dumps_line, iter_jsonl, read_text
from mixtune.runs import write_jsonl

SEPARATORS = ["\u2028", "\u2029", "\u0085"]
"""Line breaks for str.splitlines() that are legal inside a JSON string (not control characters < U+0020)."""
CONTROLS = ["\x1c", "\x1d", "\x1e", "\x0b", "\x0c"]
"""Also line breaks for str.splitlines(); raw inside a string they make invalid JSON (JSON escapes them)."""


def chat(i: int, text: str) -> dict:
    return {"messages": [{"role": "user", "content": f"q{i} {text}"}, {"role": "assistant", "content": f"a{i}"}]}


@pytest.mark.parametrize("sep", SEPARATORS, ids=[f"U+{ord(s):04X}" for s in SEPARATORS])
def test_a_line_separator_inside_a_string_is_part_of_the_record(tmp_path, sep):
    path = tmp_path / "d.jsonl"
    # written raw (ensure_ascii=False keeps the separator as the character itself, as many tools write it)
    path.write_text("".join(json.dumps(chat(i, f"x{sep}y"), ensure_ascii=False) + "\n" for i in range(3)),
                    encoding="utf-8", newline="")
    assert sep in path.read_bytes().decode("utf-8")
    rows = list(iter_jsonl(path))
    assert [n for n, _ in rows] == [1, 2, 3]
    assert rows[1][1]["messages"][0]["content"] == f"q1 x{sep}y"
    examples = read_examples(path).examples  # the SFT reader: no record split, no id shifted
    assert [ex["id"] for ex in examples] == ["d/0", "d/1", "d/2"]


@pytest.mark.parametrize("ctrl", CONTROLS, ids=[f"0x{ord(c):02x}" for c in CONTROLS])
def test_a_raw_control_character_is_one_problem_of_its_own_line(tmp_path, ctrl):
    path = tmp_path / "d.jsonl"
    lines = [json.dumps(chat(i, "x")) for i in range(3)]
    lines[1] = lines[1].replace("x", f"x{ctrl}y")  # raw: what a careless writer leaves
    path.write_bytes(("\n".join(lines) + "\n").encode())
    with pytest.raises(DataError) as err:
        read_examples(path)
    assert len(err.value.problems) == 1 and err.value.problems[0].startswith(f"{path}:2: <json>: invalid JSON")
    assert [ex["id"] for ex in read_examples(path, skip_invalid=True).examples] == ["d/0", "d/2"]  # ids not shifted


def test_non_utf8_is_reported_with_file_line_and_byte(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(JsonlError, match=r"bad\.jsonl:2: not UTF-8 \(byte 0xe9 at column 14\)"):
        list(iter_jsonl(path))
    with pytest.raises(DataError) as err:  # the SFT reader lists it as a problem of that line, reads the rest
        read_examples(path, format="text")
    assert err.value.problems == [f"{path}:2: <json>: not UTF-8 (byte 0xe9 at column 14)"]
    assert [ex["text"] for ex in read_examples(path, format="text", skip_invalid=True).examples] == ["ok"]


def test_a_bom_on_the_first_line_is_accepted(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(chat(0, "hi")).encode() + b"\n")
    assert read_examples(path).examples[0]["messages"][0]["content"] == "q0 hi"
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + json.dumps([chat(0, "hi")]).encode())
    assert len(read_examples(tmp_path / "bom.json").examples) == 1  # a JSON list with a BOM too


def test_gzip_crlf_and_blank_lines_keep_line_numbers(tmp_path):
    path = tmp_path / "d.jsonl.gz"
    with gzip.open(path, "wb") as f:
        f.write(b'{"a": 1}\r\n\r\n{"a": 2}\r\n')
    assert list(iter_jsonl(path)) == [(1, {"a": 1}), (3, {"a": 2})]


def test_written_records_read_back_exactly_even_with_lone_surrogates(tmp_path):
    rows = [{"t": "x\u2028y"}, {"t": "lone \ud800 surrogate"}, {"t": "émoji 🙂"}]
    path = write_jsonl(tmp_path / "w.jsonl", rows)
    assert [row for _, row in iter_jsonl(path)] == rows
    assert dumps_line(rows[0]).count("\n") == 1


def test_missing_file_and_folder_are_one_line_errors(tmp_path):
    with pytest.raises(JsonlError, match="nope.jsonl: file not found"):
        list(iter_jsonl(tmp_path / "nope.jsonl"))
    with pytest.raises(JsonlError, match="is a folder, expected a file"):
        read_text(tmp_path)
