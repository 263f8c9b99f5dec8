"""What every recipe section shares: frozen pydantic models, unknown keys forbidden, finite numbers only, field
docstrings as help, and names checked against the registry that owns them.

Registries stay where their implementations are (one dict literal per kind: formats, templates, adapters,
strategies, stage kinds, tasks); `REGISTRIES` only says where each one lives, so a schema field checks its value
against the very dict the code dispatches on and an unknown name lists the valid ones. The registry module is
imported when a value is validated, not when the schema is imported (`mixtune --help` stays fast).
"""

from __future__ import annotations

import importlib

from pydantic import BaseModel, ConfigDict

from mixtune.errors import UserError


class RecipeError(UserError, ValueError):
    """A recipe that cannot be loaded; the message names the file and the key path."""


class Section(BaseModel):
    """Base of every recipe section: frozen, unknown keys forbidden, NaN/inf refused, docstrings as descriptions."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True, protected_namespaces=(),
                              allow_inf_nan=False)


REGISTRIES: dict[str, tuple[str, tuple[str, ...]]] = {
    # kind -> ("module:dict", names valid besides the dict's keys)
    "data format": ("mixtune.data.formats:FORMATS", ("auto",)),
    "chat template": ("mixtune.data.templates:TEMPLATES", ("auto",)),
    "mini-lab source": ("mixtune.data.mixture:MINILAB_FILES", ()),
    "adapter": ("mixtune.model.adapters:ADAPTERS", ("none",)),
    "strategy": ("mixtune.train.strategies:STRATEGIES", ()),
    "stage kind": ("mixtune.train.stages:STAGE_KINDS", ()),
    "benchmark": ("mixtune.evaluate.registry:TASKS", ()),
}


def registry_names(kind: str) -> tuple[str, ...]:
    """The valid names of one registry, in its own order (extra names such as `auto` / `none` first); read from
    the registry dict each time, so a registry extended at run time (a plugin, a test) is seen."""
    target, extra = REGISTRIES[kind]
    module, attr = target.split(":")
    return (*extra, *getattr(importlib.import_module(module), attr))


def check_name(kind: str, value: str) -> str:
    """`value` if it is a registered name of `kind`, else a ValueError listing the valid names."""
    names = registry_names(kind)
    if value not in names:
        raise ValueError(f"unknown {kind} {value!r}; valid: {', '.join(names)}")
    return value
