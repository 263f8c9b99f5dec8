"""The benchmark registry: one dict literal, name -> "module:Class", imported lazily so that listing the tasks or
scoring GSM8K never imports the code sandbox, IFEval's checkers or an HTTP client.

Every task class takes `data_dir` (real benchmark files), `world_dir` (mini-lab world folder) and `path` (an
explicit benchmark file) and follows the duck-typed contract of `mixtune.evaluate.base` (docs/CONTRACTS.md).
"""

from __future__ import annotations

import importlib
from typing import Any

from mixtune.errors import UserError

TASKS: dict[str, tuple[str, str]] = {
    # name: ("module:Class", the ability it measures: the data contract's math | code | general | knowledge)
    "gsm8k": ("mixtune.evaluate.gsm8k:GSM8K", "math"),
    "minilab_math": ("mixtune.evaluate.gsm8k:MiniLabMath", "math"),
    "humaneval": ("mixtune.evaluate.code:HumanEval", "code"),
    "humaneval_plus": ("mixtune.evaluate.code:HumanEvalPlus", "code"),
    "mbpp": ("mixtune.evaluate.code:MBPP", "code"),
    "mbpp_plus": ("mixtune.evaluate.code:MBPPPlus", "code"),
    "minilab_code": ("mixtune.evaluate.code:MiniLabCode", "code"),
    "ifeval": ("mixtune.evaluate.ifeval:IFEval", "general"),
    "minilab_instruct": ("mixtune.evaluate.ifeval:MiniLabInstruct", "general"),
    "mt_bench": ("mixtune.evaluate.mt_bench:MTBench", "general"),
    "nq_open": ("mixtune.evaluate.qa:NQOpen", "knowledge"),
    "minilab_knowledge": ("mixtune.evaluate.qa:MiniLabKnowledge", "knowledge"),
    "minilab_facts": ("mixtune.evaluate.qa:MiniLabFacts", "knowledge"),
}

ABILITY_OF: dict[str, str] = {name: ability for name, (_, ability) in TASKS.items()}
"""benchmark -> ability, for tables and the results store (read off TASKS)."""


class UnknownTaskError(UserError, ValueError):
    """A benchmark name that is not in `TASKS`; the message lists the valid names."""


def check_task_name(name: str) -> str:
    """Return `name` if registered, else raise `UnknownTaskError` listing the valid names."""
    if name not in TASKS:
        raise UnknownTaskError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    return name


def task_class(name: str) -> type:
    """The task class registered under `name` (imports its module)."""
    module_name, class_name = TASKS[check_task_name(name)][0].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def get_task(name: str, **kwargs: Any) -> Any:
    """Build the task `name` with constructor kwargs (`data_dir`, `world_dir`, `path`, ...).

    Kwargs that are None are dropped so each class keeps its own default.
    """
    return task_class(name)(**{k: v for k, v in kwargs.items() if v is not None})
