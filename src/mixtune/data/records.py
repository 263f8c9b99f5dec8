"""Field checks shared by every record reader (SFT formats in `formats.py`, preference formats in `preference.py`).

A check raises `RecordError(field, problem)`; the reader turns it into `file:line: field: problem`. `field` is a
dotted path into the record (`messages[2].role`). A converter that turns one record into several examples (a ranked
list into its pairs) returns an `Expanded`, whose `notes` count what it left out on purpose (tied pairs).
"""

from __future__ import annotations

from dataclasses import dataclass, field


class RecordError(ValueError):
    """One record's problem, raised by a converter: `field` is a dotted path (`messages[2].role`)."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field, self.problem = field, problem


@dataclass
class Expanded:
    """Several partial examples from one record (ids get `/<j>` appended), and counts of what was left out."""

    parts: list[dict]
    notes: dict[str, int] = field(default_factory=dict)


def text_field(rec: dict, key: str, where: str = "", allow_empty: bool = False) -> str:
    """`rec[key]` as a string; missing, non-string and (unless allowed) blank values are errors."""
    name = f"{where}{key}"
    if rec.get(key) is None:  # absent, or a null cell of a columnar file
        raise RecordError(name, "missing")
    value = rec[key]
    if not isinstance(value, str):
        raise RecordError(name, f"expected a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise RecordError(name, "empty")
    return value


def _check_alternation(roles: list[str], field: str, last: str) -> None:
    start = 1 if roles and roles[0] == "system" else 0
    if start == len(roles):
        raise RecordError(field, "no user/assistant turns")
    for i in range(start, len(roles)):
        want = "user" if (i - start) % 2 == 0 else "assistant"
        if roles[i] != want:
            raise RecordError(f"{field}[{i}].role", f"roles out of order: expected {want}, got {roles[i]}")
    if roles[-1] != last:
        what = "conversation must end with an assistant turn" if last == "assistant" else \
            "a prompt must end with a user turn"
        raise RecordError(f"{field}[{len(roles) - 1}].role", what)


def check_roles(messages: list[dict], field: str = "messages") -> None:
    """Roles must be: optional system, then user/assistant alternating, starting with user, ending with assistant."""
    _check_alternation([m["role"] for m in messages], field, last="assistant")


def check_prompt_roles(messages: list[dict], field: str = "messages") -> None:
    """A prompt's roles: optional system, then user/assistant alternating from user, ending with user."""
    _check_alternation([m["role"] for m in messages], field, last="user")


def parse_turns(turns: object, key: str, role_key: str, content_key: str, role_map: dict[str, str]) -> list[dict]:
    """A list of `{role_key, content_key}` objects -> `[{role, content}]` with roles mapped; order not checked."""
    if not isinstance(turns, list):
        raise RecordError(key, f"expected a list, got {type(turns).__name__}")
    if not turns:
        raise RecordError(key, "empty")
    messages = []
    for i, turn in enumerate(turns):
        where = f"{key}[{i}]."
        if not isinstance(turn, dict):
            raise RecordError(f"{key}[{i}]", f"expected an object, got {type(turn).__name__}")
        role = text_field(turn, role_key, where)
        if role not in role_map:
            raise RecordError(f"{where}{role_key}", f"unknown role {role!r} (expected one of {sorted(role_map)})")
        messages.append({"role": role_map[role], "content": text_field(turn, content_key, where)})
    return messages


def turns(rec: dict, key: str, role_key: str, content_key: str, role_map: dict[str, str]) -> list[dict]:
    """`rec[key]` as a whole conversation (`parse_turns`, then `check_roles`)."""
    if key not in rec:
        raise RecordError(key, "missing")
    messages = parse_turns(rec[key], key, role_key, content_key, role_map)
    check_roles(messages, key)
    return messages
