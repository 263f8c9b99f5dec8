"""StepCoder (Dou et al. 2024, arXiv 2402.01391; METHODS.md §7) as options of the RL stages.

CCCS, curriculum of code completion subtasks (StepCoder §3.2): the canonical solution is split before its
conditional statements (found with `ast`); early in training the prompt carries the canonical code up to the latest
split point and the model writes the rest; the given prefix shrinks split point by split point until the model
writes the whole body. Split points (`rl.cccs_split`): `conditional` = before each statement that is an if / for /
while / try / match, or that holds a one-line conditional (an `a if c else b`, a filtered comprehension: ours, so
straight-line bodies whose only branches are comprehension filters still split); `statement` = before every
statement (bodies with no branch at all, as most mini-lab tasks). A prefix ends before the newline of the line
above its split point, so the model's continuation starts with that newline, as in training. The schedule
(`CCCSSchedule`, `rl.cccs_schedule`): `iterations` moves to the next split point every `cccs_every` RL steps;
`pass_rate` when the pass rate over the last `cccs_every` steps reaches `cccs_threshold`.

FGO, fine-grained optimisation (StepCoder §3.3): the tests run under the sandbox's line tracer
(`score_programs(..., trace_lines=True)`); the policy loss counts only tokens of code lines that ran. Ours: a line
belongs to the statement that owns it (a simple statement's lines; a compound statement's header lines); the line
is masked when its statement never ran. Lines no statement owns (blank lines, comments, `else:`) and text outside
the code (prose, fences, the end token) keep their tokens; signature lines (def / class headers, decorators and
docstrings) are always kept; a program that does not compile (outcome syntax_error), or whose trace is missing,
keeps every token. A token is masked only when every character of it lies on masked lines.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

BRANCHES = (ast.If, ast.For, ast.AsyncFor, ast.While, ast.Try, ast.Match) + (
    (ast.TryStar,) if hasattr(ast, "TryStar") else ())
"""The statements StepCoder splits before: conditionals and loops."""


# -------------------------------------------------------------------------------------------------------- CCCS
def _holds_one_line_conditional(node: ast.stmt) -> bool:
    if isinstance(node, BRANCHES) or hasattr(node, "body"):
        return False  # compound statements are judged by their own type
    return any(isinstance(n, ast.IfExp) or (isinstance(n, ast.comprehension) and n.ifs) for n in ast.walk(node))


def split_lines(program: str, first_body_line: int, how: str = "conditional") -> list[int]:
    """1-based lines of `program` before which the canonical body may be split: statements on lines after
    `first_body_line` that start their line and are split points under `how` (module docstring). [] when the
    program does not parse."""
    try:
        tree = ast.parse(program)
    except SyntaxError:
        return []
    lines = program.splitlines()
    points = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.stmt) or node.lineno <= first_body_line:
            continue
        if lines[node.lineno - 1][:node.col_offset].strip():
            continue  # not the first statement of its line: no clean split
        if how == "statement" or isinstance(node, BRANCHES) or _holds_one_line_conditional(node):
            points.add(node.lineno)
    return sorted(points)


def cccs_prefixes(prompt: str, canonical: str, how: str = "conditional") -> tuple[str, ...]:
    """The answer prefixes CCCS hands the model for one task, longest first: the canonical body up to each split
    point (cut before the newline that ends the line above it). () when the body has no split point."""
    program = prompt + canonical
    starts = [0] + [i + 1 for i, ch in enumerate(program) if ch == "\n"]  # offset of each line's first character
    first_statement = prompt.count("\n") + _first_code_line(canonical)  # program line of the body's first statement
    prefixes = []
    for line in reversed(split_lines(program, first_statement, how)):
        end = starts[line - 1] - 1  # the newline ending the line above the split point
        if end > len(prompt):
            prefixes.append(program[len(prompt):end])
    return tuple(prefixes)


def _first_code_line(canonical: str) -> int:
    """1-based line of the body's first non-blank, non-comment line."""
    for i, text in enumerate(canonical.splitlines(), start=1):
        if text.strip() and not text.strip().startswith("#"):
            return i
    return 1


def given_prefix(prefixes: Sequence[str], stage: int) -> str:
    """The prefix of curriculum stage `stage` (0 = the longest); "" once the task's split points are used up."""
    return prefixes[stage] if stage < len(prefixes) else ""


