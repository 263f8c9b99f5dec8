"""LLaMA-Factory `dataset_info.json` entries: where an entry's data lies and the converter its mapping defines.

An entry (LLaMA-Factory data/README.md) names a local `file_name` (a file or folder beside dataset_info.json), a
`formatting` (alpaca, the default, or sharegpt), optional `columns` (alpaca: prompt / query / response / history /
system; sharegpt: messages / system) and for sharegpt `tags` (role_tag / content_tag and the role values user_tag /
assistant_tag / system_tag), and an optional `split`. The converter maps a record to mixtune's messages and the
record then goes through the same role checks as every other format (`formats.check_roles`).

Not read (each refused with a message, nothing downloaded): hub entries (hf_hub_url, ms_hub_url, script_url), preference
entries (`ranking: true`), tool-call turns (observation / function tags).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mixtune.data.formats import DataError
from mixtune.data.records import RecordError, check_roles

INFO_NAME = "dataset_info.json"
HUB_KEYS = ("hf_hub_url", "ms_hub_url", "script_url", "cloud_file_name")
ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "history": None, "system": None}
SHAREGPT_COLUMNS = {"messages": "conversations", "system": None}
SHAREGPT_TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                 "system_tag": "system"}


def split_info_path(path: str | Path) -> tuple[Path, str | None]:
    """`folder/dataset_info.json#name` -> (the json file, "name"); a path without `#` -> (path, None)."""
    text = str(path)
    if "#" in text:
        file, name = text.rsplit("#", 1)
        return Path(file), name or None
    return Path(text), None


def load_entry(info_file: Path, name: str | None) -> tuple[str, dict[str, Any]]:
    """(entry name, entry) of a dataset_info.json; a file with one entry needs no name."""
    try:
        info = json.loads(info_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{info_file}: not a readable dataset_info.json ({e})") from None
    if not isinstance(info, dict) or not info:
        raise DataError(f"{info_file}: expected an object of dataset entries")
    if name is None:
        if len(info) > 1:
            raise DataError(f"{info_file}: holds {len(info)} entries; name one with dataset_info: NAME or "
                            f"path: {info_file}#NAME (entries: {', '.join(sorted(info))})")
        name = next(iter(info))
    if name not in info:
        raise DataError(f"{info_file}: no entry {name!r}; entries: {', '.join(sorted(info))}")
    entry = info[name]
    hub = [k for k in HUB_KEYS if isinstance(entry, dict) and entry.get(k)]
    if not isinstance(entry, dict) or hub or not entry.get("file_name"):
        why = f"it points to a hub ({hub[0]}); nothing is downloaded: save it locally and give file_name" if hub \
            else "it has no file_name"
        raise DataError(f"{info_file}: entry {name!r} cannot be read: {why}")
    if entry.get("ranking"):
        raise DataError(f"{info_file}: entry {name!r} is a preference (ranking) dataset; mixtune reads pairs from "
                        "files with chosen/rejected fields, not from ranking entries")
    if entry.get("formatting", "alpaca") not in ("alpaca", "sharegpt"):
        raise DataError(f"{info_file}: entry {name!r}: formatting {entry['formatting']!r}; valid: alpaca, sharegpt")
    return name, entry


def entry_data_path(info_file: Path, entry: dict[str, Any]) -> Path:
    """The file or folder an entry reads, relative to the dataset_info.json's folder."""
    return info_file.parent / entry["file_name"]


def _text(rec: dict, key: str, where: str) -> str:
    value = rec.get(key)
    if value is None:
        raise RecordError(where, "missing")
    if not isinstance(value, str):
        raise RecordError(where, f"expected a string, got {type(value).__name__}")
    return value


def alpaca_converter(columns: dict[str, str | None]) -> Callable[[dict], dict]:
    """prompt (+ blank line + query) -> user, response -> assistant, after the history pairs and the system column
    (LLaMA-Factory's alpaca formatting)."""
    cols = {**ALPACA_COLUMNS, **columns}

    def convert(rec: dict) -> dict:
        messages = []
        if cols["system"] and rec.get(cols["system"]):
            messages.append({"role": "system", "content": _text(rec, cols["system"], cols["system"])})
        for i, pair in enumerate(rec.get(cols["history"]) or [] if cols["history"] else []):
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
                raise RecordError(f"{cols['history']}[{i}]", "expected a [prompt, response] pair")
            messages += [{"role": "user", "content": _text({"q": pair[0]}, "q", f"{cols['history']}[{i}][0]")},
                         {"role": "assistant", "content": _text({"a": pair[1]}, "a", f"{cols['history']}[{i}][1]")}]
        prompt = _text(rec, cols["prompt"], cols["prompt"])
        query = rec.get(cols["query"]) if cols["query"] else None
        if isinstance(query, str) and query.strip():
            prompt = f"{prompt}\n\n{query}"
        messages += [{"role": "user", "content": prompt},
                     {"role": "assistant", "content": _text(rec, cols["response"], cols["response"])}]
        for m in messages:
            if not m["content"].strip() and m["role"] != "system":
                raise RecordError(cols["response"] if m["role"] == "assistant" else cols["prompt"], "empty")
        return {"messages": messages}

    return convert


def sharegpt_converter(columns: dict[str, str | None], tags: dict[str, str]) -> Callable[[dict], dict]:
    """The messages column with the entry's role/content keys and role values (LLaMA-Factory's sharegpt)."""
    cols, tg = {**SHAREGPT_COLUMNS, **columns}, {**SHAREGPT_TAGS, **tags}
    roles = {tg["user_tag"]: "user", tg["assistant_tag"]: "assistant", tg["system_tag"]: "system"}

    def convert(rec: dict) -> dict:
        key = cols["messages"]
        turns = rec.get(key)
        if not isinstance(turns, list) or not turns:
            raise RecordError(key, "missing" if turns is None else "expected a non-empty list")
        messages = []
        if cols["system"] and rec.get(cols["system"]):
            messages.append({"role": "system", "content": _text(rec, cols["system"], cols["system"])})
        for i, turn in enumerate(turns):
            if not isinstance(turn, dict):
                raise RecordError(f"{key}[{i}]", f"expected an object, got {type(turn).__name__}")
            role = turn.get(tg["role_tag"])
            if role not in roles:
                raise RecordError(f"{key}[{i}].{tg['role_tag']}",
                                  f"role {role!r} is not one of the entry's tags {sorted(roles)}")
            content = _text(turn, tg["content_tag"], f"{key}[{i}].{tg['content_tag']}")
            if not content.strip():
                raise RecordError(f"{key}[{i}].{tg['content_tag']}", "empty")
            messages.append({"role": roles[role], "content": content})
        check_roles(messages, key)
        return {"messages": messages}

    return convert


def entry_converter(entry: dict[str, Any]) -> tuple[str, Callable[[dict], dict]]:
    """(formatting name, converter) of an entry."""
    columns = dict(entry.get("columns") or {})
    if entry.get("formatting", "alpaca") == "sharegpt":
        return "sharegpt", sharegpt_converter(columns, dict(entry.get("tags") or {}))
    return "alpaca", alpaca_converter(columns)
