"""Readers of preference data: record → pair example(s) of the data contract (docs/CONTRACTS.md).

A pair example is `{id, source, ability: "preference", task_type, messages, chosen, rejected, weight}`: `messages`
are the prompt turns (optional system, user/assistant alternating, ending with a user turn), `chosen` / `rejected`
the two answers to it (strings, different), `weight` the pair's share of a loss (1, or 1/C(K,2) for the pairs of a
ranked list). The formats (registered in `formats.FORMATS`, detected by `detect`):

- `pairs`:              mixtune's own records (the mini-lab world writes them): the fields above, plus optional
                        `answer` / `tests` + `entry_point` / `instruction_ids` + `kwargs` (what the prompt's ability
                        scorer needs), `domain` (math, code, general), `flaw` (how the rejected answer is wrong),
                        `label` (a soft preference P(chosen preferred) in [0, 1], e.g. an AI labeller's: the
                        reward stage trains on it with `preference.soft_label`).
- `trl_standard`:       TRL's standard preference format, `{prompt, chosen, rejected}` strings; the prompt becomes
                        one user turn.
- `trl_conversational`: TRL's conversational format: message lists, with an explicit `prompt` (then `chosen` and
                        `rejected` each hold one assistant message) or an implicit one (`chosen` and `rejected` are
                        whole conversations; the prompt is their common prefix and each must end in one assistant
                        message after it), as TRL's `extract_prompt`.
- `hh`:                 Anthropic HH-RLHF transcripts, `{chosen, rejected}` strings of `\\n\\nHuman:` /
                        `\\n\\nAssistant:` turns: split at the last assistant turn; the dialogues before it must be
                        identical (else an error naming `rejected`), the answers non-empty, the turns alternating.
- `ranked`:             `{prompt (string or messages), responses: [K strings], scores: [K numbers] | ranks: [K ints,
                        1 = best]}`: all C(K,2) pairs, the better answer chosen, each weighted 1/C(K,2)
                        (InstructGPT §3.5: the pairs of one prompt count as one comparison); tied pairs are skipped
                        and counted (`ReadResult.notes`). Pair ids are `<record id>/<j>`, `group` is the record id.
"""

from __future__ import annotations

import math
import re
from itertools import combinations
from typing import Any

from mixtune.data.records import Expanded, RecordError, check_prompt_roles, parse_turns, text_field

ROLES = {r: r for r in ("system", "user", "assistant")}
PAIR_FIELDS = ("answer", "tests", "entry_point", "instruction_ids", "kwargs", "domain", "flaw", "group", "task_id")
"""Extra fields of a `pairs` record kept on the example (what on-policy scoring and later stages need)."""
HH_TURN = re.compile(r"\n\n(Human|Assistant):")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}
TIES = "ranked: tied pairs skipped"
NO_PAIR = "ranked: records with no untied pair"


def is_pair(example: dict) -> bool:
    """Whether an example is a preference pair (it has `chosen` and `rejected`)."""
    return "chosen" in example and "rejected" in example


def pair(prompt: list[dict], chosen: str, rejected: str, weight: float = 1.0, prompt_field: str = "messages") -> dict:
    """A checked partial pair example (`prompt_field` names the prompt in messages about its roles)."""
    check_prompt_roles(prompt, prompt_field)
    if chosen.strip() == rejected.strip():
        raise RecordError("rejected", "identical to chosen (a pair needs two different answers)")
    return {"messages": prompt, "chosen": chosen, "rejected": rejected, "weight": weight}


