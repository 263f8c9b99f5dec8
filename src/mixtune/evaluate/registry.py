"""The benchmark registry: one dict literal, name -> "module:Class", imported lazily so that listing the tasks or
scoring GSM8K never imports the code sandbox, IFEval's checkers or an HTTP client.

Every task class takes `data_dir` (real benchmark files), `world_dir` (mini-lab world folder) and `path` (an
explicit benchmark file) and follows the duck-typed contract of `mixtune.evaluate.base` (docs/CONTRACTS.md).
"""

from __future__ import annotations

import importlib
from typing import Any

from mixtune.errors import UserError

TASKS: dict[str, str] = {
    "gsm8k": "mixtune.evaluate.gsm8k:GSM8K",
    "minilab_math": "mixtune.evaluate.gsm8k:MiniLabMath",
    "humaneval": "mixtune.evaluate.code:HumanEval",
    "humaneval_plus": "mixtune.evaluate.code:HumanEvalPlus",
    "mbpp": "mixtune.evaluate.code:MBPP",
    "mbpp_plus": "mixtune.evaluate.code:MBPPPlus",
    "minilab_code": "mixtune.evaluate.code:MiniLabCode",
    "ifeval": "mixtune.evaluate.ifeval:IFEval",
    "minilab_instruct": "mixtune.evaluate.ifeval:MiniLabInstruct",
    "nq_open": "mixtune.evaluate.qa:NQOpen",
    "minilab_knowledge": "mixtune.evaluate.qa:MiniLabKnowledge",
    "minilab_facts": "mixtune.evaluate.qa:MiniLabFacts",
    "mt_bench": "mixtune.evaluate.mt_bench:MTBench",
}

# The ability each benchmark measures (the data contract's abilities), for tables and the results store.
ABILITY_OF: dict[str, str] = {
    "gsm8k": "math",
    "minilab_math": "math",
    "humaneval": "code",
    "humaneval_plus": "code",
    "mbpp": "code",
    "mbpp_plus": "code",
    "minilab_code": "code",
    "ifeval": "general",
    "minilab_instruct": "general",
    "nq_open": "knowledge",
    "minilab_knowledge": "knowledge",
    "minilab_facts": "knowledge",
    "mt_bench": "general",
}


class UnknownTaskError(UserError, ValueError):
    """A benchmark name that is not in `TASKS`; the message lists the valid names."""


def check_task_name(name: str) -> str:
    """Return `name` if registered, else raise `UnknownTaskError` listing the valid names."""
    if name not in TASKS:
        raise UnknownTaskError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    return name


def task_class(name: str) -> type:
    """The task class registered under `name` (imports its module)."""
    module_name, class_name = TASKS[check_task_name(name)].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def get_task(name: str, **kwargs: Any) -> Any:
    """Build the task `name` with constructor kwargs (`data_dir`, `world_dir`, `path`, ...).

    Kwargs that are None are dropped so each class keeps its own default.
    """
    return task_class(name)(**{k: v for k, v in kwargs.items() if v is not None})