@dataclass
class CCCSSchedule:
    """Which curriculum stage the run is in, and when it moves on (`rl.cccs_schedule`). `n_stages` = the most split
    points of any task; at stage n_stages every task is written whole and the schedule stops."""

    how: str
    every: int
    threshold: float
    n_stages: int
    stage: int = 0
    steps_in_stage: int = 0
    recent: list[float] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.stage >= self.n_stages

    def update(self, pass_rate: float | None) -> bool:
        """Record one RL step (its code pass rate, None if it scored no code); True when the stage moved on."""
        if self.done:
            return False
        self.steps_in_stage += 1
        if pass_rate is not None:
            self.recent = (self.recent + [pass_rate])[-self.every:]
        if self.how == "iterations":
            move = self.steps_in_stage >= self.every
        else:
            move = (self.steps_in_stage >= self.every and len(self.recent) >= self.every
                    and sum(self.recent) / len(self.recent) >= self.threshold)
        if move:
            self.stage, self.steps_in_stage, self.recent = self.stage + 1, 0, []
        return move

    def state_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "steps_in_stage": self.steps_in_stage, "recent": list(self.recent)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stage, self.steps_in_stage = int(state["stage"]), int(state["steps_in_stage"])
        self.recent = [float(x) for x in state["recent"]]


# --------------------------------------------------------------------------------------------------------- FGO
def _own_lines(node: ast.stmt) -> range:
    """The lines a statement owns: all of a simple statement; a compound statement's header (up to its body)."""
    body = getattr(node, "body", None)
    if isinstance(body, list) and body:
        return range(node.lineno, body[0].lineno)
    return range(node.lineno, (node.end_lineno or node.lineno) + 1)


def _signature_lines(node: ast.stmt) -> set[int]:
    """Decorator, header and docstring lines of a def / class."""
    first = min([d.lineno for d in getattr(node, "decorator_list", [])] + [node.lineno])
    lines = set(range(first, node.body[0].lineno))
    doc = node.body[0]
    if isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str):
        lines |= set(range(doc.lineno, (doc.end_lineno or doc.lineno) + 1))
    return lines


def unexecuted_lines(source: str, executed: set[int] | Sequence[int]) -> set[int] | None:
    """Lines of `source` whose tokens FGO masks: lines owned by a statement none of whose own lines ran, minus
    signature lines. None when the source does not parse (every token is kept)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    ran = set(executed)
    masked: set[int] = set()
    keep: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            keep |= _signature_lines(node)
        elif isinstance(node, ast.stmt):
            own = set(_own_lines(node))
            if not own & ran:
                masked |= own
    return masked - keep - ran


def token_spans(tokenizer: Any, token_ids: Sequence[int], start: int = 0) -> list[tuple[int, int]]:
    """Character span [a, b) of each token in the decoded text (special tokens skipped, so they span nothing),
    shifted by `start`: cumulative decoding, so a token that completes a multi-byte character owns it."""
    spans, prev = [], 0
    for k in range(1, len(token_ids) + 1):
        length = len(tokenizer.decode(list(token_ids[:k]), skip_special_tokens=True))
        spans.append((start + prev, start + max(length, prev)))
        prev = max(length, prev)
    return spans


def fgo_keep(completion: str, code: str, code_line_offset: int, masked_lines: set[int],
             spans: Sequence[tuple[int, int]]) -> list[bool]:
    """Per token: kept (True) unless every character of it lies on a masked program line. The code (as
    `extract_code` found it in `completion`) starts at its first occurrence there; its line n is program line
    code_line_offset + n."""
    at = completion.find(code) if code else -1
    line_of = [0] * len(completion)  # program line of each completion character (0: not code)
    if at >= 0:
        line = code_line_offset + 1
        for i in range(at, at + len(code)):
            line_of[i] = line
            if completion[i] == "\n":
                line += 1
    keep = []
    for a, b in spans:
        chars = range(max(a, 0), min(b, len(completion)))
        keep.append(not chars or not all(line_of[i] in masked_lines for i in chars))
    return keep


def fgo_token_mask(example: dict, completion: str, given_len: int, token_ids: Sequence[int], info: dict,
                   tokenizer: Any) -> list[bool]:
    """FGO's keep-mask over a code sample's generated tokens. `completion` = the given CCCS prefix (its first
    `given_len` characters) + the generated text; `info` the task reward's outcome and line trace."""
    from mixtune.evaluate.code import candidate_program, extract_code
    from mixtune.train.rewards import code_example

    executed, offset = info.get("executed_lines"), info.get("code_line_offset")
    if info.get("outcome") in (None, "syntax_error", "error") or executed is None or offset is None:
        return [True] * len(token_ids)
    task = code_example(example)
    source, _ = candidate_program(task, completion)
    masked = unexecuted_lines(source, executed)
    if masked is None:
        return [True] * len(token_ids)
    code, _ = extract_code(completion, task["entry_point"])
    return fgo_keep(completion, code, offset, masked, token_spans(tokenizer, token_ids, start=given_len))