def _weight(rec: dict) -> float:
    value = rec.get("weight", 1.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise RecordError("weight", f"expected a positive finite number, got {value!r}")
    return float(value)


def _label(rec: dict) -> float:
    value = rec["label"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise RecordError("label", f"expected a probability in [0, 1] (P(chosen preferred)), got {value!r}")
    return float(value)


def _prompt(rec: dict, key: str = "prompt") -> list[dict]:
    """A prompt given as a string (one user turn) or as a message list."""
    if key not in rec:
        raise RecordError(key, "missing")
    if isinstance(rec[key], str):
        return [{"role": "user", "content": text_field(rec, key)}]
    return parse_turns(rec[key], key, "role", "content", ROLES)


# -------------------------------------------------------------------------------------------------- converters
def from_pairs(rec: dict) -> dict:
    """mixtune's pair records: `messages` (prompt turns), `chosen`, `rejected`, optional `weight` and extras."""
    if "messages" not in rec:
        raise RecordError("messages", "missing")
    prompt = parse_turns(rec["messages"], "messages", "role", "content", ROLES)
    out = pair(prompt, text_field(rec, "chosen"), text_field(rec, "rejected"), _weight(rec))
    out.update({k: rec[k] for k in PAIR_FIELDS if k in rec})
    if "label" in rec:
        out["label"] = _label(rec)
    if "ability" in rec:
        out["ability"] = text_field(rec, "ability")
    if "task_type" in rec:
        if rec["task_type"] not in (0, 1) or isinstance(rec["task_type"], bool):
            raise RecordError("task_type", f"expected 0 or 1, got {rec['task_type']!r}")
        out["task_type"] = rec["task_type"]
    return out


def from_trl_standard(rec: dict) -> dict:
    """TRL standard: `prompt`, `chosen`, `rejected` strings."""
    return pair(_prompt(rec), text_field(rec, "chosen"), text_field(rec, "rejected"), prompt_field="prompt")


def _one_answer(messages: list[dict], key: str, offset: int) -> str:
    """The single assistant message left after the prompt (TRL conversational completions)."""
    if len(messages) != 1:
        raise RecordError(key, f"expected one assistant message after the prompt, got {len(messages)}")
    if messages[0]["role"] != "assistant":
        raise RecordError(f"{key}[{offset}].role", f"expected assistant, got {messages[0]['role']}")
    return messages[0]["content"]


def from_trl_conversational(rec: dict) -> dict:
    """TRL conversational: message lists; explicit `prompt`, or the common prefix of `chosen` and `rejected`."""
    for key in ("chosen", "rejected"):
        if key not in rec:
            raise RecordError(key, "missing")
    chosen = parse_turns(rec["chosen"], "chosen", "role", "content", ROLES)
    rejected = parse_turns(rec["rejected"], "rejected", "role", "content", ROLES)
    if "prompt" in rec:
        prompt = parse_turns(rec["prompt"], "prompt", "role", "content", ROLES)
        return pair(prompt, _one_answer(chosen, "chosen", 0), _one_answer(rejected, "rejected", 0), prompt_field="prompt")
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == 0:
        raise RecordError("rejected", "no prompt: chosen and rejected share no leading message")
    prompt = chosen[:shared]
    if prompt[-1]["role"] != "user":  # the prompt is the prefix up to the last shared user turn
        while prompt and prompt[-1]["role"] != "user":
            prompt = prompt[:-1]
        shared = len(prompt)
        if not prompt:
            raise RecordError("rejected", "no prompt: the shared prefix holds no user turn")
    return pair(prompt, _one_answer(chosen[shared:], "chosen", shared),
                _one_answer(rejected[shared:], "rejected", shared))


def _hh_split(text: str, key: str) -> tuple[str, str]:
    """(dialogue before the last assistant turn, the last assistant answer) of one HH transcript."""
    at = text.rfind("\n\nAssistant:")
    if at < 0:
        raise RecordError(key, "no '\\n\\nAssistant:' turn")
    return text[:at], text[at + len("\n\nAssistant:"):].strip()


def _hh_turns(dialogue: str, key: str) -> list[dict]:
    """The turns of an HH dialogue prefix, as messages; they must alternate Human / Assistant from Human."""
    if not dialogue.startswith("\n\nHuman:"):
        raise RecordError(key, "does not start with '\\n\\nHuman:'")
    parts = HH_TURN.split(dialogue)[1:]  # [role, text, role, text, ...]
    messages = [{"role": HH_ROLES[role], "content": body.strip()} for role, body in zip(parts[::2], parts[1::2])]
    for i, m in enumerate(messages):
        want = "user" if i % 2 == 0 else "assistant"
        if m["role"] != want:
            raise RecordError(key, f"turn {i + 1} is {'Human' if m['role'] == 'user' else 'Assistant'} after "
                                   f"{'Human' if want == 'assistant' else 'Assistant'}: turns must alternate")
        if not m["content"]:
            raise RecordError(key, f"turn {i + 1} is empty")
    if messages[-1]["role"] != "user":
        raise RecordError(key, "the last assistant turn does not follow a Human turn")
    return messages


def from_hh(rec: dict) -> dict:
    """Anthropic HH: whole `chosen` / `rejected` transcripts sharing the dialogue before the last assistant turn."""
    chosen_text, rejected_text = text_field(rec, "chosen"), text_field(rec, "rejected")
    prefix, chosen = _hh_split(chosen_text, "chosen")
    other, rejected = _hh_split(rejected_text, "rejected")
    if prefix != other:
        at = next((i for i, (a, b) in enumerate(zip(prefix, other)) if a != b), min(len(prefix), len(other)))
        raise RecordError("rejected", f"the dialogue before the last assistant turn differs from chosen's "
                                      f"(first difference at character {at})")
    for key, answer in (("chosen", chosen), ("rejected", rejected)):
        if not answer:
            raise RecordError(key, "the last assistant turn is empty")
    return pair(_hh_turns(prefix, "chosen"), chosen, rejected)


def _ranking(rec: dict, k: int) -> tuple[str, list[float]]:
    """('scores' or 'ranks', the K values turned into 'higher is better' numbers)."""
    given = [key for key in ("scores", "ranks") if key in rec]
    if len(given) != 1:
        raise RecordError("scores", "give exactly one of `scores` (higher is better) or `ranks` (1 is best)")
    key = given[0]
    values = rec[key]
    if not isinstance(values, list) or len(values) != k:
        raise RecordError(key, f"expected a list of {k} values (one per response)")
    for i, v in enumerate(values):
        bad = isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
        if bad or (key == "ranks" and (not isinstance(v, int) or v < 1)):
            raise RecordError(f"{key}[{i}]", f"expected a {'rank ≥ 1' if key == 'ranks' else 'finite number'}, "
                                             f"got {v!r}")
    return key, [float(v) if key == "scores" else -float(v) for v in values]


def from_ranked(rec: dict) -> Expanded:
    """K ranked answers → every untied pair, better answer chosen, each weighted 1/C(K,2)."""
    prompt = _prompt(rec)
    check_prompt_roles(prompt, "prompt")
    texts = rec.get("responses")
    if not isinstance(texts, list) or len(texts) < 2:
        raise RecordError("responses", "expected a list of at least 2 answers")
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise RecordError(f"responses[{i}]", "empty" if isinstance(text, str) else
                              f"expected a string, got {type(text).__name__}")
    _, better = _ranking(rec, len(texts))
    weight = 1.0 / math.comb(len(texts), 2)
    parts, ties = [], 0
    for i, j in combinations(range(len(texts)), 2):
        if texts[i].strip() == texts[j].strip():
            raise RecordError(f"responses[{j}]", f"identical to responses[{i}]")
        if better[i] == better[j]:
            ties += 1
            continue
        win, lose = (i, j) if better[i] > better[j] else (j, i)
        parts.append(pair(prompt, texts[win], texts[lose], weight, prompt_field="prompt"))
    notes = {TIES: ties} if ties else {}
    if not parts:
        notes[NO_PAIR] = 1
    return Expanded(parts, notes)


def detect(rec: Any) -> str | None:
    """The preference format a record's keys and value types point to, or None when it is not preference data."""
    keys = set(rec) if isinstance(rec, dict) else set()
    if "responses" in keys and keys & {"scores", "ranks"}:
        return "ranked"
    if not {"chosen", "rejected"} <= keys:
        return None
    if "messages" in keys:
        return "pairs"
    if isinstance(rec["chosen"], list):
        return "trl_conversational"
    if "prompt" in keys:
        return "trl_standard"
    return "hh"

