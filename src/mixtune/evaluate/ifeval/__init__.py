"""IFEval: instruction-following evaluation, fully offline (no NLTK downloads; seeded language detection).

- `INSTRUCTIONS`: the 25 instruction checkers, id -> `check(response, **kwargs) -> bool`.
- `IFEval`, `MiniLabInstruct`: evaluation tasks (prompt/instruction-level accuracy, strict and loose).

Differences from the reference implementation are listed in docs/ifeval.md.
"""

from mixtune.evaluate.ifeval.registry import (
    INSTRUCTIONS,
    check_instruction,
    follow_loose,
    follow_strict,
    get_checker,
    loose_variants,
)
from mixtune.evaluate.ifeval.task import IFEval, MiniLabInstruct

__all__ = [
    "INSTRUCTIONS",
    "IFEval",
    "MiniLabInstruct",
    "check_instruction",
    "follow_loose",
    "follow_strict",
    "get_checker",
    "loose_variants",
]
