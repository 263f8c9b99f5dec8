"""Self-instruct pieces (Wang et al. 2022, as Stanford Alpaca ran it): prompt, parsing, heuristics, ROUGE-L, records.

Written from Alpaca's `generate_instruction.py` (tatsu-lab/stanford_alpaca): the prompt is `prompt.txt` followed by
`num_prompt_instructions` sampled seed tasks as "###\\n{i}. Instruction: ...\\n{i}. Input:\\n...\\n{i}. Output:\\n..."
and an open "{k}. Instruction:" for the model to continue; the continuation is split on "###" and on
"N. Instruction/Input/Output:" markers. A new instruction is kept when it passes Alpaca's heuristics (3 < words <=
150, no blacklisted word such as image or draw, does not start with "Write a program", with punctuation or with a
non-ASCII character) and its ROUGE-L F-measure against every instruction in the pool (seeds and the ones kept so far)
is below 0.7. ROUGE-L is ours (the longest common subsequence of tokens, Lin 2004), tokenised as rouge-score does
(lower case, runs of [a-z0-9]); its F-measure is 2PR / (P + R).

The generation loop (model backends) is `mixtune.evaluate.synth`; this module has no model code.
"""

from __future__ import annotations

import json
import re
import string
from pathlib import Path
from typing import Any

from mixtune.data.corpus_io import CorpusError

BLACKLIST = ("image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps", "draw",
             "plot", "go to", "video", "audio", "music", "flowchart", "diagram")
"""Alpaca's words that a text-only model cannot act on."""
ROUGE_MAX = 0.7
_TOKEN = re.compile(r"[a-z0-9]+")
_MARKER = re.compile(r"\d+\s*\.\s*(Instruction|Input|Output):")


def load_seed_tasks(path: str | Path) -> list[dict[str, Any]]:
    """Seed tasks `{id, instruction, instances: [{input, output}]}`; raises CorpusError naming file:line:field."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"{path}: seed task file not found")
    tasks = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise CorpusError(f"{path}:{n}: <json>: invalid JSON: {e.msg}") from None
        for key in ("id", "instruction", "instances"):
            if key not in rec:
                raise CorpusError(f"{path}:{n}: {key}: missing")
        inst = rec["instances"]
        if not isinstance(inst, list) or not inst or not all(isinstance(i, dict) and "output" in i for i in inst):
            raise CorpusError(f"{path}:{n}: instances: expected a non-empty list of {{input, output}}")
        tasks.append({"id": str(rec["id"]), "instruction": rec["instruction"], "input": inst[0].get("input", ""),
                      "output": inst[0]["output"]})
    if not tasks:
        raise CorpusError(f"{path}: no seed tasks")
    return tasks


def encode_prompt(header: str, tasks: list[dict[str, Any]]) -> str:
    """Alpaca's prompt: the header, the numbered example tasks, and an open instruction for the model to write."""
    out = header.rstrip("\n") + "\n"
    for i, task in enumerate(tasks, start=1):
        inp = task["input"].strip() or "<noinput>"
        out += f"###\n{i}. Instruction: {task['instruction'].strip()}\n{i}. Input:\n{inp}\n{i}. Output:\n"
        out += f"{task['output'].strip()}\n"
    return out + f"###\n{len(tasks) + 1}. Instruction:"


def parse_generation(text: str, n_prompt_tasks: int) -> list[dict[str, str]]:
    """The `{instruction, input}` candidates in a continuation of `encode_prompt` (malformed pieces are skipped,
    counted by the caller as `unparsed`); a piece without an Input part gets input ""."""
    raw = f"{n_prompt_tasks + 1}. Instruction:" + text
    out = []
    for piece in raw.split("###"):
        parts = _MARKER.split(piece)
        # parts: [before, "Instruction", inst, "Input", inp, "Output", out]
        if len(parts) < 3 or parts[1] != "Instruction":
            continue
        inst = parts[2].strip()
        if not inst:  # the open "N. Instruction:" the model ended on
            continue
        inp = parts[4].strip() if len(parts) >= 5 and parts[3] == "Input" else ""
        out.append({"instruction": inst, "input": "" if inp.lower() == "<noinput>" else inp})
    return out


def heuristic_reason(instruction: str) -> str | None:
    """Why Alpaca's heuristics reject an instruction, or None when it passes."""
    n_words = len(instruction.split())
    if n_words <= 3:
        return "too_short"
    if n_words > 150:
        return "too_long"
    lower = instruction.lower()
    for word in BLACKLIST:
        if re.search(rf"\b{re.escape(word)}\b", lower):
            return f"blacklisted:{word}"
    if instruction.startswith("Write a program"):
        return "write_a_program"
    if instruction[0] in string.punctuation:
        return "starts_with_punctuation"
    if not instruction[0].isascii():
        return "non_ascii_start"
    return None


def rouge_tokens(text: str) -> list[str]:
    """rouge-score's default tokenisation: lower case, runs of letters and digits."""
    return _TOKEN.findall(text.lower())


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence (dynamic programming, one row)."""
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, start=1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(candidate: list[str], reference: list[str]) -> float:
    """ROUGE-L F-measure of two token lists (0 when either is empty)."""
    lcs = lcs_length(candidate, reference)
    if lcs == 0:
        return 0.0
    p, r = lcs / len(candidate), lcs / len(reference)
    return 2 * p * r / (p + r)


def most_similar(candidate: str, pool_tokens: list[list[str]], pool_texts: list[str]) -> tuple[float, str]:
    """(highest ROUGE-L against the pool, that pool instruction)."""
    tokens = rouge_tokens(candidate)
    best, text = 0.0, ""
    for ref, ref_text in zip(pool_tokens, pool_texts):
        score = rouge_l(tokens, ref)
        if score > best:
            best, text = score, ref_text
    return best, text


def user_prompt(instruction: str, inp: str) -> str:
    """The user turn of a synthesised record: the instruction, and its input after a blank line (as alpaca)."""
    return f"{instruction}\n\n{inp}" if inp.strip() else instruction


def sft_record(index: int, instruction: str, inp: str, response: str, model: str, seed_ids: list[str],
               round_: int) -> dict[str, Any]:
    """A messages-format SFT record with provenance `synth: {model, seed_ids, round}`."""
    return {"id": f"synth/{index}", "source": "synth", "ability": "general",
            "messages": [{"role": "user", "content": user_prompt(instruction, inp)},
                         {"role": "assistant", "content": response.strip()}],
            "synth": {"model": model, "seed_ids": seed_ids, "round": round_}}
