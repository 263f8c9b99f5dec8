"""What a code task's judging plan is made of (shared by `code_io` and `code_plus`): the converted test cases, the
plan (io path or legacy harness), and the time and size budgets of a call."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from mixtune.evaluate._plaindata import encode_value
from mixtune.evaluate.sandbox import Limits

CALL_MIN_S, CALL_FACTOR = 2.0, 10.0
"""A call's time budget: max(CALL_MIN_S, CALL_FACTOR x the canonical solution's time on it), within the wall limit."""
REFERENCE_SLACK = 3.0
"""The reference run gets this many times the task's limits (trusted code: a loaded machine must not change a
task's verdict path)."""
CAP_MIN, CAP_FACTOR = 1 << 16, 8
"""Most bytes of a call's result line: CAP_MIN + CAP_FACTOR x the size of the expected value's encoding."""

@dataclass(frozen=True)
class Case:
    """One converted test case: the encoded call line and the rule its result must satisfy (`holds`)."""

    where: str
    """"test line N" (assertion tests) or "input N" (HumanEval+ / MBPP+)."""
    kind: str
    view: str
    call: bytes
    expected: Any
    tol: Any
    budget_s: float
    cap: int
    extra_s: float = 0.0
    """What this case adds to the whole run's wall-clock and CPU limits (CALL_FACTOR x the reference's time)."""


@dataclass(frozen=True)
class Plan:
    """How a task's samples are judged: its `cases` on the io path, else the legacy harness (`reason` says why)."""

    cases: tuple[Case, ...] | None
    reason: str = ""
    oracle: str = ""
    """A run-level rule (code_plus.ORACLES) on top of the cases: "" for none."""

    @property
    def path(self) -> str:
        return "io" if self.cases is not None else "legacy-harness"


def make_case(where: str, kind: str, view: str, args, kwargs, expected, tol, ref_s: float, ref_size: int,
              reduce: str = "") -> Case:
    """A Case from encoded arguments (`_plaindata` JSON values) and decoded expected value / tolerance."""
    call = [args, kwargs] + ([reduce] if reduce else [])
    size = max(ref_size, len(json.dumps(encode_value(expected))))
    return Case(where, kind, view, (json.dumps(call, separators=(",", ":")) + "\n").encode(), expected, tol,
                max(CALL_MIN_S, CALL_FACTOR * ref_s), CAP_MIN + CAP_FACTOR * size, CALL_FACTOR * ref_s)


def slack(limits: Limits, factor: float = 1.0, extra_s: float = 0.0) -> Limits:
    """`limits` with wall-clock and CPU limits times `factor` plus `extra_s`."""
    return replace(limits, wall_s=limits.wall_s * factor + extra_s, cpu_s=limits.cpu_s * factor + extra_s)
